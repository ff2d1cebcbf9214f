//! The plugin runtime: loads provider components, checks them, compiles them
//! once (with an on-disk cache), and runs their calls in a per-bucket sandbox
//! with a memory cap, a deadline and an outbound-HTTP allow-list.
//!
//! ```text
//! PluginRuntime ──load(path)──▶ Plugin ──BucketClient::open(spec)──▶ BucketClient
//!   engine, linker, cache        compiled, checked     sandbox + pool of instances
//! ```
//! A trap, timeout or out-of-memory fails one call and discards the instance
//! that failed; the next call gets a fresh instance.

#[cfg(feature = "runtime")]
mod bindings;
#[cfg(feature = "runtime")]
pub mod body;
#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
pub mod check;
#[cfg(feature = "runtime")]
mod client;
mod config;
#[cfg(feature = "runtime")]
pub mod egress;
#[cfg(feature = "runtime")]
pub mod engine;
#[cfg(feature = "runtime")]
pub mod error;
pub mod logs;
pub mod network;
#[cfg(feature = "runtime")]
pub mod pool;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "runtime")]
pub mod sandbox;
#[cfg(feature = "runtime")]
pub mod sink;
#[cfg(feature = "runtime")]
pub mod tls;

#[cfg(feature = "runtime")]
pub use bindings::{BlockInfo, Confirmation, IncompleteUpload, ListedObject, ObjectPage, Outcome, RemoteObject};
#[cfg(feature = "runtime")]
pub use body::BlockBody;
#[cfg(feature = "runtime")]
pub use cache::{ArtifactCache, Provenance};
#[cfg(feature = "runtime")]
pub use check::{CONTRACT_VERSION, ComponentReport};
#[cfg(feature = "runtime")]
pub use client::{BucketClient, BucketSpec, CallStats, PutReport, RETIRE_AT_TABLE_ENTRIES};
pub use config::PluginsConfig;
#[cfg(feature = "runtime")]
pub use engine::EngineSettings;
#[cfg(feature = "runtime")]
pub use error::{CallError, LoadError, PluginFailure};
#[cfg(feature = "runtime")]
pub use runtime::*;
#[cfg(feature = "runtime")]
pub use sink::{BlockSink, Received, SinkTarget};
