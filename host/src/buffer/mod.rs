//! The block buffer: recent blocks in memory with their
//! acknowledgement state from the block nodes, pruning, saturation and the
//! backpressure toward the consensus node.
//!
//! - A block enters after it is durable in the store ([`BlockBuffer::insert`]).
//!   When blocks are streamed to block nodes it stays *unacknowledged* until a
//!   block node acknowledges it ([`BlockBuffer::acknowledge`]); otherwise
//!   nothing waits for it and it is acknowledged at once.
//! - Acknowledged blocks are pruned once older than the TTL, or sooner when the
//!   acknowledged blocks alone exceed the byte bound; an unacknowledged block is
//!   never dropped. A block pruned from memory is still in the store.
//! - Saturation is the larger of unacknowledged blocks ÷ the ideal size
//!   (TTL ÷ block period) and unacknowledged bytes ÷ the byte bound, in
//!   percent. At 100 % backpressure engages: ingest stops acknowledging and
//!   reading the consensus node's stream ([`BlockBuffer::wait_for_capacity`]);
//!   it is released below the recovery threshold, so it does not flap.

#[cfg(feature = "runtime")]
mod blocks;
mod config;

#[cfg(feature = "runtime")]
pub use blocks::*;
pub use config::BufferConfig;
