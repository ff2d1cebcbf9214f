//! The block store: one file per block, named by its zero-padded number, with
//! a `.meta` file beside it. Writes are durable before they are acknowledged:
//! temporary file, fsync, rename, directory fsync. A crash at any instant
//! leaves the old state or the new, and [`BlockStore::recover`] tidies up.

//!
//! Without the `runtime` feature only the formats are compiled: the
//! `[store]` section and the `.meta` parser.

#[cfg(feature = "runtime")]
mod blocks;
#[cfg(feature = "runtime")]
mod codec;
mod config;
mod meta;

#[cfg(feature = "runtime")]
pub use blocks::*;
#[cfg(feature = "runtime")]
pub use codec::{gunzip, gzip, zstd};
pub use config::{BLOCK_EXTS, Compression, StoreConfig, strip_block_ext};
pub use meta::{BlockMeta, BucketStatus, Confirmed, md5_base64};
