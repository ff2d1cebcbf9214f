#!/usr/bin/env bash
# The workspace's WebAssembly crates, as their own Cargo.toml says:
#
#   [package.metadata.blockferry]
#   wasm = "component"   # a plugin component (provider, test fixture, template)
#   wasm = "library"     # guest code the components share
#
# This is the one list of plugins: scripts/build-plugins.sh builds the
# components (scripts/test.sh lints them, and the libraries they use, as they
# are built). A new plugin
# crate needs that table (every crate under plugins/ must have it: this script
# fails naming one that does not) and its line in the workspace's `members`.
#
# Usage: scripts/plugins.sh packages|components|files
#   packages    every wasm crate (components and libraries), one per line
#   components  the components' package names
#   files       the components' .wasm file names (in target/wasm32-wasip2/plugin/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
packages | components | files) ;;
*)
    echo "usage: $0 packages|components|files" >&2
    exit 2
    ;;
esac

cargo metadata --no-deps --format-version 1 | python3 -c '
import json, os, sys

what = sys.argv[1]
metadata = json.load(sys.stdin)
plugins_dir = os.path.join(metadata["workspace_root"], "plugins") + os.sep
for package in metadata["packages"]:
    wasm = ((package.get("metadata") or {}).get("blockferry") or {}).get("wasm")
    if wasm not in ("component", "library"):
        # Every crate under plugins/ is WebAssembly: it must say which kind.
        manifest = package["manifest_path"]
        if manifest.startswith(plugins_dir):
            sys.exit(
                manifest + ": add [package.metadata.blockferry] with "
                + "wasm = \"component\" (or \"library\"), so that the build and the lint see it"
            )
        continue
    if what == "packages":
        print(package["name"])
    elif wasm == "component" and what == "components":
        print(package["name"])
    elif wasm == "component":
        target = next(t for t in package["targets"] if {"cdylib", "bin"} & set(t["kind"]))
        print(target["name"] + ".wasm")
' "$1"
