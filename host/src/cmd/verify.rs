//! `blockferry verify`: ask every bucket, through its plugin, what it holds
//! under each local block's key and compare the remote content MD5 with the
//! MD5 in the block's `.meta`. Each bucket is checked with its own bounded
//! concurrency (its `concurrency` setting).

use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use blockferry::store::{BlockStore, BucketStatus, StoreError};
use blockferry::upload::Target;
use clap::Args;
use futures::StreamExt;

use super::run::open_targets;
use super::status::{ConfigArgs, open_existing_store};

/// Block numbers listed per kind of problem.
const LISTED: usize = 10;

/// Options of `blockferry verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Where the config is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only the blocks in this range: `A..B` (B excluded), `A..=B`, `A..` or `..B`.
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub range: Option<RangeInclusive<u64>>,
}

/// Parse `A..B`, `A..=B`, `A..` or `..B` into an inclusive range.
fn parse_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| format!("`{text}` is not a range like 100..200"))?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("`{s}` in `{text}`: {e}"));
    let first = if start.is_empty() { 0 } else { number(start)? };
    let last = match end.strip_prefix('=') {
        Some(end) => number(end)?,
        None if end.is_empty() => u64::MAX,
        None => number(end)?.checked_sub(1).ok_or_else(|| format!("`{text}` is empty"))?,
    };
    if first > last {
        return Err(format!("`{text}` is empty"));
    }
    Ok(first..=last)
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
    /// Present with the right size, but the bucket reports no content MD5.
    UnknownMd5,
    /// Deleted locally (by retention) since the listing.
    Gone,
    /// The check itself failed.
    Error(String),
}

/// A count and the first few block numbers counted.
#[derive(Debug, Default)]
struct Found {
    count: u64,
    first: Vec<u64>,
}

impl Found {
    fn add(&mut self, n: u64) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(n);
        }
    }

    /// `3, 7, 9` or `3, 7, 9, … (12 more)`.
    fn numbers(&self) -> String {
        let listed: Vec<String> = self.first.iter().map(u64::to_string).collect();
        let more = self.count - self.first.len() as u64;
        if more > 0 { format!("{}, … ({more} more)", listed.join(", ")) } else { listed.join(", ") }
    }
}

/// The outcome of verifying one bucket.
#[derive(Debug, Default)]
struct BucketReport {
    matching: u64,
    missing: Found,
    not_uploaded: u64,
    mismatched: Found,
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

/// Compare block `n` in the store with what `target` holds under its key.
async fn check(store: Arc<BlockStore>, target: Target, n: u64) -> Check {
    let meta = match tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.read_meta(n)
    })
    .await
    {
        Ok(Ok(meta)) => meta,
        Ok(Err(StoreError::NotFound(_))) if !store.has_block(n) => return Check::Gone,
        Ok(Err(e)) => return Check::Error(format!("block {n}: local metadata: {e}")),
        Err(e) => return Check::Error(format!("block {n}: {e}")),
    };
    let key = (target.key)(n, meta.ext());
    match target.client.stat(&key).await {
        Ok(None) => match meta.status(&target.name) {
            BucketStatus::Pending | BucketStatus::Failed { .. } => Check::NotUploaded,
            _ => Check::Missing,
        },
        Ok(Some(remote)) => match remote.md5 {
            Some(md5) if md5 == meta.md5_bytes() => Check::Matching,
            Some(_) => Check::Mismatched,
            None if remote.size != meta.size => Check::Mismatched,
            None => Check::UnknownMd5,
        },
        Err(e) => Check::Error(format!("block {n}: stat `{key}`: {e}")),
    }
}

/// Verify every block of `numbers` in `target`, `target.concurrency` at a time.
async fn verify_bucket(store: Arc<BlockStore>, target: Target, numbers: Arc<Vec<u64>>) -> BucketReport {
    let concurrency = target.concurrency.max(1);
    let mut checks = futures::stream::iter(numbers.iter().copied())
        .map(|n| {
            let (store, target) = (store.clone(), target.clone());
            async move { (n, tokio::spawn(check(store, target, n)).await) }
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
            (name, tokio::spawn(verify_bucket(store.clone(), t, numbers.clone())))
        })
        .collect();
    let mut all_ok = true;
    for (name, task) in tasks {
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
        for e in &r.errors {
            println!("  error: {e}");
        }
        if r.error_count > r.errors.len() as u64 {
            println!("  … ({} more errors)", r.error_count - r.errors.len() as u64);
        }
    }
    println!(
        "verified {} local blocks: {}",
        numbers.len(),
        if all_ok { "nothing missing or mismatched" } else { "problems found" }
    );
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("10..20"), Ok(10..=19));
        assert_eq!(parse_range("10..=20"), Ok(10..=20));
        assert_eq!(parse_range("10.."), Ok(10..=u64::MAX));
        assert_eq!(parse_range("..5"), Ok(0..=4));
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("..0").is_err());
        assert!(parse_range("x..3").is_err());
        assert!(parse_range("7").is_err());
    }
}
