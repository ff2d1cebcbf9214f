#!/usr/bin/env bash
# Builds every WebAssembly plugin of the workspace (providers, test fixtures and
# the plugin template) as components in one cargo invocation, with the `plugin`
# profile. Outputs land in target/wasm32-wasip2/plugin/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2

cargo build --target wasm32-wasip2 --profile plugin \
    -p blockferry-fs \
    -p blockferry-gcs \
    -p blockferry-s3 \
    -p blockferry-minio \
    -p blockferry-misbehave \
    -p blockferry-flawed \
    -p blockferry-old-contract \
    -p blockferry-wrong-version \
    -p blockferry-wrong-world \
    -p blockferry-plugin-template

out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/plugin"
for wasm in \
    blockferry_fs.wasm \
    blockferry_gcs.wasm \
    blockferry_s3.wasm \
    blockferry_minio.wasm \
    blockferry_misbehave.wasm \
    blockferry_flawed.wasm \
    blockferry_old_contract.wasm \
    blockferry_wrong_version.wasm \
    blockferry-wrong-world.wasm \
    blockferry_plugin_template.wasm; do
    printf '%10d bytes  %s\n' "$(stat -c %s "$out/$wasm")" "$out/$wasm"
done
