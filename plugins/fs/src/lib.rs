//! `fs`: a blockferry storage provider whose bucket is a local directory.
//!
//! The host preopens the bucket's directory (normally at `/bucket`) and passes
//! its guest path as the `root` setting; everything here is plain `std::fs`
//! under WASI. See README.md for the layout on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use blockferry_guest::{BlockBody, BlockInfo, Bucket, Guest, GuestBucket, Level, Outcome, RemoteObject, UploadError};

/// Bytes asked of the host per `block-body.read` call.
const CHUNK: u32 = 1 << 20;
/// Directory under the root that holds the provider's own files; no key may start with it.
const STATE_DIR: &str = ".blockferry";

/// The component: its only export is the `bucket` resource.
struct Component;

impl Guest for Component {
    type Bucket = FsBucket;
}

/// An opened bucket: a directory reachable at `root` inside the guest.
struct FsBucket {
    root: PathBuf,
}

impl GuestBucket for FsBucket {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        let root = settings.iter().find(|(key, _)| key == "root").map_or("", |(_, value)| value.as_str());
        if root.is_empty() {
            return Err("setting `root` is missing or empty: set `root` to the guest path of \
                        the bucket's directory (the host preopens it at `/bucket`, so `root = \"/bucket\"`)"
                .into());
        }
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => Ok(Bucket::new(FsBucket { root: root.into() })),
            Ok(_) => Err(format!(
                "setting `root` = {root:?} is not a directory: point it at the preopened bucket directory (normally `/bucket`)"
            )),
            Err(e) => Err(format!(
                "setting `root` = {root:?} cannot be opened ({e}): point it at the preopened bucket directory (normally `/bucket`)"
            )),
        }
    }

    fn provider() -> String {
        "fs".into()
    }

    fn put_block(&self, block: BlockInfo, body: &BlockBody) -> Result<Outcome, UploadError> {
        check_key(&block.key)?;
        let key = block.key.as_str();
        let fail = |op: &'static str| move |e| io_error(op, key, e);
        let (mut file, tmp) = self.temp_file(block.number).map_err(fail("create temp file"))?;
        let (size, md5) = copy_body(body, &mut file, key)?;
        if size != block.size || md5[..] != block.md5[..] {
            return Err(UploadError::Permanent(format!(
                "put-block `{key}`: the host's body doesn't match its MD5 and size: block says {} bytes with MD5 {}, \
                 the body read was {size} bytes with MD5 {}",
                block.size,
                hex(&block.md5),
                hex(&md5)
            )));
        }
        file.sync_all().map_err(fail("fsync temp file"))?;
        drop(file);

        let target = self.root.join(key);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(fail("create parent directories"))?;
        }
        match fs::hard_link(&tmp.0, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return match self.stat(block.key.clone())? {
                    Some(there) if there.md5.as_deref() == Some(&block.md5[..]) => Ok(Outcome::AlreadyPresent),
                    Some(there) => Err(UploadError::HashMismatch(there)),
                    None => Err(UploadError::Transient(format!(
                        "put-block `{key}`: an object existed when linking but vanished before it could be checked"
                    ))),
                };
            }
            Err(e) => return Err(io_error("link object", key, e)),
        }
        // Best effort: make the new directory entry durable.
        if let Some(parent) = target.parent() {
            let _ = File::open(parent).and_then(|dir| dir.sync_all());
        }
        if let Err(e) = self.write_meta(key, size, &md5) {
            blockferry_guest::log(
                Level::Warn,
                &format!("put-block `{key}`: stored, but writing its metadata failed ({e}); stat will hash the object"),
            );
        }
        blockferry_guest::log(
            Level::Debug,
            &format!("put-block `{key}`: uploaded {size} bytes to {}", target.display()),
        );
        Ok(Outcome::Uploaded)
    }

    fn stat(&self, key: String) -> Result<Option<RemoteObject>, UploadError> {
        check_key(&key)?;
        let path = self.root.join(&key);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("stat", &key, e)),
        };
        if !meta.is_file() {
            return Err(UploadError::Permanent(format!("stat `{key}`: {} is not a regular file", path.display())));
        }
        let size = meta.len();
        let md5 = match self.read_meta(&key) {
            Some((md5, stored_size)) if stored_size == size => md5,
            _ => hash_file(&path).map_err(|e| io_error("hash object", &key, e))?,
        };
        Ok(Some(RemoteObject { size, md5: Some(md5.to_vec()), etag: None }))
    }
}

impl FsBucket {
    /// Creates a new, uniquely named temp file under `.blockferry/tmp/`.
    fn temp_file(&self, number: u64) -> io::Result<(File, TempPath)> {
        let dir = self.root.join(STATE_DIR).join("tmp");
        fs::create_dir_all(&dir)?;
        loop {
            let random = wasip2::random::random::get_random_u64();
            let path = dir.join(format!("{number}-{random:016x}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, TempPath(path))),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Path of the metadata file of `key`.
    fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join(STATE_DIR).join("meta").join(format!("{key}.json"))
    }

    /// Records the content MD5 and size of `key`, atomically (temp file + rename).
    fn write_meta(&self, key: &str, size: u64, md5: &[u8]) -> io::Result<()> {
        let path = self.meta_path(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let (mut file, tmp) = self.temp_file(0)?;
        writeln!(file, "{{\"md5\":\"{}\",\"size\":{size}}}", hex(md5))?;
        file.sync_all()?;
        fs::rename(&tmp.0, &path)
    }

    /// The MD5 and size recorded for `key`, if a readable metadata file exists.
    fn read_meta(&self, key: &str) -> Option<([u8; 16], u64)> {
        parse_meta(&fs::read_to_string(self.meta_path(key)).ok()?)
    }
}

/// A temp file that is removed when dropped (after a link or rename it is just one more name).
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Copies the body to `file` in `CHUNK`-sized reads; returns its size and MD5.
fn copy_body(body: &BlockBody, file: &mut File, key: &str) -> Result<(u64, [u8; 16]), UploadError> {
    let mut md5 = Md5::new();
    let mut offset = 0u64;
    loop {
        let chunk = body.read(offset, CHUNK).map_err(|e| {
            UploadError::Transient(format!("put-block `{key}`: reading the body at offset {offset}: {e}"))
        })?;
        md5.update(&chunk);
        file.write_all(&chunk).map_err(|e| io_error("write temp file", key, e))?;
        offset += chunk.len() as u64;
        if chunk.len() < CHUNK as usize {
            return Ok((offset, md5.finalize().into()));
        }
    }
}

/// MD5 of a file's content.
fn hash_file(path: &Path) -> io::Result<[u8; 16]> {
    let mut md5 = Md5::new();
    io::copy(&mut BufReader::with_capacity(CHUNK as usize, File::open(path)?), &mut md5)?;
    Ok(md5.finalize().into())
}

/// Rejects keys that could escape the root, alias another key, or touch the provider's own files.
fn check_key(key: &str) -> Result<(), UploadError> {
    let bad_segment = key.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if key.starts_with('/') || key.starts_with(STATE_DIR) || key.contains('\0') || bad_segment {
        return Err(UploadError::Permanent(format!(
            "invalid key {key:?}: keys must be relative, without empty, `.` or `..` segments or NUL, \
             and must not start with `{STATE_DIR}`; fix the bucket's key template"
        )));
    }
    Ok(())
}

/// Maps an I/O error: permission problems need an operator, anything else may pass.
fn io_error(op: &str, key: &str, e: io::Error) -> UploadError {
    let message = format!("{op} for key `{key}`: {e}");
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => UploadError::Permanent(message),
        _ => UploadError::Transient(message),
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the metadata file written by `write_meta`: `{"md5":"<hex>","size":<n>}`.
fn parse_meta(text: &str) -> Option<([u8; 16], u64)> {
    let fields = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (mut md5, mut size) = (None, None);
    for field in fields.split(',') {
        let (name, value) = field.split_once(':')?;
        let value = value.trim();
        match name.trim() {
            "\"md5\"" => {
                let digits = value.strip_prefix('"')?.strip_suffix('"')?;
                let mut out = [0u8; 16];
                if digits.len() != 32 {
                    return None;
                }
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                md5 = Some(out);
            }
            "\"size\"" => size = value.parse().ok(),
            _ => {}
        }
    }
    Some((md5?, size?))
}

blockferry_guest::export_reading_provider!(Component);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in ["a", "blocks/0001.blk", "x/.hidden", "a.blockferry"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["a\0b", "", "/abs", "a//b", "a/", "../x", "a/../b", "./a", ".blockferry/meta/x", ".blockferry"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_round_trip() {
        let md5 = [0xab; 16];
        let text = format!("{{\"md5\":\"{}\",\"size\":42}}\n", hex(&md5));
        assert_eq!(parse_meta(&text), Some((md5, 42)));
        assert_eq!(parse_meta("{\"size\":42}"), None);
        assert_eq!(parse_meta("garbage"), None);
    }
}
