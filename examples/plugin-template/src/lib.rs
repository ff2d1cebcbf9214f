//! A template blockferry storage provider.
//!
//! It keeps objects in an in-memory map of key -> (size, MD5) held by the
//! `bucket` instance. That makes it a complete, working provider to start
//! from, but **not** a useful one: nothing survives the instance, and the host
//! opens and drops instances as it likes. Replace the map with calls to your
//! storage service (usually through `wasip2::http::outgoing_handler`).

use std::cell::RefCell;
use std::collections::HashMap;

use md5::{Digest, Md5};

wit_bindgen::generate!({
    // Point this at your copy of blockferry's `wit/` directory (the contract
    // `uploader.wit` plus its `deps/`).
    path: "../../wit",
    world: "provider",
    // Use the `wasip2` crate's types for `wasi:io`, so `block-body.stream`
    // returns a `wasip2::io::streams::InputStream` that can be spliced into a
    // `wasi:http` request body.
    with: {
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
    },
});

use blockferry::uploader::host::{self, BlockBody};
use blockferry::uploader::types::{BlockInfo, Level, Outcome, RemoteObject, UploadError};
use exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// Bytes read per `block-body.read` call: bounded, well under the 16 MiB limit.
const CHUNK: u32 = 1 << 20;

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = MemoryBucket;
}

/// One opened bucket: here, a map from key to (size, MD5) of what was "stored".
struct MemoryBucket {
    objects: RefCell<HashMap<String, (u64, Vec<u8>)>>,
}

impl GuestBucket for MemoryBucket {
    /// Validates the settings; this template needs none and ignores them all.
    fn open(_settings: Vec<(String, String)>) -> Result<Bucket, String> {
        // A real provider reads its keys here, e.g.:
        //   let endpoint = setting(&settings, "endpoint")
        //       .ok_or("setting `endpoint` is missing: set it to the service's URL")?;
        Ok(Bucket::new(MemoryBucket { objects: RefCell::default() }))
    }

    fn provider() -> String {
        "template".into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        // A real provider sends a conditional create (S3 `If-None-Match: *`,
        // GCS `ifGenerationMatch=0`) and, when it is refused, stats the key.
        if let Some(there) = self.stat(block.key.clone())? {
            return if there.md5.as_deref() == Some(&block.md5[..]) {
                Ok(Outcome::AlreadyPresent)
            } else {
                Err(UploadError::HashMismatch(there))
            };
        }
        let (size, md5) = hash_body(body, &block.key)?;
        if size != block.size || md5 != block.md5 {
            return Err(UploadError::Permanent(format!(
                "put-block `{}`: the host's body doesn't match its size and MD5",
                block.key
            )));
        }
        self.objects.borrow_mut().insert(block.key.clone(), (size, md5));
        host::log(Level::Debug, &format!("put-block `{}`: stored {size} bytes in memory", block.key));
        Ok(Outcome::Uploaded)
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        Ok(self.objects.borrow().get(&key).map(|(size, md5)| RemoteObject {
            size: *size,
            md5: Some(md5.clone()),
            etag: None,
        }))
    }
}

/// Reads the body in `CHUNK`-sized parts; returns its size and MD5.
fn hash_body(body: &BlockBody, key: &str) -> Result<(u64, Vec<u8>), UploadError> {
    let mut md5 = Md5::new();
    let mut offset = 0u64;
    loop {
        let chunk = body
            .read(offset, CHUNK)
            .map_err(|e| UploadError::Transient(format!("put-block `{key}`: reading the body at {offset}: {e}")))?;
        if chunk.is_empty() {
            return Ok((offset, md5.finalize().to_vec()));
        }
        md5.update(&chunk);
        offset += chunk.len() as u64;
    }
}

export!(Component);
