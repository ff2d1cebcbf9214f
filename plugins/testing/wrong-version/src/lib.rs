//! Test fixture: a minimal provider built against `blockferry:uploader@0.2.0`
//! (the copy of the contract in this crate's `wit/`), which a host that speaks
//! `0.1.x` must refuse to load.

wit_bindgen::generate!({
    path: "wit",
    world: "provider",
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
