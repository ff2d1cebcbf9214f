//! Simulators for blockferry: a consensus node and a block node.
//!
//! It streams generated blocks to a block node (blockferry's ingest) over the
//! real `org.hiero.block.api` publish protocol, follows the node's answers
//! (acknowledgements, `SkipBlock`, `ResendBlock`, `BehindPublisher`,
//! `EndOfStream`) and reports throughput and acknowledgement latency.
//!
//! - [`blocks`]: deterministic blocks with a consensus node's item mix;
//! - [`files`]: real blocks read from block files, replayed item by item,
//!   and blocks with items at field numbers a newer schema may add;
//! - [`publish`]: the consensus node, paced and bounded like a real one;
//! - [`Session`]: a raw stream for tests that send arbitrary requests;
//! - [`BlockNode`]: the other side, a scriptable block node that records what
//!   a publisher sends and answers anything at any block.

#![warn(missing_docs)]

pub mod block_node;
pub mod blocks;
mod error;
pub mod files;
pub mod publisher;
pub mod session;

pub use block_node::{Action, BlockNode, Record, RequestKind, RequestRecord, Rule, Trigger};
pub use blocks::{block_bytes, generate_block};
pub use error::{PublishError, Result};
pub use files::{read_block_dir, with_future_items};
pub use publisher::{PublishReport, PublisherOptions, publish};
pub use session::Session;
