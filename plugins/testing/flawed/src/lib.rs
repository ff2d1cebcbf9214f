//! `flawed`: a provider whose bucket is a directory (like `fs`, without
//! `fs`'s metadata or reader), with one flaw chosen by the `flaw` setting, so
//! that the conformance suite (`blockferry plugin test`) can be shown to
//! catch exactly what breaks the contract:
//!
//! | `flaw` | behaviour | checks it must fail |
//! |---|---|---|
//! | (unset) | conditional create, the body checked against the host's MD5 | none |
//! | `overwrite` | replaces a different object instead of answering `hash-mismatch` | `upload-different`, `concurrent-create` |
//! | `ignore-md5` | stores the body without checking it against the host's MD5 | `md5-enforced` |
//!
//! Built against the plain `provider` world (uploader only).

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use blockferry_guest::{BlockBody, BlockInfo, Confirmation, Outcome, RemoteObject, UploadError};

/// The `provider` world's `bucket-uploader` export; everything it imports is
/// `blockferry_guest`'s.
#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "provider",
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "blockferry:uploader/types@0.1.3": blockferry_guest::bindings::blockferry::uploader::types,
            "blockferry:uploader/host@0.1.3": blockferry_guest::bindings::blockferry::uploader::host,
        },
    });
}

use bindings::exports::blockferry::uploader::bucket_uploader::{Bucket, Guest, GuestBucket};

/// Bytes asked of the host per `block-body.read` call.
const CHUNK: u32 = 1 << 20;

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = Flawed;
}

/// The flaw this bucket has.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    Overwrite,
    IgnoreMd5,
}

/// A bucket in the directory `root`.
struct Flawed {
    root: PathBuf,
    flaw: Flaw,
}

impl GuestBucket for Flawed {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        let get = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let root = get("root").ok_or("setting `root` is missing: give the bucket a `directory`")?;
        let flaw = match get("flaw") {
            None => Flaw::None,
            Some("overwrite") => Flaw::Overwrite,
            Some("ignore-md5") => Flaw::IgnoreMd5,
            Some(other) => return Err(format!("setting `flaw` = {other:?}: use `overwrite` or `ignore-md5`")),
        };
        Ok(Bucket::new(Flawed { root: root.into(), flaw }))
    }

    fn provider() -> String {
        "flawed".into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        let key = block.key.as_str();
        let io = |e: std::io::Error| UploadError::Transient(format!("put-block `{key}`: {e}"));
        let target = self.root.join(key);
        let tmp = self.root.join(format!(".tmp-{}-{}", block.number, unique()));
        let mut file = File::create(&tmp).map_err(io)?;
        let mut md5 = Md5::new();
        let mut offset = 0u64;
        loop {
            let chunk =
                body.read(offset, CHUNK).map_err(|e| UploadError::Transient(format!("reading the body: {e}")))?;
            md5.update(&chunk);
            file.write_all(&chunk).map_err(io)?;
            offset += chunk.len() as u64;
            if chunk.len() < CHUNK as usize {
                break;
            }
        }
        file.sync_all().map_err(io)?;
        drop(file);
        let md5: [u8; 16] = md5.finalize().into();
        if self.flaw != Flaw::IgnoreMd5 && md5[..] != block.md5[..] {
            let _ = fs::remove_file(&tmp);
            return Err(UploadError::Permanent(format!("put-block `{key}`: the body does not match the host's MD5")));
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let outcome = if self.flaw == Flaw::Overwrite {
            match stat(&target).map_err(io)? {
                Some(there) if there.md5.as_deref() == Some(&md5[..]) => Ok(Outcome::AlreadyPresent),
                // The flaw: whatever is there is replaced.
                _ => fs::rename(&tmp, &target).map(|()| Outcome::Uploaded).map_err(io),
            }
        } else {
            match fs::hard_link(&tmp, &target) {
                Ok(()) => Ok(Outcome::Uploaded),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => match stat(&target).map_err(io)? {
                    Some(there) if there.md5.as_deref() == Some(&md5[..]) => Ok(Outcome::AlreadyPresent),
                    Some(there) => Err(UploadError::HashMismatch(there)),
                    None => Err(UploadError::Transient(format!("put-block `{key}`: the object vanished"))),
                },
                Err(e) => Err(io(e)),
            }
        };
        let _ = fs::remove_file(&tmp);
        if outcome.is_ok() {
            // It hashed the bytes it wrote (and, for an existing object, read it back).
            blockferry_guest::object_confirmed(key, Confirmation::ServerDigest);
        }
        outcome
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        stat(&self.root.join(&key)).map_err(|e| UploadError::Transient(format!("stat `{key}`: {e}")))
    }
}

/// Size and content MD5 of the file at `path`, if there is one.
fn stat(path: &Path) -> std::io::Result<Option<RemoteObject>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(RemoteObject { size: bytes.len() as u64, md5: Some(Md5::digest(&bytes).to_vec()), etag: None }))
}

/// A number that differs between calls (concurrent uploads of one block use different temp files).
fn unique() -> u64 {
    wasip2::random::random::get_random_u64()
}

bindings::export!(Component with_types_in bindings);
