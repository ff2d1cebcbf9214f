//! `blockferry restore --from BUCKET --range A..B DIR`: download a range of
//! blocks from one bucket of the config into DIR, a block store (created if
//! missing) laid out as `store.dir` is: `<36 digits>.blk` or `.blk.gz` (the
//! config's `store.compression`) with a `.meta` beside each.
//!
//! Each block's key is rendered as uploads render it (the bucket's
//! `key_template`, the store's extension). The object is read through the
//! plugin's `bucket-reader` straight into a temporary file of DIR, the MD5 of
//! the bytes received is compared with the MD5 the bucket reports for the
//! object (when it reports none, the block is restored and counted as
//! "unverified"), and the file is then stored as the block store stores
//! blocks: fsync, rename, `.meta`, directory fsync. The `.meta` records the
//! block as already present in that bucket, and pending in the config's
//! other buckets.
//!
//! A block DIR already holds is not downloaded again when the bucket holds
//! the same content (by the MD5 it reports, else by downloading its digest);
//! with different content it is an error, and the block in DIR is kept:
//! nothing is ever overwritten. Objects missing from the bucket are listed;
//! the rest of the range is restored all the same. Blocks are restored
//! `concurrency` (the bucket's setting) at a time.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use blockferry::config::Config;
use blockferry::plugin::{BlockSink, CallError, RemoteObject, SinkTarget};
use blockferry::store::{BlockMeta, BlockStore, BucketStatus, Confirmed, StoreError, md5_base64};
use blockferry::telemetry::now_ms;
use blockferry::upload::Target;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::status::ConfigArgs;
use super::{Found, LISTED, parse_bounded_range};

/// Smallest size limit of one downloaded object.
const MIN_OBJECT_LIMIT: u64 = 256 << 20;

/// Options of `blockferry restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// Where the config (and so the bucket) is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The bucket to restore from: the `name` of one of the config's `[[buckets]]`.
    #[arg(long, value_name = "BUCKET")]
    pub from: String,
    /// The blocks to restore: `A..B` (B excluded), `A..=B` or `..B`.
    #[arg(long, value_name = "A..B", value_parser = parse_bounded_range)]
    pub range: RangeInclusive<u64>,
    /// The block store to restore into (created if missing; `--dir` is
    /// something else: the embedded default's working directory).
    #[arg(value_name = "DIR")]
    pub into: PathBuf,
}

/// What became of one block.
#[derive(Debug)]
enum Restored {
    /// Downloaded and stored: its size, and whether the bucket reported an
    /// MD5 it was checked against.
    Stored { bytes: u64, verified: bool },
    /// DIR already holds the same content.
    Skipped,
    /// The bucket holds nothing under the block's key.
    Missing,
    /// Not restored, for this reason (the block in DIR, if any, is kept).
    Failed(String),
}

/// The largest object accepted for one block: the config's
/// `ingest.max_block_bytes` plus what gzip may add, and at least 256 MiB.
fn object_limit(config: &Config) -> u64 {
    let max = config.ingest.max_block_bytes as u64;
    (max + max / 64 + (64 << 10)).max(MIN_OBJECT_LIMIT)
}

/// The bucket named `name` of `config`, opened; an error lists the
/// configured names when there is none.
async fn open_bucket(config: &Config, name: &str) -> anyhow::Result<Target> {
    let Some(bucket) = config.buckets.iter().find(|b| b.name == name) else {
        let names: Vec<&str> = config.buckets.iter().map(|b| b.name.as_str()).collect();
        anyhow::bail!(
            "the config has no bucket named `{name}`; its buckets: {}",
            if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
        );
    };
    let runtime = super::run::plugin_runtime(config)?;
    Ok(Target::open(&runtime, bucket, config.denied_networks()).await?)
}

/// The MD5 (base64) of `remote`, or what stands for it.
fn remote_md5(remote: &RemoteObject) -> String {
    remote.md5.as_deref().map_or_else(|| "(none reported)".into(), md5_base64)
}

/// Restore block `n` from `target` into `store`, unless `store` holds it.
/// `others` are the config's other buckets, pending in the new `.meta`.
async fn restore_block(
    store: Arc<BlockStore>,
    target: Target,
    n: u64,
    limit: u64,
    others: Arc<Vec<String>>,
) -> Restored {
    let key = (target.key)(n, store.ext());
    let local = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.read_meta(n)
    })
    .await;
    match local {
        Ok(Ok(meta)) => return compare_with_local(&target, &key, &meta).await,
        Ok(Err(StoreError::NotFound(_))) if store.has_block(n) => {
            return Restored::Failed(StoreError::Unindexed(n).to_string());
        }
        Ok(Err(StoreError::NotFound(_))) => {}
        Ok(Err(e)) => return Restored::Failed(format!("block {n}: {e}")),
        Err(e) => return Restored::Failed(format!("block {n}: {e}")),
    }

    let temp = match store.temp_block(n) {
        Ok(temp) => temp,
        Err(e) => return Restored::Failed(format!("block {n}: {e}")),
    };
    let file = match temp.file().try_clone() {
        Ok(file) => file,
        Err(e) => return Restored::Failed(format!("block {n}: {}: {e}", temp.path().display())),
    };
    // On any failure below, dropping `temp` deletes the temporary file.
    let (remote, received) = match target.client.get(&key, BlockSink::new(SinkTarget::File(file), limit)).await {
        Ok(Some(got)) => got,
        Ok(None) => return Restored::Missing,
        Err(e) => return Restored::Failed(format!("block {n}: get `{key}`: {e}")),
    };
    drop(received.target);
    let verified = match &remote.md5 {
        Some(md5) if md5[..] == received.md5[..] => true,
        Some(_) => {
            return Restored::Failed(format!(
                "block {n}: the {} bytes received from `{key}` have MD5 {} but the bucket reports MD5 {}; not restored",
                received.size,
                md5_base64(&received.md5),
                remote_md5(&remote)
            ));
        }
        None => false,
    };
    let mut buckets: BTreeMap<String, BucketStatus> =
        others.iter().map(|b| (b.clone(), BucketStatus::Pending)).collect();
    // The local block is the bytes read back from this bucket: confirmed by construction.
    let confirmed = Some(Confirmed::ReadBack);
    buckets.insert(target.name.clone(), BucketStatus::AlreadyPresent { at_ms: now_ms(), confirmed });
    let adopted = tokio::task::spawn_blocking(move || store.adopt_block(temp, received.size, &received.md5, buckets));
    match adopted.await {
        Ok(Ok((_, true))) => Restored::Stored { bytes: received.size, verified },
        Ok(Ok((_, false))) => Restored::Skipped,
        Ok(Err(e)) => Restored::Failed(format!("block {n}: {e}")),
        Err(e) => Restored::Failed(format!("block {n}: {e}")),
    }
}

/// Block `meta.number` is already in DIR: skipped when `key` holds the same
/// content, else an error (the local block is kept).
async fn compare_with_local(target: &Target, key: &str, meta: &BlockMeta) -> Restored {
    let n = meta.number;
    let differs = |remote: String| {
        Restored::Failed(format!(
            "block {n}: DIR already holds it with MD5 {} but `{key}` in bucket {} has {remote}; \
             the block in DIR is kept (never overwritten)",
            meta.md5, target.name
        ))
    };
    let remote = match target.client.stat(key).await {
        Ok(Some(remote)) => remote,
        Ok(None) => return Restored::Missing,
        Err(e) => return Restored::Failed(format!("block {n}: stat `{key}`: {e}")),
    };
    match &remote.md5 {
        Some(md5) if *md5 == meta.md5_bytes() => return Restored::Skipped,
        Some(_) => return differs(format!("MD5 {}", remote_md5(&remote))),
        None if remote.size != meta.size => return differs(format!("{} bytes (local {})", remote.size, meta.size)),
        None => {}
    }
    // The bucket reports no MD5: compare the content's.
    match target.client.get(key, BlockSink::new(SinkTarget::Digest, meta.size + 1)).await {
        Ok(Some((_, received))) if received.md5[..] == meta.md5_bytes()[..] => Restored::Skipped,
        Ok(Some((_, received))) => differs(format!("content with MD5 {}", md5_base64(&received.md5))),
        Ok(None) => Restored::Missing,
        Err(e) => Restored::Failed(format!("block {n}: get `{key}`: {e}")),
    }
}

/// What a restore did.
#[derive(Debug, Default)]
struct Tally {
    restored: u64,
    skipped: u64,
    missing: Found,
    unverified: Found,
    failed: u64,
    errors: Vec<String>,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, n: u64, outcome: Restored) {
        match outcome {
            Restored::Stored { bytes, verified } => {
                self.restored += 1;
                self.bytes += bytes;
                if !verified {
                    self.unverified.add(n);
                }
            }
            Restored::Skipped => self.skipped += 1,
            Restored::Missing => self.missing.add(n),
            Restored::Failed(e) => {
                self.failed += 1;
                if self.errors.len() < LISTED {
                    self.errors.push(e);
                }
            }
        }
    }
}

/// Restore the range from the bucket into DIR.
pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let config = args.config.load()?;
    super::apply_log_level(&config.log.level);
    let target = open_bucket(&config, &args.from).await?;
    if !target.client.can_read() {
        let e = CallError::NoReader { plugin: target.client.label().to_string(), what: "read objects to restore them" };
        anyhow::bail!("cannot restore from bucket {}: {e}", target.name);
    }
    let dir = &args.into;
    let store = Arc::new(
        BlockStore::open(dir, config.store.compression)
            .with_context(|| format!("opening {} as a block store to restore into", dir.display()))?,
    );
    let others: Arc<Vec<String>> =
        Arc::new(config.upload_buckets().into_iter().filter(|b| *b != target.name).collect());
    let limit = object_limit(&config);
    let range = args.range.clone();
    let count = range.end().saturating_sub(*range.start()).saturating_add(1);

    let bar = if std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} blocks  {elapsed} eta {eta}")
            .expect("a valid progress template");
        ProgressBar::new(count).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let mut blocks = futures::stream::iter(range)
        .map(|n| {
            let (store, target, others) = (store.clone(), target.clone(), others.clone());
            async move { (n, tokio::spawn(restore_block(store, target, n, limit, others)).await) }
        })
        .buffered(target.concurrency.max(1));
    let mut tally = Tally::default();
    while let Some((n, outcome)) = blocks.next().await {
        tally.add(n, outcome.unwrap_or_else(|e| Restored::Failed(format!("block {n}: {e}"))));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let name = &target.name;
    if tally.missing.count > 0 {
        println!("missing in bucket {name}: {}", tally.missing.numbers());
    }
    if tally.unverified.count > 0 {
        println!(
            "unverified (the bucket reports no content MD5, so the bytes received could not be checked \
             against one; their .meta has the MD5 of what was received): {}",
            tally.unverified.numbers()
        );
    }
    if tally.failed > 0 {
        println!("{} blocks could not be restored (nothing in {} was overwritten):", tally.failed, dir.display());
        for e in &tally.errors {
            println!("  {e}");
        }
        if tally.failed > tally.errors.len() as u64 {
            println!("  … ({} more)", tally.failed - tally.errors.len() as u64);
        }
    }
    println!(
        "restore from bucket {name} into {}: {} restored, {} skipped (already there), {} missing, {} unverified, \
         {} failed; {} bytes in {:.2} s",
        dir.display(),
        tally.restored,
        tally.skipped,
        tally.missing.count,
        tally.unverified.count,
        tally.failed,
        tally.bytes,
        started.elapsed().as_secs_f64()
    );
    let clean = tally.missing.count == 0 && tally.failed == 0;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
