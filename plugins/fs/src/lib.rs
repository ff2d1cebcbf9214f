//! `fs`: a blockferry storage provider whose bucket is a local directory.
//!
//! The host preopens the bucket's directory (normally at `/bucket`) and passes
//! its guest path as the `root` setting; everything here is plain `std::fs`
//! under WASI. See README.md for the layout on disk.
//!
//! The reader: `get` copies the file into the host's sink; `list` walks the
//! directory tree in key order (skipping the provider's own `.blockferry`
//! directory); `health` checks the root and writes and removes a probe file;
//! the incomplete uploads are the temp files under `.blockferry/tmp/`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use blockferry_guest::{
    BlockBody, BlockInfo, Bucket, Confirmation, Guest, GuestBucket, Level, Outcome, RemoteObject, UploadError,
};
use blockferry_guest::{BlockSink, GuestReader, IncompleteUpload, ListedObject, ObjectPage, Reader, ReaderGuest};

/// Bytes asked of the host per `block-body.read` call.
const CHUNK: u32 = 1 << 20;
/// Directory under the root that holds the provider's own files; no key may start with it.
const STATE_DIR: &str = ".blockferry";

/// The component: it exports the `bucket` and `reader` resources.
struct Component;

impl Guest for Component {
    type Bucket = FsBucket;
}

impl ReaderGuest for Component {
    type Reader = FsBucket;
}

/// An opened bucket: a directory reachable at `root` inside the guest.
struct FsBucket {
    root: PathBuf,
    /// Directories under the root whose own entry this instance has made
    /// durable (by fsyncing their parent), so each is fsynced once, not per upload.
    durable_dirs: RefCell<HashSet<PathBuf>>,
}

impl GuestBucket for FsBucket {
    fn open(settings: Vec<(String, String)>) -> Result<Bucket, String> {
        Ok(Bucket::new(FsBucket::new(&settings)?))
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

        // The object is durable once its data (above), its directory entry
        // and the entries of every directory above it up to the root are:
        // only then is it reported stored.
        let target = self.root.join(key);
        let parent = target.parent().unwrap_or(&self.root);
        self.create_dirs_durably(parent).map_err(fail("create parent directories durably"))?;
        match fs::hard_link(&tmp.0, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return match self.stat(block.key.clone())? {
                    Some(there) if there.md5.as_deref() == Some(&block.md5[..]) => {
                        // `stat` may answer from this provider's own metadata:
                        // read the file back to confirm.
                        let read = hash_file(&target).map_err(|e| io_error("hash object", key, e))?;
                        if read[..] != block.md5[..] {
                            return Err(UploadError::HashMismatch(RemoteObject {
                                size: there.size,
                                md5: Some(read.to_vec()),
                                etag: None,
                            }));
                        }
                        // An earlier attempt may have linked it and stopped
                        // before making it durable: make sure now.
                        File::open(&target).and_then(|f| f.sync_all()).map_err(fail("fsync object"))?;
                        sync_dir(parent).map_err(fail("fsync directory"))?;
                        blockferry_guest::object_confirmed(key, Confirmation::ReadBack);
                        Ok(Outcome::AlreadyPresent)
                    }
                    Some(there) => Err(UploadError::HashMismatch(there)),
                    None => Err(UploadError::Transient(format!(
                        "put-block `{key}`: an object existed when linking but vanished before it could be checked"
                    ))),
                };
            }
            Err(e) => return Err(io_error("link object", key, e)),
        }
        sync_dir(parent).map_err(fail("fsync directory"))?;
        if let Err(e) = self.write_meta(key, size, &md5) {
            blockferry_guest::log(
                Level::Warn,
                &format!("put-block `{key}`: stored, but writing its metadata failed ({e}); stat will hash the object"),
            );
        }
        // The MD5 was computed from exactly the bytes handed to the file
        // system while writing them (no transport in between), and the file
        // was fsynced: the service's own digest of what it stored.
        blockferry_guest::object_confirmed(key, Confirmation::ServerDigest);
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

impl GuestReader for FsBucket {
    fn open(settings: Vec<(String, String)>) -> Result<Reader, String> {
        Ok(Reader::new(FsBucket::new(&settings)?))
    }

    /// Copies the file into the sink in `CHUNK`-sized writes; `none` when no
    /// file (or a directory) is at the key. The MD5 is the one recorded at
    /// upload (none if it was not recorded: the host hashes what it gets).
    fn get(&self, key: String, sink: &BlockSink) -> Result<Option<RemoteObject>, UploadError> {
        check_key(&key)?;
        let mut file = match File::open(self.root.join(&key)) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open object", &key, e)),
        };
        if !file.metadata().map_err(|e| io_error("stat object", &key, e))?.is_file() {
            return Ok(None);
        }
        let mut buffer = vec![0u8; CHUNK as usize];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("read object", &key, e)),
            };
            sink.write(&buffer[..n]).map_err(|e| {
                UploadError::Transient(format!("get `{key}`: the host's sink refused more after {size} bytes: {e}"))
            })?;
            size += n as u64;
        }
        let md5 = self.read_meta(&key).filter(|(_, recorded)| *recorded == size).map(|(md5, _)| md5.to_vec());
        Ok(Some(RemoteObject { size, md5, etag: None }))
    }

    /// Walks the tree in key order, pruning directories that hold no key of
    /// the page; `next` is the last key when more follow.
    fn list(&self, prefix: String, after: Option<String>, limit: u32) -> Result<ObjectPage, UploadError> {
        let limit = limit.clamp(1, 1000) as usize;
        let mut objects = Vec::new();
        let filter = KeyFilter { prefix: &prefix, after: after.as_deref(), want: limit + 1 };
        filter.walk(&self.root, "", &mut objects).map_err(|e| io_error("list", &prefix, e))?;
        let more = objects.len() > limit;
        objects.truncate(limit);
        let next = if more { objects.last().map(|o| o.key.clone()) } else { None };
        Ok(ObjectPage { objects, next })
    }

    /// The root is a listable directory, and a probe file can be written to
    /// and removed from `.blockferry/tmp/`.
    fn health(&self) -> Result<(), UploadError> {
        let root = self.root.display();
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(UploadError::Permanent(format!("health: root {root} is not a directory"))),
            Err(e) => {
                return Err(UploadError::Permanent(format!(
                    "health: root {root} cannot be read ({e}): check the bucket's directory on the host"
                )));
            }
        }
        let probe = || -> io::Result<()> {
            fs::read_dir(&self.root)?;
            let (mut file, tmp) = self.temp_file(0)?;
            file.write_all(b"probe")?;
            drop(file);
            fs::remove_file(&tmp.0)
        };
        probe().map_err(|e| {
            io_failure(format!("health: cannot list {root} or write and remove a file under it ({e})"), &e)
        })
    }

    /// The temp files under `.blockferry/tmp/` (oldest first, at most 1000),
    /// for every `prefix`: a temp file does not say which key it was for, so
    /// its name is both its key and its id.
    fn incomplete_uploads(&self, _prefix: String) -> Result<Vec<IncompleteUpload>, UploadError> {
        let dir = self.temp_dir();
        let failed = |e: io::Error| io_failure(format!("incomplete-uploads: listing {}: {e}", dir.display()), &e);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(failed(e)),
        };
        let mut uploads = Vec::new();
        for entry in entries {
            let entry = entry.map_err(failed)?;
            let Some(name) = entry.file_name().to_str().filter(|name| is_temp_name(name)).map(str::to_string) else {
                continue;
            };
            let modified = entry.metadata().and_then(|meta| meta.modified()).ok();
            let started_ms = modified
                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |since| since.as_millis() as u64);
            uploads.push(IncompleteUpload { key: name.clone(), id: name, started_ms });
        }
        uploads.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        uploads.truncate(1000);
        Ok(uploads)
    }

    /// Removes the temp file named by the upload's id (one already gone is
    /// fine; an id that is not a temp file name is ignored, with a warning).
    fn abort_upload(&self, upload: IncompleteUpload) -> Result<(), UploadError> {
        if !is_temp_name(&upload.id) {
            blockferry_guest::log(
                Level::Warn,
                &format!("abort-upload: {:?} is not the name of one of this provider's temp files", upload.id),
            );
            return Ok(());
        }
        match fs::remove_file(self.temp_dir().join(&upload.id)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error("remove temp file", &upload.id, e)),
            _ => Ok(()),
        }
    }
}

/// Which keys a listing wants.
struct KeyFilter<'a> {
    /// Keys start with this.
    prefix: &'a str,
    /// Keys sort after this.
    after: Option<&'a str>,
    /// Stop once this many are found.
    want: usize,
}

impl KeyFilter<'_> {
    /// Appends to `out`, in key order, the wanted keys under `dir`, whose
    /// keys start with `base` (empty, or ending in `/`).
    fn walk(&self, dir: &Path, base: &str, out: &mut Vec<ListedObject>) -> io::Result<()> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if base.is_empty() && name.starts_with(STATE_DIR) {
                continue;
            }
            let file_type = entry.file_type()?;
            // A directory sorts as `name/`, the prefix of every key under it.
            if file_type.is_dir() {
                entries.push((format!("{base}{name}/"), None));
            } else if file_type.is_file() {
                entries.push((format!("{base}{name}"), Some(entry)));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, file) in entries {
            if out.len() >= self.want {
                break;
            }
            match file {
                // Every key under `key/` starts with it: skip the directory when none can match.
                None if (key.starts_with(self.prefix) || self.prefix.starts_with(&key))
                    && self.after.is_none_or(|after| key.as_str() > after || after.starts_with(&key)) =>
                {
                    self.walk(&dir.join(&key[base.len()..key.len() - 1]), &key, out)?;
                }
                Some(file)
                    if key.starts_with(self.prefix)
                        && self.after.is_none_or(|after| key.as_str() > after)
                        && check_key(&key).is_ok() =>
                {
                    out.push(ListedObject { size: file.metadata()?.len(), key });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl FsBucket {
    /// Opens the bucket `settings` describe (for `bucket.open` and `reader.open`).
    fn new(settings: &[(String, String)]) -> Result<Self, String> {
        let root = settings.iter().find(|(key, _)| key == "root").map_or("", |(_, value)| value.as_str());
        if root.is_empty() {
            return Err("setting `root` is missing or empty: set `root` to the guest path of \
                        the bucket's directory (the host preopens it at `/bucket`, so `root = \"/bucket\"`)"
                .into());
        }
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => Ok(FsBucket { root: root.into(), durable_dirs: RefCell::default() }),
            Ok(_) => Err(format!(
                "setting `root` = {root:?} is not a directory: point it at the preopened bucket directory (normally `/bucket`)"
            )),
            Err(e) => Err(format!(
                "setting `root` = {root:?} cannot be opened ({e}): point it at the preopened bucket directory (normally `/bucket`)"
            )),
        }
    }

    /// The directory of the temp files: `.blockferry/tmp/`.
    fn temp_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("tmp")
    }

    /// Creates `dir` (under the root) and its missing ancestors, and makes
    /// the entry of every directory from `dir` up to the root durable by
    /// fsyncing its parent — always for a directory created now, once per
    /// instance for one that existed (an earlier process may have created it
    /// and stopped before the fsync). A failed fsync is an error.
    fn create_dirs_durably(&self, dir: &Path) -> io::Result<()> {
        let mut durable = self.durable_dirs.borrow_mut();
        let mut at = dir;
        while at != self.root && !at.exists() {
            durable.remove(at);
            at = at.parent().unwrap_or(&self.root);
        }
        fs::create_dir_all(dir)?;
        let mut at = dir;
        while at != self.root && at.starts_with(&self.root) {
            let parent = at.parent().unwrap_or(&self.root);
            if !durable.contains(at) {
                sync_dir(parent)?;
                durable.insert(at.to_path_buf());
            }
            at = parent;
        }
        Ok(())
    }

    /// Creates a new, uniquely named temp file under `.blockferry/tmp/`.
    fn temp_file(&self, number: u64) -> io::Result<(File, TempPath)> {
        let dir = self.temp_dir();
        self.create_dirs_durably(&dir)?;
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

    /// Records the content MD5 and size of `key`, atomically (temp file +
    /// rename) but not fsynced: the record only saves `stat` a read of the
    /// object, and one a power cut loses or leaves empty does not parse, so
    /// `stat` hashes the object instead. (A record of one key is written once:
    /// objects are never replaced.)
    fn write_meta(&self, key: &str, size: u64, md5: &[u8]) -> io::Result<()> {
        let path = self.meta_path(key);
        if let Some(parent) = path.parent() {
            self.create_dirs_durably(parent)?;
        }
        let (mut file, tmp) = self.temp_file(0)?;
        writeln!(file, "{{\"md5\":\"{}\",\"size\":{size}}}", hex(md5))?;
        fs::rename(&tmp.0, &path)
    }

    /// The MD5 and size recorded for `key`, if a readable metadata file exists.
    fn read_meta(&self, key: &str) -> Option<([u8; 16], u64)> {
        parse_meta(&fs::read_to_string(self.meta_path(key)).ok()?)
    }
}

/// fsyncs the directory `dir`, making the entries made in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

/// Whether `name` is one `temp_file` makes: `<number>-<16 hex digits>.tmp`.
fn is_temp_name(name: &str) -> bool {
    name.strip_suffix(".tmp").and_then(|stem| stem.split_once('-')).is_some_and(|(number, random)| {
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 16
            && random.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Maps an I/O error: permission problems need an operator, anything else may pass.
fn io_error(op: &str, key: &str, e: io::Error) -> UploadError {
    io_failure(format!("{op} for key `{key}`: {e}"), &e)
}

/// An I/O failure described by `message`, classified by the error's kind as [`io_error`] says.
fn io_failure(message: String, e: &io::Error) -> UploadError {
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
    fn temp_names() {
        assert!(is_temp_name("12-00ab00ab00ab00ab.tmp"));
        for bad in
            ["12-00ab00ab00ab00ab", "-00ab00ab00ab00ab.tmp", "12-00ab.tmp", "../12-00ab00ab00ab00ab.tmp", "x.tmp"]
        {
            assert!(!is_temp_name(bad), "{bad}");
        }
    }

    #[test]
    fn listings_walk_the_tree_in_key_order() {
        let root = std::env::temp_dir().join(format!("blockferry-fs-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (path, size) in
            [("a.b", 1), ("a/1", 2), ("a/2/x", 3), ("ab", 4), ("b/9", 5), (".blockferry/meta/a.json", 6)]
        {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, vec![0u8; size]).unwrap();
        }
        let list = |prefix: &str, after: Option<&str>, want: usize| {
            let mut out = Vec::new();
            KeyFilter { prefix, after, want }.walk(&root, "", &mut out).unwrap();
            out.into_iter().map(|o| format!("{}:{}", o.key, o.size)).collect::<Vec<_>>()
        };
        assert_eq!(list("", None, 100), ["a.b:1", "a/1:2", "a/2/x:3", "ab:4", "b/9:5"]);
        assert_eq!(list("a/", None, 100), ["a/1:2", "a/2/x:3"]);
        assert_eq!(list("", Some("a/1"), 2), ["a/2/x:3", "ab:4"]);
        assert_eq!(list("a", Some("a/2/x"), 100), ["ab:4"]);
        assert_eq!(list("c", None, 100), Vec::<String>::new());
        fs::remove_dir_all(&root).unwrap();
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
