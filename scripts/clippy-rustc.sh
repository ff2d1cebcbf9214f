#!/usr/bin/env bash
# rustc with clippy's lints, warnings as errors, for the workspace's own crates.
#
# Set as RUSTC_WORKSPACE_WRAPPER (scripts/test.sh does), cargo compiles the
# workspace's crates with clippy-driver while every dependency is compiled by
# plain rustc once: the lint pass and the test build share one compilation
# instead of a `cargo clippy` check of the whole dependency tree followed by a
# full build of it. The lints are the same as `cargo clippy -- -D warnings`.
exec clippy-driver "$@" -D warnings
