//! The Hiero block stream publish protocol as blockferry speaks it.
//!
//! - [`api`]: the gRPC service `org.hiero.block.api.BlockStreamPublishService`
//!   (client and server) and its messages;
//! - [`stream`]: blocks and block items (`com.hedera.hapi.block.stream`);
//! - [`item`]: what blockferry reads from an item (its kind, a header's block
//!   number) without decoding or re-encoding the rest;
//! - [`framing`]: the exact bytes of a serialized `Block` built from items, and
//!   the exact size of a publish request, for packing requests to a limit.
//!
//! Items travel as [`bytes::Bytes`] from the socket to the block file: what is
//! stored and uploaded is exactly what the consensus node produced.

pub mod framing;
pub mod item;

/// `org.hiero.block.api`: the publish service and its messages.
#[allow(missing_docs, non_camel_case_types, clippy::all)]
pub mod api {
    tonic::include_proto!("org.hiero.block.api");
}

/// `com.hedera.hapi.block.stream`: blocks and block items.
#[allow(missing_docs, clippy::all)]
pub mod stream {
    tonic::include_proto!("com.hedera.hapi.block.stream");
}

pub use api::publish_stream_request::end_stream::Code as EndStreamCode;
pub use api::publish_stream_response::end_of_stream::Code as EndOfStreamCode;
pub use api::{PublishStreamRequest, PublishStreamResponse};
pub use item::{ItemError, ItemKind};

/// The block number a block node reports when it knows no block at all (`-1`
/// as a signed number, `u64::MAX` on the wire): "the next block" after it
/// wraps to 0, so a publisher starts with block 0.
pub const UNKNOWN_BLOCK_NUMBER: u64 = u64::MAX;
