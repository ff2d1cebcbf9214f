//! Ingest: the `publishBlockStream` endpoint the consensus node streams its
//! blocks to, exactly as it streams to a block node.
//!
//! A block starts with its header and ends with `BlockEnd` (or the next
//! block's header); once its file and `.meta` are durable it is acknowledged.
//! What the node hears back follows a block node's answers:
//!
//! | situation | response |
//! |---|---|
//! | block stored (fsynced) | `BlockAcknowledgement(n)` |
//! | header of a block already stored | `SkipBlock(n)`; if the whole block still arrives (its `BlockEnd` too) with other bytes, `EndOfStream DUPLICATE_BLOCK` |
//! | header beyond the next block (a gap) | `BehindPublisher(latest)`: send from `latest + 1` |
//! | malformed request or item, request above `hard_limit_bytes`, block above `max_block_bytes`, items before a header, a block without proof | `EndOfStream INVALID_REQUEST` |
//! | the store cannot write | `EndOfStream PERSISTENCE_FAILED` |
//!
//! Every `EndOfStream` carries the last block stored, where the node resumes.
//! Nothing is written before a block is complete, so an ended stream leaves
//! nothing half-written. One publisher at a time: a second one is refused
//! with `RESOURCE_EXHAUSTED` naming the one streaming.

mod config;
#[cfg(feature = "runtime")]
mod endpoint;

pub use config::{DEFAULT_HARD_LIMIT_BYTES, IngestConfig};
#[cfg(feature = "runtime")]
pub use endpoint::*;
