//! `blockferry verify`: ask every bucket, through its plugin, what it holds
//! under each local block's key and compare the remote content MD5 with the
//! MD5 in the block's `.meta`. Each bucket is checked with its own bounded
//! concurrency (its `concurrency` setting).
//!
//! The plain check trusts what the bucket says of the object (`stat`: the
//! MD5 recorded at upload, or a single-part ETag). `--deep` also downloads
//! every object that matches by metadata or whose MD5 the bucket does not
//! report (through the plugin's `bucket-reader`, into a digest-only sink
//! that accepts at most the local size + 1 bytes) and compares the MD5 of the
//! bytes received with the `.meta`'s, which catches an object rewritten
//! behind blockferry's back with the same size and metadata; one the bucket
//! reports larger than the local block differs without a download. A bucket
//! whose plugin cannot read is reported as an error and not checked.
//!
//! What is found is written into the block's `.meta`: a bucket found holding
//! different content becomes `hash-mismatch` (so retention keeps the block
//! and the mismatch is reported, also after a restart), and with `--deep` a
//! copy whose downloaded content matches is recorded as confirmed by a
//! read-back (which `upload.verify_before_delete` may require).

use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use blockferry::plugin::{BlockSink, CallError, SinkTarget};
use blockferry::store::{BlockMeta, BlockStore, BucketStatus, Confirmed, StoreError, md5_base64};
use blockferry::upload::Target;
use clap::Args;
use futures::StreamExt;

use super::run::open_targets;
use super::status::{ConfigArgs, open_existing_store};
use super::{Found, LISTED, parse_range};

/// Options of `blockferry verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Where the config is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only the blocks in this range: `A..B` (B excluded), `A..=B`, `A..` or `..B`.
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub range: Option<RangeInclusive<u64>>,
    /// Also download every object that matches by metadata (or whose MD5 the
    /// bucket does not report) and compare the MD5 of its content with the
    /// local one (needs plugins that can read: the `reading-provider` world;
    /// a bucket whose plugin cannot is an error).
    #[arg(long)]
    pub deep: bool,
}

/// What one bucket holds for one block.
#[derive(Debug)]
enum Check {
    /// Same content MD5.
    Matching,
    /// Absent, though the `.meta` says it was uploaded (or found present).
    Missing,
    /// Absent, and not uploaded yet (pending or failed locally): nothing wrong.
    NotUploaded,
    /// Different content.
    Mismatched,
    /// Matching by metadata, but the content downloaded differs (`--deep`).
    ContentDiffers(String),
    /// Present with the right size, but the bucket reports no content MD5.
    UnknownMd5,
    /// Deleted locally (by retention) since the listing.
    Gone,
    /// The check itself failed.
    Error(String),
}

/// The outcome of verifying one bucket.
#[derive(Debug, Default)]
struct BucketReport {
    matching: u64,
    missing: Found,
    not_uploaded: u64,
    mismatched: Found,
    /// What differs, for the first blocks whose downloaded content differs.
    content_differs: Vec<String>,
    unknown_md5: Found,
    errors: Vec<String>,
    error_count: u64,
}

impl BucketReport {
    fn add(&mut self, n: u64, check: Check) {
        match check {
            Check::Matching => self.matching += 1,
            Check::Missing => self.missing.add(n),
            Check::NotUploaded => self.not_uploaded += 1,
            Check::Mismatched => self.mismatched.add(n),
            Check::ContentDiffers(detail) => {
                self.mismatched.add(n);
                if self.content_differs.len() < LISTED {
                    self.content_differs.push(format!("block {n}: content differs ({detail})"));
                }
            }
            Check::UnknownMd5 => self.unknown_md5.add(n),
            Check::Gone => {}
            Check::Error(e) => {
                self.error_count += 1;
                if self.errors.len() < LISTED {
                    self.errors.push(e);
                }
            }
        }
    }

    fn ok(&self) -> bool {
        self.missing.count == 0 && self.mismatched.count == 0 && self.error_count == 0
    }
}

/// A change of a block's `.meta` recording what a check found.
type Record = Box<dyn FnOnce(&mut BlockMeta) + Send>;

/// Compare block `n` in the store with what `target` holds under its key
/// (see [`compare`]) and record in its `.meta` what was found: different
/// content as a hash mismatch, a deep match as confirmed by a read-back.
async fn check(store: Arc<BlockStore>, target: Target, n: u64, deep: bool) -> Check {
    let (check, remote_md5) = compare(&store, &target, n, deep).await;
    let name = target.name.clone();
    let record: Option<Record> = match &check {
        Check::Mismatched | Check::ContentDiffers(_) => Some(Box::new(move |m: &mut BlockMeta| {
            m.buckets.insert(name, BucketStatus::HashMismatch { remote_md5 });
            m.hash_mismatch = true;
        })),
        Check::Matching if deep => Some(Box::new(move |m: &mut BlockMeta| {
            if let Some(BucketStatus::Uploaded { confirmed, .. } | BucketStatus::AlreadyPresent { confirmed, .. }) =
                m.buckets.get_mut(&name)
            {
                *confirmed = Some(Confirmed::ReadBack);
            }
        })),
        _ => None,
    };
    let Some(record) = record else { return check };
    match tokio::task::spawn_blocking(move || store.update_meta(n, record)).await {
        Ok(Ok(_)) | Ok(Err(StoreError::NotFound(_))) => check,
        Ok(Err(e)) => Check::Error(format!("block {n}: recording the result in its .meta: {e}")),
        Err(e) => Check::Error(format!("block {n}: {e}")),
    }
}

/// Compare block `n` in the store with what `target` holds under its key;
/// with `deep`, download what matches by metadata and compare its content.
/// With the remote content's MD5 (base64) when known.
async fn compare(store: &Arc<BlockStore>, target: &Target, n: u64, deep: bool) -> (Check, Option<String>) {
    let meta = match tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.read_meta(n)
    })
    .await
    {
        Ok(Ok(meta)) => meta,
        Ok(Err(StoreError::NotFound(_))) if !store.has_block(n) => return (Check::Gone, None),
        Ok(Err(e)) => return (Check::Error(format!("block {n}: local metadata: {e}")), None),
        Err(e) => return (Check::Error(format!("block {n}: {e}")), None),
    };
    let key = (target.key)(n, meta.ext());
    let remote = match target.client.stat(&key).await {
        Ok(None) => {
            let check = match meta.status(&target.name) {
                BucketStatus::Pending | BucketStatus::Failed { .. } => Check::NotUploaded,
                _ => Check::Missing,
            };
            return (check, None);
        }
        Ok(Some(remote)) => remote,
        Err(e) => return (Check::Error(format!("block {n}: stat `{key}`: {e}")), None),
    };
    let remote_md5 = remote.md5.as_deref().map(md5_base64);
    let by_metadata = match &remote.md5 {
        Some(md5) if *md5 == meta.md5_bytes() => Check::Matching,
        Some(_) => Check::Mismatched,
        None if remote.size != meta.size => Check::Mismatched,
        None => Check::UnknownMd5,
    };
    match by_metadata {
        Check::Matching | Check::UnknownMd5 if deep => {
            if remote.size > meta.size {
                let detail = format!("the object is {} bytes, local {} bytes", remote.size, meta.size);
                return (Check::ContentDiffers(detail), remote_md5);
            }
            check_content(target, &key, &meta).await
        }
        other => (other, remote_md5),
    }
}

/// Download the object under `key` (its MD5 only) and compare it with `meta`;
/// with the MD5 (base64) of what was downloaded.
async fn check_content(target: &Target, key: &str, meta: &BlockMeta) -> (Check, Option<String>) {
    let n = meta.number;
    let sink = BlockSink::new(SinkTarget::Digest, meta.size + 1);
    match target.client.get(key, sink).await {
        Ok(None) => (Check::Missing, None),
        Ok(Some((_, received))) if received.md5[..] == meta.md5_bytes()[..] => (Check::Matching, None),
        Ok(Some((_, received))) => {
            let got = md5_base64(&received.md5);
            (Check::ContentDiffers(format!("downloaded MD5 {got}, local {}", meta.md5)), Some(got))
        }
        Err(e) => (Check::Error(format!("block {n}: get `{key}`: {e}")), None),
    }
}

/// Verify every block of `numbers` in `target`, `target.concurrency` at a time.
async fn verify_bucket(store: Arc<BlockStore>, target: Target, numbers: Arc<Vec<u64>>, deep: bool) -> BucketReport {
    let concurrency = target.concurrency.max(1);
    let mut checks = futures::stream::iter(numbers.iter().copied())
        .map(|n| {
            let (store, target) = (store.clone(), target.clone());
            async move { (n, tokio::spawn(check(store, target, n, deep)).await) }
        })
        .buffered(concurrency);
    let mut report = BucketReport::default();
    while let Some((n, result)) = checks.next().await {
        report.add(n, result.unwrap_or_else(|e| Check::Error(format!("block {n}: {e}"))));
    }
    report
}

/// Verify the store's blocks against every bucket.
pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = Arc::new(open_existing_store(&config)?);
    let numbers: Vec<u64> = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.numbers()).await?.context("listing the block store")?
    };
    let numbers: Arc<Vec<u64>> = Arc::new(match &args.range {
        Some(range) => numbers.into_iter().filter(|n| range.contains(n)).collect(),
        None => numbers,
    });
    let targets = open_targets(&super::run::plugin_runtime(&config)?, &config).await?;
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            if args.deep && !t.client.can_read() {
                let e = CallError::NoReader {
                    plugin: t.client.label().to_string(),
                    what: "read objects for verify --deep",
                };
                return (name, Err(e));
            }
            (name, Ok(tokio::spawn(verify_bucket(store.clone(), t, numbers.clone(), args.deep))))
        })
        .collect();
    let mut all_ok = true;
    for (name, task) in tasks {
        let task = match task {
            Ok(task) => task,
            Err(e) => {
                all_ok = false;
                println!("bucket {name}: error: {e}");
                continue;
            }
        };
        let r = task.await.with_context(|| format!("verifying bucket {name}"))?;
        all_ok &= r.ok();
        println!(
            "bucket {name}: {} matching, {} missing, {} mismatched, {} unknown MD5, {} not uploaded yet, {} errors",
            r.matching, r.missing.count, r.mismatched.count, r.unknown_md5.count, r.not_uploaded, r.error_count
        );
        for (what, found) in [("missing", &r.missing), ("mismatched", &r.mismatched), ("unknown MD5", &r.unknown_md5)] {
            if found.count > 0 {
                println!("  {what}: {}", found.numbers());
            }
        }
        if r.mismatched.count > 0 {
            println!("  recorded as hash-mismatch in their .meta: these local blocks are kept");
        }
        for d in &r.content_differs {
            println!("  {d}");
        }
        for e in &r.errors {
            println!("  error: {e}");
        }
        if r.error_count > r.errors.len() as u64 {
            println!("  … ({} more errors)", r.error_count - r.errors.len() as u64);
        }
    }
    println!(
        "verified {} local blocks{}: {}",
        numbers.len(),
        if args.deep { " (deep: content downloaded)" } else { "" },
        if all_ok { "nothing missing or mismatched" } else { "problems found" }
    );
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
