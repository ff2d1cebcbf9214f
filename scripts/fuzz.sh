#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: the ingest protocol decoder, the
# config parser, the `.meta` parser) for SECONDS each (default 30) with cargo
# fuzz on the nightly toolchain, both installed here if missing. A finding
# fails the run; its input is in fuzz/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run <target> <file>` from fuzz/).
#   scripts/fuzz.sh 10       the short run of scripts/test.sh
#   scripts/fuzz.sh 3600     the long run (RELIABILITY.md)
#   scripts/fuzz.sh build    only build the targets (the runs then reuse the build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-30}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
if [ "$seconds" = build ]; then
    exec cargo +nightly fuzz build
fi
for target in ingest_request config meta; do
    mkdir -p "corpus/$target" "seeds/$target"
    echo "fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 12
done
