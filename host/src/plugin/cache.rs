//! The on-disk cache of compiled components, so a restart does not recompile.
//!
//! A compiled artifact is native code that wasmtime loads without checking it,
//! so the cache trusts only files the host wrote itself: the directory must be
//! owned by the host's user and writable by nobody else, and so must each
//! artifact. Keys combine the component's SHA-256 with the engine's settings
//! and the host's version, so a changed plugin, engine setting or host build
//! never loads a stale artifact.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::LoadError;

/// A directory of compiled components written by this host.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// Where a component came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Compiled now (and stored in the cache, if there is one).
    Compiled,
    /// Loaded from the cache without compiling.
    Cached,
}

impl ArtifactCache {
    /// Open (creating with mode 0700 if needed) the cache at `dir`, refusing a
    /// directory that someone else could write into.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let dir = dir.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| {
            cache_error(&dir, format!("cannot create it: {e}; set `plugins.cache_dir` to a writable path"))
        })?;
        let meta = fs::metadata(&dir).map_err(|e| cache_error(&dir, e.to_string()))?;
        check_private(&dir, &meta)?;
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `component_sha256` compiled by `engine`.
    pub fn key(engine: &Engine, component_sha256: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        format!("{component_sha256}-{:016x}", h.finish())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The cached component for `key`, if a trustworthy, loadable one exists.
    /// A corrupt or foreign artifact is removed (or ignored) and `None` returned.
    pub fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path(key);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || check_private(&path, &meta).is_err() {
            tracing::warn!(path = %path.display(), "ignoring a cached artifact the host did not write");
            return None;
        }
        // SAFETY: the artifact was written by `store` below into a directory
        // and file that only this user can write (checked above), from a
        // component compiled by an engine with the same settings (the key).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding unusable cached artifact: {e}");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `component` under `key` (temporary file, then rename).
    pub fn store(&self, key: &str, component: &Component) -> Result<(), LoadError> {
        let path = self.path(key);
        let bytes = component.serialize().map_err(|e| cache_error(&path, e.to_string()))?;
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            cache_error(&path, format!("cannot write it: {e}"))
        })
    }
}

/// Refuse `path` unless it is owned by this user and not writable by group or others.
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(cache_error(
            path,
            format!(
                "owned by uid {} but the host runs as uid {me}; the host loads only artifacts it wrote: use a cache directory of its own",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(cache_error(
            path,
            format!(
                "mode {mode:o} lets others write it; the host loads only artifacts from a directory only it writes: `chmod go-w {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn cache_error(path: &Path, detail: String) -> LoadError {
    LoadError::Cache { path: path.to_path_buf(), detail }
}
