//! blockferry: a sidecar beside a Hiero/Hedera consensus node that stores the
//! node's block stream durably and uploads every block to cloud buckets
//! through storage-provider plugins (WebAssembly components).
//!
//! Modules are named after the stage they own: ingest → store and buffer →
//! upload (through `plugin`) and publish; `http` and `metrics` show them to
//! operators. The operator guide and the plugin author guide are in `docs/`.

pub mod buffer;
pub mod config;
#[cfg(feature = "runtime")]
pub mod conformance;
pub mod credentials;
pub mod http;
pub mod ingest;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod plugin;
pub mod publish;
#[cfg(feature = "runtime")]
pub mod reload;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod upload;
