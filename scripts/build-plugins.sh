#!/usr/bin/env bash
# Builds every WebAssembly plugin component of the workspace (providers, test
# fixtures and the plugin template; the list is scripts/plugins.sh's) in one
# cargo invocation, with the `plugin` profile. Outputs land in
# target/wasm32-wasip2/plugin/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2

# Assigned first, so that a failure of plugins.sh stops the script.
components=$(scripts/plugins.sh components)
files=$(scripts/plugins.sh files)
packages=()
for package in $components; do
    packages+=(-p "$package")
done
cargo build --target wasm32-wasip2 --profile plugin "${packages[@]}"

out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/plugin"
for wasm in $files; do
    printf '%10d bytes  %s\n' "$(stat -c %s "$out/$wasm")" "$out/$wasm"
done
