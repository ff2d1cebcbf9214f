#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# builds the plugins once, checks formatting and lints, runs every test and
# a short fuzzing run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
rustup component add clippy rustfmt

cargo fmt --all --check

# Lints run while compiling: the workspace's own crates are compiled by
# clippy-driver with warnings as errors (scripts/clippy-rustc.sh), so every
# dependency is compiled once, for lints and tests alike, instead of checked
# by `cargo clippy` and then built again. The lints are clippy's, the same as
# `cargo clippy -- -D warnings`. Incremental compilation is off: a clean build
# gains nothing from it.
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-rustc.sh"
export CARGO_INCREMENTAL=0

# The wasm32-wasip2 target and every plugin component the tests load (the
# plugin crates linted as they are built).
scripts/build-plugins.sh

# The crates tested natively: the host, the protocol crate, the simulators,
# and the providers' own unit tests. One package set for the build and the
# test run, so that features unify the same way and nothing is built twice.
native=(-p blockferry -p blockferry-proto -p blockferry-sim -p blockferry-fs -p blockferry-guest -p blockferry-s3-api -p blockferry-gcs)

# Every target of those crates, as the tests build them (the plugin crates'
# libraries as test harnesses: natively, a component's export names do not
# link): linted, and built for the test run below; benches included, so that
# they are linted too.
cargo test --no-run "${native[@]}" --all-targets
# The library without the plugin runtime, as the fuzz targets build it.
cargo check -p blockferry --no-default-features --lib

# The emulators the S3 and MinIO provider tests start (moto, s3s-fs).
scripts/install-test-servers.sh

# The short fuzzing run (below) is built beside the test run, which leaves a
# core idle much of the time: every cargo-fuzz target, on the nightly
# toolchain with AddressSanitizer, without the lint wrapper (clippy-driver is
# the stable toolchain's). Skipped only when a test filter was given: a
# partial run.
fuzz_build=
if [ $# -eq 0 ]; then
    env -u RUSTC_WORKSPACE_WRAPPER -u CARGO_INCREMENTAL scripts/fuzz.sh build >target/fuzz-build.log 2>&1 &
    fuzz_build=$!
fi

# The host suite, plus the providers' own unit tests (natively).
tests=0
cargo nextest run --no-fail-fast "${native[@]}" "$@" || tests=$?
unset RUSTC_WORKSPACE_WRAPPER CARGO_INCREMENTAL

if [ -n "$fuzz_build" ] && ! wait "$fuzz_build"; then
    cat target/fuzz-build.log
    echo "the fuzz targets did not build (log above)" >&2
    exit 1
fi
if [ "$tests" -ne 0 ]; then
    exit "$tests"
fi
# Every fuzz target for 10 s.
if [ $# -eq 0 ]; then
    scripts/fuzz.sh 10
fi
