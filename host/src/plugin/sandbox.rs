//! What one plugin instance may see and use: its store's state (WASI context
//! with no ambient authority, the egress hooks, the memory cap) and the host
//! functions it imports (`host.log`, stdout/stderr captured into `tracing`).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::blockferry::uploader::host::Host;
use super::bindings::{Confirmation, Level};
use super::egress::{EgressHooks, EgressPolicy};

/// Guest path at which a bucket's directory is preopened (filesystem providers only).
pub const BUCKET_DIR_GUEST_PATH: &str = "/bucket";

/// What a bucket grants its plugin, shared by all of the bucket's instances.
#[derive(Debug)]
pub struct Sandbox {
    /// `plugin/bucket`, the tag on every log line of this plugin.
    pub label: String,
    /// Outbound HTTP policy.
    pub egress: Arc<EgressPolicy>,
    /// A host directory preopened at [`BUCKET_DIR_GUEST_PATH`], if any.
    pub directory: Option<PathBuf>,
    /// Memory cap of one instance, in bytes.
    pub memory_limit: u64,
}

/// The state of one plugin instance's store.
pub struct StoreState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    limiter: MemoryCap,
    label: Arc<str>,
    /// The version the service gave the object written by the current call
    /// (`host.object-version`), with its key.
    object_version: Option<(String, String)>,
    /// How the plugin confirmed the object of the current call
    /// (`host.object-confirmed`), with its key.
    object_confirmed: Option<(String, Confirmation)>,
}

impl StoreState {
    /// A fresh state granting exactly what `sandbox` allows.
    pub fn new(sandbox: &Sandbox) -> anyhow::Result<Self> {
        let label: Arc<str> = sandbox.label.as_str().into();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(LogStream { label: label.clone(), level: tracing::Level::INFO })
            .stderr(LogStream { label: label.clone(), level: tracing::Level::WARN })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(dir) = &sandbox.directory {
            wasi.preopened_dir(dir, BUCKET_DIR_GUEST_PATH, FsPerms::ReadWrite)
                .map_err(|e| anyhow::anyhow!("cannot open bucket directory {}: {e}", dir.display()))?;
        }
        Ok(Self {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: EgressHooks { policy: sandbox.egress.clone(), deadline: Instant::now() },
            limiter: MemoryCap { limit: sandbox.memory_limit as usize, hit: false },
            label,
            object_version: None,
            object_confirmed: None,
        })
    }

    /// Start a call that must end by `deadline`.
    pub fn begin_call(&mut self, deadline: Instant) {
        self.hooks.deadline = deadline;
        self.limiter.hit = false;
        self.object_version = None;
        self.object_confirmed = None;
    }

    /// The version the plugin reported for `key` during the current call.
    pub fn object_version(&mut self, key: &str) -> Option<String> {
        self.object_version.take().filter(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// How the plugin confirmed the object under `key` during the current call.
    pub fn object_confirmed(&mut self, key: &str) -> Option<Confirmation> {
        self.object_confirmed.take().filter(|(k, _)| k == key).map(|(_, c)| c)
    }

    /// When the current call must end.
    pub fn deadline(&self) -> Instant {
        self.hooks.deadline
    }

    /// Whether the instance asked for more memory than its cap during this call.
    pub fn hit_memory_cap(&self) -> bool {
        self.limiter.hit
    }

    /// The limiter to install on the store.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl Host for StoreState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.label;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    async fn object_version(&mut self, key: String, version: String) -> wasmtime::Result<()> {
        // Kept short: it goes into the block's `.meta`.
        if key.len() <= 1024 && version.len() <= 1024 {
            self.object_version = Some((key, version));
        }
        Ok(())
    }

    async fn object_confirmed(&mut self, key: String, by: Confirmation) -> wasmtime::Result<()> {
        if key.len() <= 1024 {
            self.object_confirmed = Some((key, by));
        }
        Ok(())
    }
}

impl super::bindings::blockferry::uploader::types::Host for StoreState {}

/// Refuses memory growth past the cap and remembers that it did.
#[derive(Debug)]
struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A plugin's stdout or stderr: each line becomes a `tracing` event tagged
/// with the plugin's label.
#[derive(Clone)]
struct LogStream {
    label: Arc<str>,
    level: tracing::Level,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter { stream: self.clone(), pending: Vec::new() })
    }
}

/// Buffers partial lines; emits complete ones. Lines longer than 8 KiB are cut.
struct LineWriter {
    stream: LogStream,
    pending: Vec<u8>,
}

impl LineWriter {
    const MAX_LINE: usize = 8 * 1024;

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let plugin = &*self.stream.label;
        if self.stream.level == tracing::Level::WARN {
            tracing::warn!(plugin, stream = "stderr", "{text}");
        } else {
            tracing::info!(plugin, stream = "stdout", "{text}");
        }
    }

    fn flush_lines(&mut self) {
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line);
        }
        if self.pending.len() > Self::MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        self.flush_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit(&self.pending);
        }
    }
}
