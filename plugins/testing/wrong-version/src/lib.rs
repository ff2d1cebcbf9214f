//! Test fixture: a minimal provider built against `blockferry:uploader@0.2.0`
//! (this crate's `wit/`: the first contract's interfaces under a version the
//! host does not support), which a host that speaks `0.1.x` must refuse to load.

wit_bindgen::generate!({
    // `wasi:io` from the repository's own `wit/deps` (vendored once), then
    // this fixture's contract.
    path: ["../../../wit/deps/io", "wit"],
    world: "blockferry:uploader/provider",
    generate_all,
});

use blockferry::uploader::host::BlockBody;
use blockferry::uploader::types::{BlockInfo, Outcome, RemoteObject, UploadError};
use exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = WrongVersion;
}

/// A bucket that accepts any settings and stores nothing.
struct WrongVersion;

impl GuestBucket for WrongVersion {
    fn open(_settings: Vec<(String, String)>) -> Result<Bucket, String> {
        Ok(Bucket::new(WrongVersion))
    }

    fn provider() -> String {
        "wrong-version".into()
    }

    fn put_block(&self, block: BlockInfo, _body: &BlockBody) -> Result<Outcome, UploadError> {
        Err(UploadError::Permanent(format!("put-block `{}`: the wrong-version fixture stores nothing", block.key)))
    }

    fn stat(&self, _key: String) -> Result<Option<RemoteObject>, UploadError> {
        Ok(None)
    }
}

export!(Component);
