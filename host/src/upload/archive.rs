//! The buckets as an archive of old blocks, for the publisher: a block that
//! local retention deleted is read back from the first bucket (in config
//! order) whose plugin can read and which holds it with the right content.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::plugin::{BlockSink, SinkTarget};
use crate::publish::archive::Archive;
use crate::store::Compression;

use super::UploadManager;

/// Reads old blocks from the buckets an [`UploadManager`] uploads to.
pub struct BucketArchive {
    uploads: Arc<UploadManager>,
    /// The block file extension (`.blk`, `.blk.gz` or `.blk.zstd`) the keys were rendered with.
    ext: &'static str,
    /// Largest object accepted, in bytes.
    max_bytes: u64,
}

impl BucketArchive {
    /// An archive over `uploads`' buckets, whose objects are block files with
    /// extension `ext` of at most `max_bytes`.
    pub fn new(uploads: Arc<UploadManager>, ext: &'static str, max_bytes: u64) -> Self {
        Self { uploads, ext, max_bytes }
    }

    /// Block `number` from the first bucket that has it intact.
    async fn read(&self, number: u64) -> Option<Vec<u8>> {
        for (target, _) in self.uploads.targets() {
            if !target.client.can_read() {
                continue;
            }
            let key = (target.key)(number, self.ext);
            let sink = BlockSink::new(SinkTarget::Memory(Vec::new()), self.max_bytes);
            let (remote, received) = match target.client.get(&key, sink).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(bucket = %target.name, block = number, key, "cannot read an old block back: {e}");
                    continue;
                }
            };
            if remote.md5.as_deref().is_some_and(|md5| md5 != received.md5) {
                tracing::error!(
                    bucket = %target.name, block = number, key,
                    "the object read back does not match its stored MD5; not served"
                );
                continue;
            }
            let SinkTarget::Memory(bytes) = received.target else { continue };
            let bytes = match Compression::of_name(self.ext).unwrap_or_default().decode(bytes) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(bucket = %target.name, block = number, key, "cannot decompress the object: {e}");
                    continue;
                }
            };
            tracing::info!(bucket = %target.name, block = number, key, "old block read back from the bucket");
            return Some(bytes);
        }
        None
    }
}

impl Archive for BucketArchive {
    fn fetch(&self, number: u64) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(self.read(number))
    }
}
