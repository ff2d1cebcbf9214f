#!/usr/bin/env bash
# The workspace's WebAssembly crates, as their own Cargo.toml says:
#
#   [package.metadata.blockferry]
#   wasm = "component"   # a plugin component (provider, test fixture, template)
#   wasm = "library"     # guest code the components share
#
# This is the one list of plugins: scripts/build-plugins.sh builds the
# components and scripts/test.sh lints every wasm crate from it. A new plugin
# crate under plugins/ (or plugins/testing/) is a workspace member by the
# root Cargo.toml's globs and needs only that metadata.
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
import json, sys

what = sys.argv[1]
for package in json.load(sys.stdin)["packages"]:
    wasm = ((package.get("metadata") or {}).get("blockferry") or {}).get("wasm")
    if wasm not in ("component", "library"):
        continue
    if what == "packages":
        print(package["name"])
    elif wasm == "component" and what == "components":
        print(package["name"])
    elif wasm == "component":
        target = next(t for t in package["targets"] if {"cdylib", "bin"} & set(t["kind"]))
        print(target["name"] + ".wasm")
' "$1"
