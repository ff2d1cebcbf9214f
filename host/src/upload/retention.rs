//! Local retention: delete a block only when it is safe in every bucket,
//! never hash-mismatched, and older than the retention period.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{BlockStore, StoreError, now_ms};

/// What one retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Blocks deleted.
    pub deleted: u64,
    /// Blocks kept (too young, not yet safe everywhere, or mismatched).
    pub retained: u64,
}

/// One retention pass over the store: delete blocks older than `retention`
/// that are safe in every one of `buckets` (and never mismatched).
pub fn run_retention(
    store: &Arc<BlockStore>,
    buckets: &[String],
    retention: Duration,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if buckets.is_empty() {
        // With no bucket to be safe in, the local copy is the only one.
        return Ok(report);
    }
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    for n in store.numbers()? {
        let meta = match store.read_meta(n) {
            Ok(m) => m,
            Err(StoreError::NotFound(_) | StoreError::CorruptMeta { .. }) => {
                report.retained += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if meta.created_at_ms <= cutoff && meta.safe_in_all(buckets.iter().map(String::as_str)) {
            store.delete_block(&meta)?;
            tracing::debug!(block = n, "retention deleted the local copy; it is safe in every bucket");
            report.deleted += 1;
        } else {
            report.retained += 1;
        }
    }
    Ok(report)
}
