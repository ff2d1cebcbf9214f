//! The integration tests, in one binary (one link of the host, one build of
//! the shared support code): a module per area. Each test starts the real
//! servers it needs on loopback; `common` holds the servers, the sidecar
//! runner and the shared conformance checks.
//!
//! Run one area with `cargo nextest run -p blockferry --test all AREA::`,
//! e.g. `--test all crash::`.

mod common;

mod backpressure;
mod bucket_reader;
mod cli;
mod cli_store;
mod config;
mod conformance;
mod crash;
mod credentials;
mod disk_full;
mod fault_rates;
mod fs_provider;
mod gcs_provider;
mod ingest;
mod integrity;
mod many_nodes;
mod operators;
mod packaging;
mod pipeline;
mod plugin_logs;
mod plugin_runtime;
mod power_cut;
mod publish;
mod real_blocks;
mod relay;
mod reload;
mod restore;
mod s3_provider;
mod tls;
