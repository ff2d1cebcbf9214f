//! Where the publisher finds a block that local retention already deleted,
//! when a block node asks for it (`ResendBlock`, `BehindPublisher`): a bucket
//! holding the node's history ([`crate::upload::BucketArchive`]).

use futures::future::BoxFuture;

/// A source of old blocks, read on demand.
pub trait Archive: Send + Sync {
    /// The bytes of block `number` (as received from the consensus node, not
    /// compressed), or `None` when no source has it.
    fn fetch(&self, number: u64) -> BoxFuture<'_, Option<Vec<u8>>>;
}
