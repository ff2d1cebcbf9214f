//! The block store itself: block files and their `.meta` files on disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest, Md5};

use super::{BLOCK_EXTS, BlockMeta, BucketStatus, Compression, md5_base64, strip_block_ext};
use crate::sync::Locked;

/// Digits in a block file name.
const DIGITS: usize = 36;
/// Subdirectory of temporary files (same filesystem, so renames are atomic).
const TMP_DIR: &str = ".tmp";
/// Lock stripes serialising `.meta` updates and reads of the same block.
const STRIPES: usize = 64;
/// Largest `.meta` an outcome is written into in place: one page, which
/// the kernel copies whole or not at all (a kill cannot stop it halfway).
const IN_PLACE_MAX: usize = 4096;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a file of the store.
    #[error("block store: {op} {path}: {error}{}", fix(error))]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error (a full disk shows here as "No space left on device").
        error: io::Error,
    },
    /// Block `number` is already stored with different content.
    #[error(
        "block {number} is already stored with MD5 {stored} but was received again with MD5 {received}; \
         the stored copy is kept"
    )]
    Conflict {
        /// Block number.
        number: u64,
        /// MD5 (base64) of the stored block.
        stored: String,
        /// MD5 (base64) of the block received now.
        received: String,
    },
    /// Block `number` is not in the store.
    #[error("block {0} is not in the store")]
    NotFound(u64),
    /// Block `number`'s file is in the store without its `.meta`, so its
    /// content cannot be compared; it is kept.
    #[error(
        "block {0}'s file is in the store without its .meta, so it is kept as it is; \
         `blockferry run` on this store rebuilds the .meta at start-up"
    )]
    Unindexed(u64),
    /// A `.meta` file is not valid.
    #[error("block store: {path} is corrupt: {detail}")]
    CorruptMeta {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
}

/// What the operator can do about an I/O error of the store.
fn fix(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; free space on the file system of `store.dir` (blocks stay until safe in every bucket: check that uploads succeed)"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; make `store.dir` writable by blockferry's user"
        }
        _ => "",
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| StoreError::Io { op, path: path.to_path_buf(), error }
}

/// What start-up recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Blocks in the store.
    pub blocks: u64,
    /// `.meta` files rebuilt from their block file (missing or corrupt).
    pub rebuilt_meta: u64,
    /// Leftover temporary files deleted.
    pub removed_tmp: u64,
    /// `.meta` files without a block file deleted.
    pub removed_orphan_meta: u64,
}

/// What the start-up check of every `.meta` ([`BlockStore::check_metas`]) found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Blocks checked.
    pub blocks: u64,
    /// `.meta` files rebuilt from their block file (corrupt, or naming another file).
    pub rebuilt_meta: u64,
}

/// The block store in one directory.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
    compression: Compression,
    stripes: Vec<Mutex<()>>,
    tmp_counter: AtomicU64,
    stats: StoreStats,
}

/// Counters of the block files written.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Blocks written (not counting a block received again).
    pub blocks_written: AtomicU64,
    /// Bytes of block files written.
    pub bytes_written: AtomicU64,
    /// Time to write one block durably.
    pub write_seconds: crate::telemetry::Histogram,
}

impl BlockStore {
    /// Open (creating if needed) the store in `dir`. Every directory it
    /// creates is made durable (see [`create_dir_all_durably`]), and so is the
    /// store directory's own entry, in case an earlier start created it and
    /// was killed before making it durable.
    pub fn open(dir: impl Into<PathBuf>, compression: Compression) -> Result<Self, StoreError> {
        let dir = dir.into();
        create_dir_all_durably(&dir.join(TMP_DIR)).map_err(io_err("creating", &dir))?;
        sync_dir(parent_of(&dir))?;
        Ok(Self {
            dir,
            compression,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_counter: AtomicU64::new(0),
            stats: StoreStats::default(),
        })
    }

    /// Counters of the block files written.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Whether a file can be created (and synced) in the store now.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self.tmp_path("writable-probe");
        let result = write_synced(&probe, b"probe");
        let _ = fs::remove_file(&probe);
        result
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Extension of newly written block files (`.blk`, `.blk.gz` or `.blk.zstd`).
    pub fn ext(&self) -> &'static str {
        self.compression.ext()
    }

    /// Path of block `number`'s `.meta` file.
    pub fn meta_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:0DIGITS$}.meta"))
    }

    /// Whether block `number`'s file (of any extension) is in the store.
    pub fn has_block(&self, number: u64) -> bool {
        BLOCK_EXTS.iter().any(|ext| self.dir.join(format!("{number:0DIGITS$}{ext}")).exists())
    }

    /// Path of the block file described by `meta`.
    pub fn block_path(&self, meta: &BlockMeta) -> PathBuf {
        self.dir.join(&meta.file)
    }

    /// The bytes of block `number` as received (decompressed if stored compressed).
    pub fn read_block(&self, number: u64) -> Result<Vec<u8>, StoreError> {
        let meta = self.meta(number)?;
        let path = self.block_path(&meta);
        let data = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(number),
            _ => StoreError::Io { op: "reading", path: path.clone(), error: e },
        })?;
        let compression = Compression::of_name(&meta.file).unwrap_or_default();
        compression.decode(data).map_err(io_err("decompressing", &path))
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(TMP_DIR).join(format!("{name}.{}.{n}", std::process::id()))
    }

    /// Store block `number` durably and return its metadata, pending in
    /// `buckets`. Receiving the same block again is harmless (the stored
    /// metadata is returned); different bytes for a stored number are refused.
    pub fn write_block(&self, number: u64, bytes: &[u8], buckets: &[String]) -> Result<BlockMeta, StoreError> {
        let started = std::time::Instant::now();
        let encoded = self.compression.encode(bytes);
        let data = &encoded[..];
        let md5 = Md5::digest(data);
        if let Some(existing) = self.stored_as(number, &md5)? {
            return Ok(existing);
        }
        let file = format!("{number:0DIGITS$}{}", self.ext());
        let tmp = self.tmp_path(&file);
        write_synced(&tmp, data).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        let meta = BlockMeta::new(number, file, data.len() as u64, &md5, buckets);
        self.put_in_place(&tmp, meta, started)
    }

    /// The metadata of block `number` when it is stored with MD5 `md5`;
    /// `None` when it is not stored; [`StoreError::Conflict`] when it is
    /// stored with other content.
    /// A corrupt `.meta` (torn by a power cut, not yet rebuilt by the
    /// start-up check) is rebuilt from the block file first: the block file
    /// is never replaced.
    fn stored_as(&self, number: u64, md5: &[u8]) -> Result<Option<BlockMeta>, StoreError> {
        let existing = match self.read_meta(number) {
            Ok(existing) => existing,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(StoreError::CorruptMeta { .. }) => match self.repair_meta(number)? {
                Some(existing) => existing,
                None => return Ok(None),
            },
            Err(e) => return Err(e),
        };
        if existing.md5_bytes() == md5 {
            Ok(Some(existing))
        } else {
            Err(StoreError::Conflict { number, stored: existing.md5, received: md5_base64(md5) })
        }
    }

    /// Rename the synced temporary file `tmp` to `meta.file`, then write
    /// `meta` and sync the directory (the temporary file is deleted if the
    /// rename fails).
    fn put_in_place(&self, tmp: &Path, meta: BlockMeta, started: std::time::Instant) -> Result<BlockMeta, StoreError> {
        let path = self.dir.join(&meta.file);
        fs::rename(tmp, &path).map_err(io_err("renaming into place", &path)).inspect_err(|_| {
            let _ = fs::remove_file(tmp);
        })?;
        // A new block's first `.meta` needs no fsync of its own: the block
        // file is synced and both renames are made durable by the directory
        // sync below, and should a power cut leave the `.meta` empty or
        // torn, start-up recovery rebuilds it from the block file with the
        // same content (pending everywhere; an already-present bucket is
        // found so again by the next upload). One fsync fewer per block.
        self.write_meta_with(&meta, Sync::Rebuildable)?;
        sync_dir(&self.dir)?;
        self.stats.blocks_written.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(meta.size, Ordering::Relaxed);
        self.stats.write_seconds.observe(started.elapsed());
        Ok(meta)
    }

    /// A new temporary file in the store for block `number`, to be filled
    /// by the caller (a block that arrives in parts, as `restore` downloads
    /// it) and then handed to [`adopt_block`](Self::adopt_block). Deleted
    /// when dropped unless adopted.
    pub fn temp_block(&self, number: u64) -> Result<TempBlock, StoreError> {
        let path = self.tmp_path(&format!("{number:0DIGITS$}{}", self.ext()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err("creating", &path))?;
        Ok(TempBlock { number, path, file })
    }

    /// Store the bytes written to `temp` (`size` bytes with MD5 `md5`, as
    /// the caller computed them while writing) as its block, with `buckets`
    /// as its status per bucket: the file is fsynced, renamed into place, its
    /// `.meta` written and the directory fsynced, as [`write_block`](Self::write_block)
    /// does. Returns the metadata and whether this call stored the block:
    /// `false` when the same content was already stored (the temporary file
    /// is deleted). Different content already stored is refused
    /// ([`StoreError::Conflict`]), as is a block file without its `.meta`
    /// ([`StoreError::Unindexed`]); nothing is ever overwritten.
    pub fn adopt_block(
        &self,
        temp: TempBlock,
        size: u64,
        md5: &[u8],
        buckets: BTreeMap<String, BucketStatus>,
    ) -> Result<(BlockMeta, bool), StoreError> {
        let started = std::time::Instant::now();
        let number = temp.number;
        if let Some(existing) = self.stored_as(number, md5)? {
            return Ok((existing, false));
        }
        if self.has_block(number) {
            return Err(StoreError::Unindexed(number));
        }
        temp.file.sync_all().map_err(io_err("syncing", &temp.path))?;
        let file = format!("{number:0DIGITS$}{}", self.ext());
        let mut meta = BlockMeta::new(number, file, size, md5, &[]);
        meta.buckets = buckets;
        let tmp = temp.keep();
        self.put_in_place(&tmp, meta, started).map(|meta| (meta, true))
    }
    /// Block `number`'s metadata, rebuilt from its block file first when the
    /// `.meta` is missing or corrupt (torn by a power cut and not yet reached
    /// by the start-up check, [`check_metas`](Self::check_metas)): what the
    /// running sidecar reads before it acts on a block. [`StoreError::NotFound`]
    /// when the block is not in the store.
    pub fn meta(&self, number: u64) -> Result<BlockMeta, StoreError> {
        match self.read_meta(number) {
            Err(StoreError::CorruptMeta { .. } | StoreError::NotFound(_)) => {
                self.repair_meta(number)?.ok_or(StoreError::NotFound(number))
            }
            other => other,
        }
    }

    /// Block `number`'s metadata as its `.meta` file holds it (a missing or
    /// corrupt one is an error, left as it is: read-only commands use this).
    pub fn read_meta(&self, number: u64) -> Result<BlockMeta, StoreError> {
        let _guard = self.lock(number);
        self.load_meta(number)
    }

    /// The lock serialising the updates and reads of block `number`'s `.meta`.
    fn lock(&self, number: u64) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[(number % STRIPES as u64) as usize].locked()
    }

    /// [`read_meta`](Self::read_meta) for a caller holding the block's lock.
    /// A `.meta` that does not parse is read once more after a moment: an
    /// outcome is written in place ([`record_outcome`](Self::record_outcome)),
    /// and another process (`blockferry status`, `verify`) may read it in
    /// the microseconds of that write.
    fn load_meta(&self, number: u64) -> Result<BlockMeta, StoreError> {
        match self.load_meta_once(number) {
            Err(StoreError::CorruptMeta { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(2));
                self.load_meta_once(number)
            }
            other => other,
        }
    }

    /// Read and parse block `number`'s `.meta` once.
    fn load_meta_once(&self, number: u64) -> Result<BlockMeta, StoreError> {
        let path = self.meta_path(number);
        match fs::read(&path) {
            Ok(text) => BlockMeta::parse(&text, number).map_err(|detail| StoreError::CorruptMeta { path, detail }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(number)),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// [`meta`](Self::meta) in the common case only, cheap enough for an
    /// async task to call in place (one small read of a cached file): the
    /// `.meta` read and parsed at once. `None` when the block needs more (a
    /// repair, or it is missing, or the read failed): the caller then calls
    /// [`meta`](Self::meta) on the blocking pool.
    pub fn meta_at_once(&self, number: u64) -> Option<BlockMeta> {
        let _guard = self.lock(number);
        self.load_meta_once(number).ok()
    }

    /// [`record_outcome`](Self::record_outcome) in the common case only, cheap
    /// enough for an async task to call in place: the `.meta` read and
    /// parsed at once, changed with `f` and written over in place. `false`
    /// (nothing done, `f` not called) when the block needs more: the caller
    /// then calls [`record_outcome`](Self::record_outcome) on the blocking pool.
    pub fn record_outcome_at_once(&self, number: u64, f: impl FnOnce(&mut BlockMeta)) -> Result<bool, StoreError> {
        let _guard = self.lock(number);
        let Ok(mut meta) = self.load_meta_once(number) else { return Ok(false) };
        f(&mut meta);
        self.overwrite_meta(&meta)?;
        Ok(true)
    }

    /// Replace block `number`'s metadata with `f` applied to it, atomically
    /// and serialised with other updates of the same block.
    pub fn update_meta(&self, number: u64, f: impl FnOnce(&mut BlockMeta)) -> Result<BlockMeta, StoreError> {
        self.update_meta_with(number, f, Sync::Durable)
    }

    /// [`update_meta`](Self::update_meta) for an upload's outcome: written
    /// over the `.meta` in place, without an fsync. The outcome is recorded
    /// only after the bucket holds the object durably, so a power cut that
    /// loses the update leaves the block pending (uploaded again, found
    /// `already-present`), and one that tears the file leaves a `.meta` the
    /// start-up check rebuilds (pending again). Neither can record a block
    /// safe that is not. No temporary file, rename or fsync per upload.
    pub fn record_outcome(&self, number: u64, f: impl FnOnce(&mut BlockMeta)) -> Result<BlockMeta, StoreError> {
        self.update_meta_with(number, f, Sync::Rebuildable)
    }

    /// Read, change with `f`, and write back block `number`'s metadata, synced as `sync` says.
    fn update_meta_with(
        &self,
        number: u64,
        f: impl FnOnce(&mut BlockMeta),
        sync: Sync,
    ) -> Result<BlockMeta, StoreError> {
        let _guard = self.lock(number);
        let mut meta = match self.load_meta(number) {
            Err(StoreError::CorruptMeta { .. }) => {
                self.rebuild_if_needed(number, &[])?.ok_or(StoreError::NotFound(number))?.0
            }
            other => other?,
        };
        f(&mut meta);
        match sync {
            Sync::Durable => self.write_meta_with(&meta, sync)?,
            Sync::Rebuildable => self.overwrite_meta(&meta)?,
        }
        Ok(meta)
    }

    /// Write `meta` over its `.meta` in place, not synced, in one write at
    /// offset 0, padded with spaces to the old length (JSON ignores them),
    /// so the file is the old text or the new one to any reader holding the
    /// block's lock and to a kill. A `.meta` over [`IN_PLACE_MAX`] (old or
    /// new), or missing, is replaced whole instead (temporary file, rename).
    fn overwrite_meta(&self, meta: &BlockMeta) -> Result<(), StoreError> {
        let path = self.meta_path(meta.number);
        let mut json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.write_meta_with(meta, Sync::Rebuildable),
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let old_len = file.metadata().map_err(io_err("reading the size of", &path))?.len();
        if json.len() > IN_PLACE_MAX || old_len > IN_PLACE_MAX as u64 {
            return self.write_meta_with(meta, Sync::Rebuildable);
        }
        json.resize(json.len().max(old_len as usize), b' ');
        match file.write_at(&json, 0).map_err(io_err("writing", &path))? {
            n if n == json.len() => Ok(()),
            // A short write (the disk filling up as the file grew): replace it whole.
            _ => self.write_meta_with(meta, Sync::Rebuildable),
        }
    }

    /// Write `meta` atomically (temporary file, fsync, rename). The directory
    /// is not synced here: a lost update only repeats an idempotent upload.
    fn write_meta(&self, meta: &BlockMeta) -> Result<(), StoreError> {
        self.write_meta_with(meta, Sync::Durable)
    }

    /// Write `meta` to a temporary file, synced or not, and rename it into place.
    fn write_meta_with(&self, meta: &BlockMeta, sync: Sync) -> Result<(), StoreError> {
        let path = self.meta_path(meta.number);
        let tmp = self.tmp_path(&format!("{:0DIGITS$}.meta", meta.number));
        let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        write_file(&tmp, &json, sync).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))
    }

    /// Delete block `number` and its metadata (block file first, so a crash
    /// in between leaves an orphan `.meta` that recovery removes).
    pub fn delete_block(&self, meta: &BlockMeta) -> Result<(), StoreError> {
        let block = self.block_path(meta);
        match fs::remove_file(&block) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("deleting", &block)(e)),
            _ => {}
        }
        let path = self.meta_path(meta.number);
        fs::remove_file(&path).map_err(io_err("deleting", &path))?;
        sync_dir(&self.dir)
    }

    /// Numbers of the blocks in the store, ascending. Only the numbers are
    /// held in memory, never the blocks or their metadata.
    pub fn numbers(&self) -> Result<Vec<u64>, StoreError> {
        let mut numbers: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io_err("listing", &self.dir))?
            .filter_map(|e| block_number(&e.ok()?.file_name().to_string_lossy()))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        Ok(numbers)
    }

    /// Start-up recovery, what must be done before the store takes blocks:
    /// delete leftover temporary files and orphan `.meta` files, and rebuild
    /// the missing `.meta` files from their block file (pending in every
    /// bucket). It lists the directory but reads no `.meta`, so it takes
    /// the same time for any number of blocks (but the few rebuilt). A
    /// `.meta` torn by a power cut is found by [`check_metas`](Self::check_metas),
    /// which runs after, or rebuilt by [`meta`](Self::meta) when the block
    /// is used first. A bucket a `.meta` does not name is pending there
    /// implicitly ([`BlockMeta::status`]): adding a bucket rewrites nothing.
    pub fn recover(&self, buckets: &[String]) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let tmp_dir = self.dir.join(TMP_DIR);
        for entry in fs::read_dir(&tmp_dir).map_err(io_err("listing", &tmp_dir))? {
            let path = entry.map_err(io_err("listing", &tmp_dir))?.path();
            fs::remove_file(&path).map_err(io_err("deleting leftover", &path))?;
            report.removed_tmp += 1;
        }
        let (block_files, metas) = self.list()?;
        for &n in &metas {
            if !block_files.contains_key(&n) {
                let path = self.meta_path(n);
                fs::remove_file(&path).map_err(io_err("deleting orphan", &path))?;
                report.removed_orphan_meta += 1;
            }
        }
        let metas: std::collections::BTreeSet<u64> = metas.into_iter().collect();
        for (&number, file) in &block_files {
            report.blocks += 1;
            if !metas.contains(&number) {
                tracing::warn!(block = number, "rebuilding metadata: the block's .meta is missing");
                self.rebuild_meta(number, file, buckets)?;
                report.rebuilt_meta += 1;
            }
        }
        sync_dir(&self.dir)?;
        Ok(report)
    }

    /// The block files (by number) and the numbers of the `.meta` files in the store.
    fn list(&self) -> Result<(BTreeMap<u64, String>, Vec<u64>), StoreError> {
        let mut block_files = BTreeMap::new();
        let mut metas = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let name = entry.map_err(io_err("listing", &self.dir))?.file_name().to_string_lossy().into_owned();
            if let Some(n) = block_number(&name) {
                block_files.insert(n, name);
            } else if let Some(n) = meta_number(&name) {
                metas.push(n);
            }
        }
        Ok((block_files, metas))
    }

    /// The second half of start-up recovery, which may run while the store
    /// takes blocks: read every block's `.meta` once, rebuild each that is
    /// corrupt (a first `.meta` a power cut tore) or names another file than
    /// the block's, and hand each block's metadata to `visit`, in ascending
    /// order, as long as `visit` returns `true`. A block deleted meanwhile
    /// is skipped.
    pub fn check_metas(
        &self,
        buckets: &[String],
        mut visit: impl FnMut(&BlockMeta) -> bool,
    ) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        let (block_files, _) = self.list()?;
        for (&number, file) in &block_files {
            let meta = match self.read_meta(number) {
                Ok(meta) if meta.file == *file => Some(meta),
                Ok(_) | Err(StoreError::CorruptMeta { .. } | StoreError::NotFound(_)) => {
                    let _guard = self.lock(number);
                    let checked = self.rebuild_if_needed(number, buckets)?;
                    if checked.as_ref().is_some_and(|(_, rebuilt)| *rebuilt) {
                        report.rebuilt_meta += 1;
                    }
                    checked.map(|(meta, _)| meta)
                }
                Err(e) => return Err(e),
            };
            if let Some(meta) = meta {
                report.blocks += 1;
                if !visit(&meta) {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// [`rebuild_if_needed`](Self::rebuild_if_needed) under block `number`'s lock.
    fn repair_meta(&self, number: u64) -> Result<Option<BlockMeta>, StoreError> {
        let _guard = self.lock(number);
        Ok(self.rebuild_if_needed(number, &[])?.map(|(meta, _)| meta))
    }

    /// Block `number`'s metadata, rebuilt from its block file (pending in
    /// `buckets`, and so in every bucket) when the `.meta` is missing,
    /// corrupt or names another file, with whether it was rebuilt; `None`
    /// when no block file is there. The caller holds the block's lock.
    fn rebuild_if_needed(&self, number: u64, buckets: &[String]) -> Result<Option<(BlockMeta, bool)>, StoreError> {
        let Some(file) =
            BLOCK_EXTS.iter().map(|ext| format!("{number:0DIGITS$}{ext}")).find(|f| self.dir.join(f).exists())
        else {
            return Ok(None);
        };
        match self.load_meta(number) {
            Ok(meta) if meta.file == file => return Ok(Some((meta, false))),
            Ok(meta) => tracing::warn!(block = number, "rebuilding metadata: it names {} instead of {file}", meta.file),
            Err(e) => tracing::warn!(block = number, "rebuilding metadata: {e}"),
        }
        let meta = match self.rebuild_meta(number, &file, buckets) {
            // Deleted by retention meanwhile.
            Err(StoreError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        sync_dir(&self.dir)?;
        Ok(Some((meta, true)))
    }

    /// Rebuild block `number`'s metadata from its file (MD5 read back in
    /// bounded memory), pending in every bucket.
    fn rebuild_meta(&self, number: u64, file: &str, buckets: &[String]) -> Result<BlockMeta, StoreError> {
        let path = self.dir.join(file);
        let mut f = File::open(&path).map_err(io_err("opening", &path))?;
        let mut hasher = Md5::new();
        let mut buf = vec![0; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io_err("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let mut meta = BlockMeta::new(number, file.to_string(), size, &hasher.finalize(), buckets);
        if let Ok(modified) = f.metadata().and_then(|m| m.modified()) {
            meta.created_at_ms = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        }
        self.write_meta(&meta)?;
        Ok(meta)
    }
}

/// A temporary file in the store that becomes block `number` once adopted
/// ([`BlockStore::adopt_block`]); deleted when dropped otherwise.
#[derive(Debug)]
pub struct TempBlock {
    number: u64,
    path: PathBuf,
    file: File,
}

impl TempBlock {
    /// The block number it is for.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Its path (in the store's temporary directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, to write the block's bytes to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Give up the automatic deletion: the path, for the caller to rename.
    fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempBlock {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The number of a block file name (`<36 digits>` and a block extension).
fn block_number(name: &str) -> Option<u64> {
    let stem = strip_block_ext(name)?;
    (stem.len() == DIGITS && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// The number of a `.meta` file name.
fn meta_number(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".meta")?;
    (stem.len() == DIGITS && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// Write `data` to a new file at `path` and fsync it.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    write_file(path, data, Sync::Durable)
}

/// Whether a file's contents must be on disk before the write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// fsync before returning.
    Durable,
    /// No fsync: recovery rebuilds the file if a power cut tears it.
    Rebuildable,
}

/// Create `path` with `data`, synced as `sync` says.
fn write_file(path: &Path, data: &[u8], sync: Sync) -> Result<(), StoreError> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).map_err(io_err("creating", path))?;
    f.write_all(data).map_err(io_err("writing", path))?;
    if sync == Sync::Durable {
        f.sync_all().map_err(io_err("syncing", path))?;
    }
    Ok(())
}

/// fsync a directory, making renames and deletions in it durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

/// Create `dir` and its missing ancestors, and make each new directory's
/// entry durable: the parent of every directory created is fsynced, up to
/// the nearest ancestor that already existed. (`create_dir_all` alone leaves
/// the new entries in the page cache, and a power cut can take the whole
/// tree, and every file later written in it, with them.)
pub fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    fs::create_dir_all(dir)?;
    for created in missing {
        File::open(parent_of(created))?.sync_all()?;
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Confirmed, gzip};

    fn buckets() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn write_read_update_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        let meta = store.write_block(7, b"seven", &buckets()).unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(meta.md5_bytes(), Md5::digest(b"seven").to_vec());
        assert_eq!(fs::read(store.block_path(&meta)).unwrap(), b"seven");
        assert_eq!(store.read_meta(7).unwrap(), meta);
        // The same block again is harmless; different bytes are refused.
        assert_eq!(store.write_block(7, b"seven", &buckets()).unwrap(), meta);
        assert!(matches!(store.write_block(7, b"other", &buckets()), Err(StoreError::Conflict { number: 7, .. })));
        let updated = store
            .update_meta(7, |m| {
                m.buckets
                    .insert("a".into(), BucketStatus::Uploaded { at_ms: 1, version: None, confirmed: None })
                    .map(drop)
                    .unwrap_or(())
            })
            .unwrap();
        assert!(updated.status("a").is_safe() && !updated.safe_in_all(["a", "b"].into_iter()));
        assert_eq!(store.numbers().unwrap(), vec![7]);
        store.delete_block(&updated).unwrap();
        assert!(store.numbers().unwrap().is_empty());
        assert!(matches!(store.read_meta(7), Err(StoreError::NotFound(7))));
    }

    #[test]
    fn adopted_blocks_are_stored_as_written_ones_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::Gzip).unwrap();
        let safe_in_a =
            || BTreeMap::from([("a".to_string(), BucketStatus::AlreadyPresent { at_ms: 5, confirmed: None })]);
        let fill = |n: u64, bytes: &[u8]| {
            let temp = store.temp_block(n).unwrap();
            temp.file().write_all(bytes).unwrap();
            temp
        };
        let temp = fill(3, b"three");
        let tmp_path = temp.path().to_path_buf();
        let (meta, stored) = store.adopt_block(temp, 5, &Md5::digest(b"three"), safe_in_a()).unwrap();
        assert!(stored && !tmp_path.exists());
        assert_eq!(meta.file, format!("{:036}.blk.gz", 3), "named as the store names its blocks");
        assert_eq!(fs::read(store.block_path(&meta)).unwrap(), b"three", "the bytes as written, not re-encoded");
        assert_eq!(store.read_meta(3).unwrap(), meta);
        assert!(meta.status("a").is_safe() && meta.status("b") == BucketStatus::Pending);
        // The same content again: nothing done; other content: refused, the stored block kept.
        let (again, stored) = store.adopt_block(fill(3, b"three"), 5, &Md5::digest(b"three"), safe_in_a()).unwrap();
        assert!(!stored && again == meta);
        let temp = fill(3, b"other");
        let tmp_path = temp.path().to_path_buf();
        let err = store.adopt_block(temp, 5, &Md5::digest(b"other"), safe_in_a()).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { number: 3, .. }), "{err}");
        assert!(!tmp_path.exists(), "the temporary file is deleted");
        assert_eq!(fs::read(store.block_path(&meta)).unwrap(), b"three");
        // A block file without its .meta is not overwritten either.
        fs::write(dir.path().join(format!("{:036}.blk", 4)), b"four").unwrap();
        let err = store.adopt_block(fill(4, b"vier"), 4, &Md5::digest(b"vier"), safe_in_a()).unwrap_err();
        assert!(matches!(err, StoreError::Unindexed(4)), "{err}");
        assert_eq!(fs::read(dir.path().join(format!("{:036}.blk", 4))).unwrap(), b"four");
        // An abandoned temporary file is deleted.
        let temp = fill(5, b"five");
        let tmp_path = temp.path().to_path_buf();
        drop(temp);
        assert!(!tmp_path.exists());
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn gzip_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::Gzip).unwrap();
        let meta = store.write_block(1, &[42; 10_000], &buckets()).unwrap();
        assert!(meta.file.ends_with(".blk.gz") && meta.size < 10_000);
        assert_eq!(gzip(&[42; 10_000]), fs::read(store.block_path(&meta)).unwrap());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&fs::read(store.block_path(&meta)).unwrap()[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![42; 10_000]);
    }

    #[test]
    fn recovery_rebuilds_and_tidies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        for n in 1..=4 {
            store.write_block(n, format!("block {n}").as_bytes(), &["a".into()]).unwrap();
        }
        fs::remove_file(store.meta_path(1)).unwrap(); // crash before the .meta
        fs::write(store.meta_path(2), b"{\"trunc").unwrap(); // corrupt .meta
        fs::remove_file(dir.path().join(format!("{:036}.blk", 3))).unwrap(); // deleted by retention, crash before .meta
        fs::write(dir.path().join(".tmp/leftover"), b"x").unwrap();
        // Before the store takes blocks: no .meta is read, the missing one is rebuilt.
        let report = store.recover(&buckets()).unwrap();
        assert_eq!(report, RecoveryReport { blocks: 3, rebuilt_meta: 1, removed_tmp: 1, removed_orphan_meta: 1 });
        assert!(matches!(store.read_meta(2), Err(StoreError::CorruptMeta { .. })), "not read yet");
        // The check that follows reads each .meta once and rebuilds the corrupt one.
        let mut seen = Vec::new();
        let checked = store
            .check_metas(&buckets(), |m| {
                seen.push(m.number);
                true
            })
            .unwrap();
        assert_eq!(checked, CheckReport { blocks: 3, rebuilt_meta: 1 });
        assert_eq!(seen, vec![1, 2, 4]);
        for n in [1, 2, 4] {
            let meta = store.read_meta(n).unwrap();
            assert_eq!(meta.md5_bytes(), Md5::digest(format!("block {n}").as_bytes()).to_vec());
            assert_eq!(meta.status("b"), BucketStatus::Pending, "a new bucket is pending");
        }
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
        // A bucket added to the config is pending implicitly: block 4's intact .meta was not rewritten.
        assert!(!store.read_meta(4).unwrap().buckets.contains_key("b"), "nothing written for the new bucket");
    }

    #[test]
    fn an_older_meta_parses_and_its_copies_are_unconfirmed() {
        // A `.meta` as written before confirmations were recorded.
        let md5 = md5_base64(&Md5::digest(b"x"));
        let old = format!(
            r#"{{"number":1,"file":"{:036}.blk","size":1,"md5":"{md5}","created_at_ms":5,
            "buckets":{{"a":{{"state":"uploaded","at_ms":6}},"b":{{"state":"already-present","at_ms":7}}}},
            "hash_mismatch":false}}"#,
            1
        );
        let meta = BlockMeta::parse(old.as_bytes(), 1).unwrap();
        assert!(meta.safe_in_all(["a", "b"].into_iter()));
        assert_eq!((meta.status("a").confirmed(), meta.status("b").confirmed()), (None, None));
        assert!(!meta.confirmed_in_all(["a"].into_iter(), Confirmed::ServerDigest), "the plugin's word only");
        // Confirmed copies: a server digest satisfies `server-digest`, only a read-back satisfies `read-back`.
        let mut meta = meta;
        meta.buckets.insert(
            "a".into(),
            BucketStatus::Uploaded { at_ms: 6, version: None, confirmed: Some(Confirmed::ServerDigest) },
        );
        meta.buckets
            .insert("b".into(), BucketStatus::AlreadyPresent { at_ms: 7, confirmed: Some(Confirmed::ReadBack) });
        let names = || ["a", "b"].into_iter();
        assert!(meta.confirmed_in_all(names(), Confirmed::ServerDigest));
        assert!(!meta.confirmed_in_all(names(), Confirmed::ReadBack));
        let json = serde_json::to_string(&meta).unwrap();
        assert!(
            json.contains(r#""confirmed":"server-digest""#) && json.contains(r#""confirmed":"read-back""#),
            "{json}"
        );
        assert_eq!(BlockMeta::parse(json.as_bytes(), 1).unwrap(), meta);
        meta.hash_mismatch = true;
        assert!(!meta.confirmed_in_all(names(), Confirmed::ServerDigest), "never after a mismatch");
    }

    #[test]
    fn a_meta_pointing_outside_its_block_is_corrupt_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        let meta = store.write_block(3, b"three", &buckets()).unwrap();
        let mut evil = serde_json::to_value(&meta).unwrap();
        evil["file"] = "../../etc/passwd".into();
        fs::write(store.meta_path(3), serde_json::to_vec(&evil).unwrap()).unwrap();
        match store.read_meta(3) {
            Err(StoreError::CorruptMeta { detail, .. }) => assert!(detail.contains("../../etc/passwd"), "{detail}"),
            other => panic!("expected a corrupt .meta, got {other:?}"),
        }
        assert_eq!(store.recover(&buckets()).unwrap().rebuilt_meta, 0, "recovery reads no .meta");
        assert_eq!(store.check_metas(&buckets(), |_| true).unwrap().rebuilt_meta, 1);
        assert_eq!(store.read_meta(3).unwrap().file, format!("{:036}.blk", 3));
        // Another block's number, or an MD5 that is not one, is corrupt too.
        for (key, value) in [("number", serde_json::json!(4)), ("md5", serde_json::json!("bm90IGFuIG1kNQ=="))] {
            let mut bad = serde_json::to_value(&meta).unwrap();
            bad[key] = value;
            fs::write(store.meta_path(3), serde_json::to_vec(&bad).unwrap()).unwrap();
            assert!(matches!(store.read_meta(3), Err(StoreError::CorruptMeta { .. })), "{key}");
        }
    }

    #[test]
    fn a_new_block_s_meta_torn_by_a_power_cut_is_rebuilt_the_same() {
        // The first `.meta` of a block is not fsynced on its own: what a power
        // cut can leave of it (nothing, a part) is rebuilt from the block file.
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        let written = store.write_block(5, b"five", &buckets()).unwrap();
        let json = fs::read(store.meta_path(5)).unwrap();
        for torn in [&json[..0], &json[..json.len() / 2]] {
            fs::write(store.meta_path(5), torn).unwrap();
            store.recover(&buckets()).unwrap();
            assert_eq!(store.check_metas(&buckets(), |_| true).unwrap().rebuilt_meta, 1);
            let rebuilt = store.read_meta(5).unwrap();
            assert_eq!((rebuilt.number, &rebuilt.file, rebuilt.size), (5, &written.file, written.size));
            assert_eq!((&rebuilt.md5, &rebuilt.buckets), (&written.md5, &written.buckets));
        }
    }
    #[test]
    fn a_torn_meta_not_checked_yet_is_rebuilt_where_the_block_is_used_first() {
        // Recovery no longer reads every .meta before the store takes blocks:
        // a torn one the start-up check has not reached yet is rebuilt by
        // whatever uses the block first, and its block file is never replaced.
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        let tear = |n: u64| fs::write(store.meta_path(n), b"{\"numb").unwrap();
        let written: Vec<BlockMeta> =
            (1..=4).map(|n| store.write_block(n, format!("block {n}").as_bytes(), &buckets()).unwrap()).collect();
        let block_file = |n: u64| fs::read(dir.path().join(format!("{n:036}.blk"))).unwrap();
        (1..=4).for_each(tear);
        store.recover(&buckets()).unwrap();
        // Received again: the same bytes are recognised, other bytes refused.
        assert_eq!(store.write_block(1, b"block 1", &buckets()).unwrap().md5, written[0].md5);
        let err = store.write_block(2, b"other", &buckets()).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { number: 2, .. }), "{err}");
        assert_eq!(block_file(2), b"block 2", "the stored block is kept");
        // Read (the publisher), updated (an upload's outcome), looked up (an upload).
        assert_eq!(store.read_block(3).unwrap(), b"block 3");
        tear(3);
        let updated = store
            .update_meta(3, |m| {
                m.buckets.insert("a".into(), BucketStatus::Uploaded { at_ms: 1, version: None, confirmed: None });
            })
            .unwrap();
        assert_eq!((updated.md5.as_str(), updated.status("a").is_safe()), (written[2].md5.as_str(), true));
        assert_eq!(store.read_meta(3).unwrap(), updated);
        assert_eq!(store.meta(4).unwrap().md5, written[3].md5);
        assert!(matches!(store.meta(9), Err(StoreError::NotFound(9))));
        // The check finds nothing left to rebuild, and every block whole.
        let mut seen = Vec::new();
        assert_eq!(
            store
                .check_metas(&buckets(), |m| {
                    seen.push(m.md5.clone());
                    true
                })
                .unwrap()
                .rebuilt_meta,
            0
        );
        assert_eq!(seen, written.iter().map(|m| m.md5.clone()).collect::<Vec<_>>());
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn outcomes_are_written_in_place_and_read_back_whole() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), Compression::None).unwrap();
        store.write_block(1, b"block", &buckets()).unwrap();
        let inode = || fs::metadata(store.meta_path(1)).unwrap().ino();
        let before = inode();
        let failed = |error: &str| BucketStatus::Failed { attempts: 1, last_error: error.into(), permanent: false };
        // Longer, then shorter (padded with spaces), then a mismatch flag: the same file each time.
        let long = store.record_outcome(1, |m| drop(m.buckets.insert("a".into(), failed(&"x".repeat(300))))).unwrap();
        assert_eq!(store.read_meta(1).unwrap(), long);
        let short = store
            .record_outcome(1, |m| {
                m.buckets.insert("a".into(), BucketStatus::Uploaded { at_ms: 2, version: None, confirmed: None });
                m.hash_mismatch = true;
            })
            .unwrap();
        assert_eq!(store.read_meta(1).unwrap(), short);
        assert_eq!(inode(), before, "written in place, no temporary file renamed over it");
        let text = fs::read(store.meta_path(1)).unwrap();
        assert!(text.ends_with(b" "), "padded to the longer text's length");
        // Past one page the `.meta` is replaced whole, and read back the same.
        let huge = store.record_outcome(1, |m| drop(m.buckets.insert("b".into(), failed(&"y".repeat(5000))))).unwrap();
        assert_eq!(store.read_meta(1).unwrap(), huge);
        assert_ne!(inode(), before, "replaced by a new file");
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
        // The at-once forms do the common case and leave a torn `.meta` to the repairing ones.
        assert_eq!(store.meta_at_once(1), Some(huge));
        fs::write(store.meta_path(1), b"{\"numb").unwrap();
        assert_eq!(store.meta_at_once(1), None);
        assert!(!store.record_outcome_at_once(1, |_| panic!("not called on a torn .meta")).unwrap());
        let repaired = store.record_outcome(1, |m| m.hash_mismatch = true).unwrap();
        assert!(repaired.hash_mismatch && repaired.status("b") == BucketStatus::Pending, "rebuilt, then recorded");
        assert!(store.record_outcome_at_once(1, |m| m.hash_mismatch = false).unwrap());
        assert!(!store.read_meta(1).unwrap().hash_mismatch);
    }
}
