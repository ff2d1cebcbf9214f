#!/usr/bin/env bash
# The whole benchmark suite, one command: every figure of the table
# in BENCHMARKS.md measured beside its baseline in the same run. Prints each
# bench's output as it runs, then the table of every `ROW` line (figure,
# value, baseline, ratio, target, met). The full logs stay in
# target/bench-logs/. About 12 minutes on 2 cores once built; the first run
# also builds the benches in release mode (~6 minutes).
#
#   scripts/bench.sh                 # the whole suite
#   scripts/bench.sh store ingest    # only these benches
#
# Sizes can be lowered for a quick look: BACKLOG_BLOCKS, BACKLOG_S3_BLOCKS,
# DRAIN_ROUNDS, DRAIN_SMALL_BLOCKS, DRAIN_LARGE_BLOCKS,
# INGEST_MAINNET_BLOCKS, PUBLISH_BLOCKS, STARTUP_RUNS, STARTUP_STORE_BLOCKS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
    benches=(plugin_runtime store s3_throughput drain backlog publish ingest startup)
fi

scripts/build-plugins.sh >/dev/null
scripts/install-test-servers.sh >/dev/null
# The drain bench's peer uploader: Debian's rclone.
if ! command -v rclone >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq
    DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq rclone >/dev/null
fi
cargo bench -p blockferry --no-run "${benches[@]/#/--bench=}" 2>&1 | tail -1

logs=target/bench-logs
mkdir -p "$logs"
started=$(date +%s)
for bench in "${benches[@]}"; do
    echo "== $bench"
    cargo bench -q -p blockferry --bench "$bench" 2>&1 | tee "$logs/$bench.log"
done

echo
echo "Benchmark table ($(nproc) cores, $(date -u +%Y-%m-%d), $(( $(date +%s) - started )) s):"
echo
echo "| figure | value | baseline (same run) | ratio | target | met |"
echo "|---|---|---|---|---|---|"
for bench in "${benches[@]}"; do
    sed -n 's/^ROW //p' "$logs/$bench.log"
done
