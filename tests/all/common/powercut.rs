//! A power-cut file system for tests: a FUSE file system that keeps what a
//! real disk would lose in a power cut, and loses it on command.
//!
//! Every operation goes through to files in a backing directory, but the file
//! system remembers, per file and per directory, what has not been made
//! durable yet: a file's data since its last `fsync`/`fdatasync`, a
//! directory's entries (creates, renames, links, unlinks, new directories)
//! since its last `fsync`. [`PowerCutFs::power_cut`] unmounts, discards all of
//! that and rebuilds the backing image from the durable state alone — the
//! directory [`PowerCutFs::disk`] then holds exactly what the disk would
//! after the cut — and mounts that image again.
//!
//! The model is the strictest a POSIX file system allows: a file never
//! fsynced comes back empty (if its name survives at all), a directory entry
//! survives only if its directory was fsynced after it was made, and a file's
//! new content is lost whole until its fsync. Renaming a directory between
//! two directories is not modelled (the first durable name wins).
//!
//! Layout of the backing directory: `disk/` is the image (valid while
//! unmounted, and after each cut); while mounted, `work/objects/<ino>` holds
//! each file's current content (hard links to the image's files at mount) and
//! `work/durable/<ino>` the durable content of a file changed since its fsync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// How long the kernel may cache names and attributes (every change goes
/// through this file system, so its caches never go stale).
const TTL: Duration = Duration::from_secs(1);
/// The root directory's inode.
const ROOT: u64 = 1;

/// What is durable of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durable {
    /// The current content (no write since the last fsync).
    Current,
    /// Nothing: the file was never fsynced.
    Empty,
    /// The content copied to `work/durable/<ino>` before the first write since the last fsync.
    Saved,
}

/// A directory's attributes (files keep theirs on their backing file).
#[derive(Debug, Clone, Copy)]
struct DirAttr {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

/// A file or directory.
#[derive(Debug)]
enum Node {
    File {
        /// Current names.
        links: u32,
        durable: Durable,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        /// The entries as of the last fsync; `None` when unchanged since.
        durable: Option<BTreeMap<OsString, u64>>,
        parent: u64,
        attr: DirAttr,
    },
}

/// The file system's state, shared by the FUSE session and the controller.
#[derive(Debug)]
struct State {
    work: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    files: HashMap<u64, (u64, File)>,
    /// A directory listing taken at opendir, so deleting while listing misses nothing.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

type Result<T> = std::result::Result<T, Errno>;

impl State {
    fn object(&self, ino: u64) -> PathBuf {
        self.work.join("objects").join(ino.to_string())
    }

    fn saved(&self, ino: u64) -> PathBuf {
        self.work.join("durable").join(ino.to_string())
    }

    fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>> {
        match self.node(dir)? {
            Node::Dir { entries, .. } => Ok(entries),
            Node::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn child(&self, dir: u64, name: &OsStr) -> Result<u64> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino), Some(Node::Dir { .. }))
    }

    fn attr(&self, ino: u64) -> Result<FileAttr> {
        let (kind, size, blocks, perm, nlink, uid, gid, mtime, atime, ctime) = match self.node(ino)? {
            Node::File { links, .. } => {
                let m = fs::metadata(self.object(ino)).map_err(Errno::from)?;
                let time = |s: i64, ns: i64| SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
                (
                    FileType::RegularFile,
                    m.len(),
                    m.blocks(),
                    (m.mode() & 0o7777) as u16,
                    *links,
                    m.uid(),
                    m.gid(),
                    time(m.mtime(), m.mtime_nsec()),
                    time(m.atime(), m.atime_nsec()),
                    time(m.ctime(), m.ctime_nsec()),
                )
            }
            Node::Dir { attr, .. } => {
                (FileType::Directory, 4096, 8, attr.perm, 2, attr.uid, attr.gid, attr.mtime, attr.mtime, attr.mtime)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime,
            mtime,
            ctime,
            crtime: ctime,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Before an entry of `dir` changes: remember its durable entries.
    fn change_dir(&mut self, dir: u64) -> Result<()> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { entries, durable, attr, .. }) => {
                durable.get_or_insert_with(|| entries.clone());
                attr.mtime = SystemTime::now();
                Ok(())
            }
            Some(Node::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Before file `ino`'s content changes: keep its durable content.
    fn change_file(&mut self, ino: u64) -> Result<()> {
        let (object, saved) = (self.object(ino), self.saved(ino));
        match self.nodes.get_mut(&ino) {
            Some(Node::File { durable, .. }) if *durable == Durable::Current => {
                let size = fs::metadata(&object).map_err(Errno::from)?.len();
                if size == 0 {
                    *durable = Durable::Empty;
                } else {
                    fs::copy(&object, &saved).map_err(Errno::from)?;
                    *durable = Durable::Saved;
                }
                Ok(())
            }
            Some(Node::File { .. }) => Ok(()),
            Some(Node::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn insert(&mut self, dir: u64, name: &OsStr, ino: u64) -> Result<()> {
        self.change_dir(dir)?;
        if let Some(Node::Dir { entries, .. }) = self.nodes.get_mut(&dir) {
            entries.insert(name.to_os_string(), ino);
        }
        Ok(())
    }

    /// Remove `name` from `dir` (the node is kept: a durable entry may still name it).
    fn remove(&mut self, dir: u64, name: &OsStr) -> Result<u64> {
        self.change_dir(dir)?;
        let Some(Node::Dir { entries, .. }) = self.nodes.get_mut(&dir) else { unreachable!() };
        let ino = entries.remove(name).ok_or(Errno::ENOENT)?;
        if let Some(Node::File { links, .. }) = self.nodes.get_mut(&ino) {
            *links -= 1;
        }
        Ok(ino)
    }

    fn new_ino(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> Result<u64> {
        let mut options = OpenOptions::new();
        match OpenFlags(flags).acc_mode() {
            OpenAccMode::O_RDONLY => options.read(true),
            OpenAccMode::O_WRONLY => options.write(true),
            OpenAccMode::O_RDWR => options.read(true).write(true),
        };
        if flags & libc::O_TRUNC != 0 {
            self.change_file(ino)?;
            options.truncate(true);
        }
        let file = options.open(self.object(ino)).map_err(Errno::from)?;
        self.next_fh += 1;
        self.files.insert(self.next_fh, (ino, file));
        Ok(self.next_fh)
    }

    fn file(&self, fh: FileHandle) -> Result<&File> {
        self.files.get(&fh.0).map(|(_, f)| f).ok_or(Errno::EBADF)
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        self.attr(self.child(parent, name)?)
    }

    fn new_file(&mut self, parent: u64, name: &OsStr, mode: u32, req: &Request) -> Result<u64> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.new_ino();
        let path = self.object(ino);
        let file =
            OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(&path).map_err(Errno::from)?;
        let _ = std::os::unix::fs::fchown(&file, Some(req.uid()), Some(req.gid()));
        self.nodes.insert(ino, Node::File { links: 1, durable: Durable::Empty });
        self.insert(parent, name, ino)?;
        Ok(ino)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, req: &Request) -> Result<FileAttr> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.new_ino();
        let attr = DirAttr { perm: (mode & 0o7777) as u16, uid: req.uid(), gid: req.gid(), mtime: SystemTime::now() };
        // A new directory's durable listing is empty.
        let node = Node::Dir { entries: BTreeMap::new(), durable: Some(BTreeMap::new()), parent, attr };
        self.nodes.insert(ino, node);
        self.insert(parent, name, ino)?;
        self.attr(ino)
    }

    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        if self.is_dir(self.child(parent, name)?) {
            return Err(Errno::EISDIR);
        }
        self.remove(parent, name).map(drop)
    }

    fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.child(parent, name)?;
        match self.node(ino)? {
            Node::Dir { entries, .. } if entries.is_empty() => self.remove(parent, name).map(drop),
            Node::Dir { .. } => Err(Errno::ENOTEMPTY),
            Node::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        if let Some(&target) = self.entries(new_parent)?.get(new_name) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if target == ino {
                return Ok(());
            }
            match (self.is_dir(ino), self.node(target)?) {
                (true, Node::Dir { entries, .. }) if entries.is_empty() => {}
                (true, Node::Dir { .. }) => return Err(Errno::ENOTEMPTY),
                (true, Node::File { .. }) => return Err(Errno::ENOTDIR),
                (false, Node::Dir { .. }) => return Err(Errno::EISDIR),
                (false, Node::File { .. }) => {}
            }
            self.remove(new_parent, new_name)?;
        }
        self.remove(parent, name)?;
        if let Some(Node::File { links, .. }) = self.nodes.get_mut(&ino) {
            *links += 1;
        }
        self.insert(new_parent, new_name, ino)?;
        if let Some(Node::Dir { parent, .. }) = self.nodes.get_mut(&ino) {
            *parent = new_parent;
        }
        Ok(())
    }

    fn link(&mut self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<FileAttr> {
        if self.is_dir(ino) {
            return Err(Errno::EPERM);
        }
        if self.entries(new_parent)?.contains_key(new_name) {
            return Err(Errno::EEXIST);
        }
        self.insert(new_parent, new_name, ino)?;
        if let Some(Node::File { links, .. }) = self.nodes.get_mut(&ino) {
            *links += 1;
        }
        self.attr(ino)
    }

    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr> {
        let when = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if let Some(Node::Dir { attr, .. }) = self.nodes.get_mut(&ino) {
            if let Some(mode) = mode {
                attr.perm = (mode & 0o7777) as u16;
            }
            if let Some(t) = mtime {
                attr.mtime = when(t);
            }
            return self.attr(ino);
        }
        let path = self.object(ino);
        if let Some(size) = size {
            self.change_file(ino)?;
            OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size)).map_err(Errno::from)?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(Errno::from)?;
        }
        if let Some(t) = mtime {
            let times = fs::FileTimes::new().set_modified(when(t));
            File::options().write(true).open(&path).and_then(|f| f.set_times(times)).map_err(Errno::from)?;
        }
        self.attr(ino)
    }

    /// `fsync` of file `ino`: its current content is durable.
    fn sync_file(&mut self, ino: u64) -> Result<()> {
        let saved = self.saved(ino);
        match self.nodes.get_mut(&ino) {
            Some(Node::File { durable, .. }) => {
                if *durable == Durable::Saved {
                    fs::remove_file(saved).map_err(Errno::from)?;
                }
                *durable = Durable::Current;
                Ok(())
            }
            Some(Node::Dir { .. }) => self.sync_dir(ino),
            None => Err(Errno::ENOENT),
        }
    }

    /// `fsync` of directory `ino`: its current entries are durable.
    fn sync_dir(&mut self, ino: u64) -> Result<()> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir { durable, .. }) => {
                *durable = None;
                Ok(())
            }
            Some(Node::File { .. }) => self.sync_file(ino),
            None => Err(Errno::ENOENT),
        }
    }

    fn listing(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>> {
        let Node::Dir { entries, parent, .. } = self.node(ino)? else { return Err(Errno::ENOTDIR) };
        let mut list = vec![(ino, FileType::Directory, ".".into()), (*parent, FileType::Directory, "..".into())];
        for (name, &child) in entries {
            let kind = if self.is_dir(child) { FileType::Directory } else { FileType::RegularFile };
            list.push((child, kind, name.clone()));
        }
        Ok(list)
    }

    /// Write the durable state as a directory tree at `out`.
    fn write_durable(&self, out: &Path) -> io::Result<()> {
        let mut linked = HashMap::new();
        let mut seen = HashSet::new();
        self.write_durable_dir(ROOT, out, &mut linked, &mut seen)
    }

    fn write_durable_dir(
        &self,
        dir: u64,
        out: &Path,
        linked: &mut HashMap<u64, PathBuf>,
        seen: &mut HashSet<u64>,
    ) -> io::Result<()> {
        let Some(Node::Dir { entries, durable, attr, .. }) = self.nodes.get(&dir) else { return Ok(()) };
        fs::create_dir(out)?;
        fs::set_permissions(out, fs::Permissions::from_mode(u32::from(attr.perm)))?;
        for (name, &ino) in durable.as_ref().unwrap_or(entries) {
            let path = out.join(name);
            match self.nodes.get(&ino) {
                Some(Node::Dir { .. }) if seen.insert(ino) => self.write_durable_dir(ino, &path, linked, seen)?,
                Some(Node::Dir { .. }) | None => {}
                Some(Node::File { durable, .. }) => {
                    if let Some(first) = linked.get(&ino) {
                        fs::hard_link(first, &path)?;
                        continue;
                    }
                    match durable {
                        Durable::Current => fs::hard_link(self.object(ino), &path)?,
                        Durable::Saved => fs::hard_link(self.saved(ino), &path)?,
                        Durable::Empty => {
                            let perm = fs::metadata(self.object(ino))?.permissions();
                            File::create(&path)?.set_permissions(perm)?;
                        }
                    }
                    linked.insert(ino, path);
                }
            }
        }
        Ok(())
    }

    /// A state whose files are the image at `disk` (hard-linked into `work/objects/`), all durable.
    fn import(disk: &Path, work: &Path) -> io::Result<State> {
        fs::create_dir_all(work.join("objects"))?;
        fs::create_dir_all(work.join("durable"))?;
        let mut state = State {
            work: work.to_path_buf(),
            nodes: HashMap::new(),
            next_ino: ROOT,
            files: HashMap::new(),
            listings: HashMap::new(),
            next_fh: 0,
        };
        let mut by_disk_ino = HashMap::new();
        state.import_dir(disk, ROOT, ROOT, &mut by_disk_ino)?;
        Ok(state)
    }

    fn import_dir(
        &mut self,
        path: &Path,
        ino: u64,
        parent: u64,
        by_disk_ino: &mut HashMap<u64, u64>,
    ) -> io::Result<()> {
        let meta = fs::metadata(path)?;
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let m = entry.metadata()?;
            if m.is_dir() {
                let child = self.new_ino();
                self.import_dir(&entry.path(), child, ino, by_disk_ino)?;
                entries.insert(entry.file_name(), child);
            } else if let Some(&child) = by_disk_ino.get(&m.ino()) {
                if let Some(Node::File { links, .. }) = self.nodes.get_mut(&child) {
                    *links += 1;
                }
                entries.insert(entry.file_name(), child);
            } else {
                let child = self.new_ino();
                fs::hard_link(entry.path(), self.object(child))?;
                self.nodes.insert(child, Node::File { links: 1, durable: Durable::Current });
                by_disk_ino.insert(m.ino(), child);
                entries.insert(entry.file_name(), child);
            }
        }
        let attr =
            DirAttr { perm: (meta.mode() & 0o7777) as u16, uid: meta.uid(), gid: meta.gid(), mtime: meta.modified()? };
        self.nodes.insert(ino, Node::Dir { entries, durable: None, parent, attr });
        Ok(())
    }
}

/// The FUSE side: every request locks the shared state.
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn reply_entry(reply: ReplyEntry, attr: Result<FileAttr>) {
    match attr {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.state().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply_attr(reply, self.state().setattr(ino.0, mode, size, mtime));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply_entry(reply, self.state().mkdir(parent.0, name, mode & !umask, req));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.state().rename(parent.0, name, newparent.0, newname, flags));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open_handle(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let result = state.file(fh).and_then(|file| {
            let mut buf = vec![0; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(Errno::from(e)),
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result =
            state.change_file(ino.0).and_then(|()| state.file(fh)?.write_all_at(data, offset).map_err(Errno::from));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.state().sync_file(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.listing(ino.0) {
            Ok(list) => {
                state.next_fh += 1;
                let fh = state.next_fh;
                state.listings.insert(fh, list);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.state();
        let Some(list) = state.listings.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.state().sync_dir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let work = self.state().work.clone();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(work.as_os_str().as_encoded_bytes()).unwrap();
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(Errno::from(io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = state.new_file(parent.0, name, mode & !umask, req).and_then(|ino| {
            let fh = state.open_handle(ino, flags & !libc::O_TRUNC)?;
            Ok((state.attr(ino)?, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted power-cut file system (unmounted when dropped).
pub struct PowerCutFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    mounted: Option<(BackgroundSession, Arc<Mutex<State>>)>,
}

impl PowerCutFs {
    /// Mount the image in `backing/disk` (an empty one if there is none) at `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> PowerCutFs {
        fs::create_dir_all(backing.join("disk")).unwrap();
        fs::create_dir_all(mountpoint).unwrap();
        let mut fs = PowerCutFs { backing: backing.to_path_buf(), mountpoint: mountpoint.to_path_buf(), mounted: None };
        fs.mount_image();
        fs
    }

    fn mount_image(&mut self) {
        let work = self.backing.join("work");
        let _ = fs::remove_dir_all(&work);
        let state = State::import(&self.disk(), &work).expect("importing the disk image");
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powercut".into()), MountOption::Subtype("powercut".into())];
        let session = fuser::spawn_mount2(Fs(state.clone()), &self.mountpoint, &config).unwrap_or_else(|e| {
            panic!(
                "cannot mount the power-cut file system at {} (it needs /dev/fuse and root, or fusermount3 \
                 from Debian's fuse3: scripts/install-test-servers.sh installs it): {e}",
                self.mountpoint.display()
            )
        });
        self.mounted = Some((session, state));
    }

    /// The image directory: what the disk holds (valid while unmounted and after a cut).
    pub fn disk(&self) -> PathBuf {
        self.backing.join("disk")
    }

    /// Unmount, returning the state (the processes using the file system must be gone).
    fn unmount(&mut self) -> Option<Arc<Mutex<State>>> {
        let (session, state) = self.mounted.take()?;
        session.umount_and_join().expect("unmounting the power-cut file system");
        Some(state)
    }

    /// Cut the power: unmount, keep only what was made durable, and mount
    /// that again. Every process with files open on it must have been killed.
    pub fn power_cut(&mut self) {
        let state = self.unmount().expect("mounted");
        let state = state.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.backing.join("disk.next");
        let _ = fs::remove_dir_all(&next);
        state.write_durable(&next).expect("writing the durable image");
        drop(state);
        fs::remove_dir_all(self.disk()).unwrap();
        fs::rename(&next, self.disk()).unwrap();
        self.mount_image();
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Some((session, _)) = self.mounted.take() {
            let _ = session.umount_and_join();
        }
    }
}
