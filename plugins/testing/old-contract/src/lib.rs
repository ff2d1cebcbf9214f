//! Test fixture: a provider built against `blockferry:uploader@0.1.0` (the
//! frozen copy of the first contract in this crate's `wit/`), before the
//! `bucket-reader` existed. A host speaking 0.1.x must keep running it for
//! uploads and say which features it cannot offer.
//!
//! It writes each block to `root/key` in the preopened bucket directory
//! (first writer wins; no MD5 kept).

wit_bindgen::generate!({
    // `wasi:io` from the repository's own `wit/deps` (vendored once), then
    // this fixture's contract.
    path: ["../../../wit/deps/io", "wit"],
    world: "blockferry:uploader/provider",
    generate_all,
});

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use blockferry::uploader::host::BlockBody;
use blockferry::uploader::types::{BlockInfo, Outcome, RemoteObject, UploadError};
use exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = OldContract;
}

/// A bucket that is a directory.
struct OldContract {
    root: PathBuf,
}

impl GuestBucket for OldContract {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        let root = settings.iter().find(|(k, _)| k == "root").map(|(_, v)| v.clone());
        let root = root.ok_or("setting `root` is missing: give the bucket a `directory`")?;
        Ok(Bucket::new(OldContract { root: root.into() }))
    }

    fn provider() -> String {
        "old-contract".into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        let fail = |e: std::io::Error| UploadError::Transient(format!("put-block `{}`: {e}", block.key));
        let path = self.root.join(&block.key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(fail)?;
        }
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Outcome::AlreadyPresent),
            Err(e) => return Err(fail(e)),
        };
        let mut offset = 0;
        while offset < block.size {
            let chunk = body.read(offset, 1 << 20).map_err(UploadError::Transient)?;
            file.write_all(&chunk).map_err(fail)?;
            offset += chunk.len() as u64;
        }
        Ok(Outcome::Uploaded)
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        match fs::metadata(self.root.join(&key)) {
            Ok(meta) => Ok(Some(RemoteObject { size: meta.len(), md5: None, etag: None })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UploadError::Transient(format!("stat `{key}`: {e}"))),
        }
    }
}

export!(Component);
