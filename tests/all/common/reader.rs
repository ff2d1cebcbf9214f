//! The conformance checks every provider's `bucket-reader` passes, run by
//! each provider's tests against its emulator (or directory): the library's
//! own suite (`blockferry::conformance`, which `blockferry plugin test` runs
//! too), so there is one definition of "conforms".

use blockferry::conformance::{Verdict, reader_checks};
use blockferry::plugin::BucketClient;

/// Run the reader checks on `client`, an opened, empty, healthy bucket.
pub async fn conformance(client: &BucketClient) {
    assert!(client.can_read(), "{} exports the bucket-reader", client.provider());
    let checks = reader_checks(client, "conformance/").await;
    let failed: Vec<_> = checks.iter().filter(|c| !matches!(c.verdict, Verdict::Pass)).collect();
    assert!(failed.is_empty(), "{}: {failed:#?}", client.provider());
    assert_eq!(checks.len(), 5, "every reader check ran");
}
