//! What one plugin instance may see and use: its store's state (WASI context
//! with no ambient authority, the egress hooks, the memory cap) and the host
//! functions it imports (`host.log`, stdout/stderr captured into `tracing`).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::blockferry::uploader::host::{Host, IssuedCredentials};
use super::bindings::{Confirmation, Level, UploadError};
use super::egress::{EgressHooks, EgressPolicy};
use super::logs::PluginLog;
use crate::credentials::{Broker, CredentialsError};

/// Guest path at which a bucket's directory is preopened (filesystem providers only).
pub const BUCKET_DIR_GUEST_PATH: &str = "/bucket";

/// `block-body` and `block-sink` streams one instance may hold open at once
/// (each body stream holds an open file of the host).
pub const MAX_OPEN_STREAMS: usize = 64;

/// Resources (streams, pollables, HTTP fields, requests, responses, bodies,
/// ...) one instance may hold in its resource table at once.
pub const MAX_TABLE_ENTRIES: usize = 1024;

/// Bytes of HTTP headers one `wasi:http` fields resource may hold.
pub const MAX_FIELDS_BYTES: usize = 32 * 1024;

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
    /// Where what the plugin says goes (cut, redacted, rate-limited).
    pub log: Arc<PluginLog>,
    /// The broker of the bucket's platform credentials, if it has one.
    pub credentials: Option<Arc<Broker>>,
}

/// The state of one plugin instance's store.
pub struct StoreState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    limiter: MemoryCap,
    log: Arc<PluginLog>,
    /// Block-body and block-sink streams open now.
    streams: Arc<AtomicUsize>,
    /// The version the service gave the object written by the current call
    /// (`host.object-version`), with its key.
    object_version: Option<(String, String)>,
    /// How the plugin confirmed the object of the current call
    /// (`host.object-confirmed`), with its key.
    object_confirmed: Option<(String, Confirmation)>,
    /// The broker `host.credentials` asks.
    credentials: Option<Arc<Broker>>,
}

impl StoreState {
    /// A fresh state granting exactly what `sandbox` allows.
    pub fn new(sandbox: &Sandbox) -> anyhow::Result<Self> {
        let log = sandbox.log.clone();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(LogStream { log: log.clone(), stream: "stdout", level: tracing::Level::INFO })
            .stderr(LogStream { log: log.clone(), stream: "stderr", level: tracing::Level::WARN })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(dir) = &sandbox.directory {
            wasi.preopened_dir(dir, BUCKET_DIR_GUEST_PATH, FsPerms::ReadWrite)
                .map_err(|e| anyhow::anyhow!("cannot open bucket directory {}: {e}", dir.display()))?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TABLE_ENTRIES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        Ok(Self {
            table,
            wasi: wasi.build(),
            http,
            hooks: EgressHooks { policy: sandbox.egress.clone(), deadline: Instant::now() },
            limiter: MemoryCap { limit: sandbox.memory_limit as usize, hit: false },
            log,
            streams: Arc::new(AtomicUsize::new(0)),
            object_version: None,
            object_confirmed: None,
            credentials: sandbox.credentials.clone(),
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

    /// A place for one more open stream, or why there is none.
    pub(crate) fn stream_slot(&self) -> Result<StreamSlot, String> {
        if self.streams.fetch_add(1, Ordering::Relaxed) >= MAX_OPEN_STREAMS {
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "refused: the plugin already holds {MAX_OPEN_STREAMS} block-body/block-sink streams open, \
                 the most one instance may; drop streams when done with them"
            ));
        }
        Ok(StreamSlot(self.streams.clone()))
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
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.log.line(level, None, &message, false);
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

    async fn credentials(&mut self) -> wasmtime::Result<Result<IssuedCredentials, UploadError>> {
        let Some(broker) = self.credentials.clone() else {
            return Ok(Ok(IssuedCredentials { values: Vec::new(), expires_ms: 0 }));
        };
        Ok(match broker.current().await {
            Ok(issued) => {
                self.log.redact_issued(issued.values.iter().map(|(_, v)| v.as_str()));
                Ok(IssuedCredentials { values: issued.values, expires_ms: issued.expires_ms })
            }
            Err(CredentialsError::Transient(e)) => Err(UploadError::Transient(e)),
            Err(CredentialsError::Permanent(e)) => Err(UploadError::Permanent(e)),
        })
    }
}

impl super::bindings::blockferry::uploader::types::Host for StoreState {}

/// One of an instance's open streams: frees its place when the stream is dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

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

/// A plugin's stdout or stderr: each line goes to the bucket's [`PluginLog`].
#[derive(Clone)]
struct LogStream {
    log: Arc<PluginLog>,
    stream: &'static str,
    level: tracing::Level,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter { stream: self.clone(), pending: Vec::new(), skipping: false })
    }
}

/// Splits what a plugin writes into lines. It holds at most
/// [`MAX_LINE`](super::logs::MAX_LINE) bytes: a longer line is logged cut
/// as soon as it is that long, and the rest of it (up to its newline) is
/// dropped, so output without newlines costs the host nothing more.
struct LineWriter {
    stream: LogStream,
    pending: Vec<u8>,
    /// The current line was already logged cut: drop bytes up to its newline.
    skipping: bool,
}

impl LineWriter {
    fn emit(&mut self, cut: bool) {
        let text = String::from_utf8_lossy(&self.pending);
        self.stream.log.line(self.stream.level, Some(self.stream.stream), text.trim_end(), cut);
        drop(text);
        self.pending.clear();
    }

    /// Take `bytes` of the current line (no newline among them).
    fn push(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        let room = super::logs::MAX_LINE - self.pending.len();
        self.pending.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if bytes.len() > room {
            self.emit(true);
            self.skipping = true;
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..pos]);
            if !std::mem::take(&mut self.skipping) {
                self.emit(false);
            }
            bytes = &bytes[pos + 1..];
        }
        self.push(bytes);
    }

    fn finish(&mut self) {
        if !self.pending.is_empty() && !self.skipping {
            self.emit(false);
        }
        self.pending.clear();
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.finish();
    }
}
