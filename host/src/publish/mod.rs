//! Publishing: streaming every block to the best available block node, as a
//! consensus node does, and reporting acknowledgements to the
//! block buffer.
//!
//! The manager keeps one `ACTIVE` [`connection`] at a time, chosen by
//! priority (lower wins, random among equals). After a connection ends it
//! applies the consensus node's failover tables ([`policy`]): which node next, after which
//! delay, from which block. While a node of lower priority is active, nodes
//! of higher priority are probed and switched back to once reachable. A new
//! connection to another node after a failure starts at the lowest
//! unacknowledged block, so the fleet misses nothing; blocks evicted from the
//! buffer are read back from the store.
//!
//! `maxRequestDelay` has no counterpart: blockferry streams only whole blocks
//! (a block enters the buffer once durable), so every request is sent as soon
//! as it is full or its block's items are all packed.
//!
//! Without the `runtime` feature only the `[publish]` and `[[block_nodes]]`
//! sections are compiled.

#[cfg(feature = "runtime")]
pub mod archive;
mod config;
#[cfg(feature = "runtime")]
pub mod connection;
#[cfg(feature = "runtime")]
mod context;
#[cfg(feature = "runtime")]
pub mod packer;
#[cfg(feature = "runtime")]
pub mod policy;
#[cfg(feature = "runtime")]
mod publisher;

#[cfg(feature = "runtime")]
pub use archive::Archive;
pub use config::{BlockNodeConfig, PublishConfig};
#[cfg(feature = "runtime")]
pub use connection::Ended;
#[cfg(feature = "runtime")]
pub use context::{ConnectionState, PublishCounters, PublishStatus};
#[cfg(feature = "runtime")]
pub use publisher::*;
