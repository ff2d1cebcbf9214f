#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# builds the plugins once, checks formatting and lints, runs every test and
# a short fuzzing run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# The wasm32-wasip2 target and every plugin component the tests load.
scripts/build-plugins.sh

cargo fmt --all --check
cargo clippy -p blockferry -p blockferry-proto -p blockferry-sim --all-targets -- -D warnings
# The library without the plugin runtime, as the fuzz targets build it.
cargo clippy -p blockferry --no-default-features --lib -- -D warnings
# Assigned first, so that a failure of plugins.sh stops the script.
wasm_packages=$(scripts/plugins.sh packages)
wasm_crates=()
for package in $wasm_packages; do
    wasm_crates+=(-p "$package")
done
cargo clippy --target wasm32-wasip2 --profile plugin "${wasm_crates[@]}" -- -D warnings

# The emulators the S3 and MinIO provider tests start (moto, s3s-fs).
scripts/install-test-servers.sh

# The host suite, plus the providers' own unit tests (natively).
cargo nextest run --no-fail-fast -p blockferry -p blockferry-proto -p blockferry-sim -p blockferry-fs -p blockferry-guest -p blockferry-s3-api -p blockferry-gcs "$@"

# The short fuzzing run: every cargo-fuzz target for 10 s, on the
# nightly toolchain with AddressSanitizer (its first build takes ~10 minutes on
# 2 cores). Skipped only when a test filter was given: a partial run.
if [ $# -eq 0 ]; then
    scripts/fuzz.sh 10
fi
