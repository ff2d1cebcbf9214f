//! The upload manager: every stored block goes to every bucket. Buckets work
//! in parallel, each with bounded concurrency and in block order; outcomes are
//! recorded in the block's `.meta`. A transient failure backs the bucket off
//! (exponentially, capped) and retries; a permanent one holds the bucket and
//! alerts; a hash mismatch is final and the local block is kept forever.
//!
//! The manager holds only block numbers in memory, never blocks or their
//! metadata, so a backlog of hundreds of thousands of blocks is cheap.

#[cfg(feature = "runtime")]
mod archive;
#[cfg(feature = "runtime")]
mod bucket;
mod config;
#[cfg(feature = "runtime")]
mod manager;
#[cfg(feature = "runtime")]
mod retention;
#[cfg(feature = "runtime")]
mod upkeep;
#[cfg(feature = "runtime")]
mod worker;

#[cfg(feature = "runtime")]
pub use archive::BucketArchive;
#[cfg(feature = "runtime")]
pub use bucket::{BucketStats, Health, KeyFn, OpenError, Target};
pub use config::{BucketConfig, Secrets, UploadConfig, VerifyBeforeDelete, check_key_template, render_key};
#[cfg(feature = "runtime")]
pub use manager::*;
#[cfg(feature = "runtime")]
pub use retention::{
    BlockCounts, BlockNodeAcks, Census, CensusCounts, RetentionReport, RetentionSettings, census_of_check,
    count_blocks, run_retention, spawn_retention,
};
