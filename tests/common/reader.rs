//! The conformance checks every provider's `bucket-reader` passes, run by
//! each provider's tests against its emulator (or directory): what was
//! uploaded reads back byte for byte with its MD5, listings page in key order
//! within their prefix, a missing key is `none`, a sink that refuses bytes
//! fails the read, the health check passes, incomplete uploads can be listed.

use blockferry::plugin::{BlockSink, BucketClient, SinkTarget};
use md5::{Digest, Md5};

use super::{bytes, put};

/// Run the checks on `client`, an opened, empty, healthy bucket.
pub async fn conformance(client: &BucketClient) {
    assert!(client.can_read(), "{} exports the bucket-reader", client.provider());
    client.health().await.unwrap_or_else(|e| panic!("health of a good bucket: {e}"));

    let bodies: Vec<Vec<u8>> = (0..5).map(|i| bytes(1000 + 4096 * i, 70 + i as u64)).collect();
    let keys: Vec<String> = (0..5).map(|i| format!("conformance/{i:036}.blk")).collect();
    for (i, (key, body)) in keys.iter().zip(&bodies).enumerate() {
        put(client, i as u64, key, body).await.unwrap();
    }
    put(client, 9, "elsewhere/000.blk", b"not under the prefix").await.unwrap();

    // Read back, byte for byte, with the content MD5.
    for (key, body) in keys.iter().zip(&bodies) {
        let sink = BlockSink::new(SinkTarget::Memory(Vec::new()), 1 << 20);
        let (remote, received) = client.get(key, sink).await.unwrap().expect("an uploaded object is found");
        let SinkTarget::Memory(got) = received.target else { panic!("the sink's own target comes back") };
        assert_eq!(&got, body, "{key} byte for byte");
        assert_eq!(received.md5[..], Md5::digest(body)[..], "{key}: the host hashed what it received");
        assert_eq!(remote.size, body.len() as u64, "{key}: size");
        assert_eq!(remote.md5.as_deref(), Some(&Md5::digest(body)[..]), "{key}: the stored content MD5");
    }
    let sink = BlockSink::new(SinkTarget::Digest, 1 << 20);
    assert!(client.get("conformance/missing.blk", sink).await.unwrap().is_none(), "a missing key is none");
    // A sink that takes fewer bytes than the object holds fails the read.
    let sink = BlockSink::new(SinkTarget::Digest, 100);
    assert!(client.get(&keys[4], sink).await.is_err(), "an object larger than the sink allows is an error");

    // Listing: pages of 2 in key order, only under the prefix.
    let (mut listed, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = client.list("conformance/", after.as_deref(), 2).await.unwrap();
        assert!(page.objects.len() <= 2, "a page holds at most the limit");
        listed.extend(page.objects.iter().map(|o| (o.key.clone(), o.size)));
        pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging ends");
    }
    let expected: Vec<(String, u64)> = keys.iter().cloned().zip(bodies.iter().map(|b| b.len() as u64)).collect();
    assert_eq!(listed, expected, "every object under the prefix, once, in key order, with its size");
    assert!(pages >= 3, "5 objects in pages of 2");

    client.incomplete_uploads("conformance/").await.unwrap_or_else(|e| panic!("incomplete uploads: {e}"));
}
