//! One bucket as seen through its plugin: the sandbox it grants, a pool of
//! opened instances, and calls bounded by a deadline.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Semaphore;
use wasmtime::component::{Resource, ResourceAny};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use super::bindings::reading::ReadingProvider;
use super::bindings::{Confirmation, IncompleteUpload, ObjectPage, Provider, UploadError};
use super::egress::EgressPolicy;
use super::error::{CallError, PluginFailure};
use super::logs::PluginLog;
use super::network::url_authority;
use super::pool::{ConnectionPool, MAX_CONNECTIONS_PER_INSTANCE};
use super::sandbox::{BUCKET_DIR_GUEST_PATH, Sandbox, StoreState};
use super::sink::{BlockSink, Received};
use super::{BlockBody, BlockInfo, Outcome, Plugin, RemoteObject};
use crate::sync::Locked;

/// An instance whose resource table holds more entries than this after a
/// call is retired (a fresh one serves the next call) before it could fill
/// the table ([`super::sandbox::MAX_TABLE_ENTRIES`]) and trap. Between calls
/// a well-behaved instance holds a handful; what grows it is a leak, the
/// plugin's or the host's: wasmtime-wasi-http 48 keeps every
/// `request-options` a plugin hands to `outgoing-handler.handle`, one per
/// request of the S3 and GCS providers.
pub const RETIRE_AT_TABLE_ENTRIES: usize = super::sandbox::MAX_TABLE_ENTRIES / 4;

/// Extra time the host allows past a call's deadline for the guest to notice
/// its epoch deadline before the host drops the call outright.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Everything the host grants one bucket's plugin.
#[derive(Clone)]
pub struct BucketSpec {
    /// The bucket's name in the config (used in log lines and errors).
    pub name: String,
    /// Settings and credentials passed to `bucket.open`, and nothing else.
    pub settings: Vec<(String, String)>,
    /// A host directory preopened for the plugin (filesystem providers); the
    /// plugin gets setting `root` pointing at it.
    pub directory: Option<PathBuf>,
    /// Extra authorities (`host:port` or URLs) the plugin may reach, beyond
    /// the URLs in its settings.
    pub allow_hosts: Vec<String>,
    /// Networks no request may go to, even to a permitted name.
    pub denied_networks: Vec<IpNet>,
    /// Memory cap of one instance, in bytes.
    pub memory_limit: u64,
    /// Deadline of one call (instantiation, HTTP waits and retries included).
    pub call_timeout: Duration,
    /// Calls that may run at once on this bucket.
    pub max_concurrency: usize,
    /// Names of the settings whose values are secrets (the credentials):
    /// redacted from everything the plugin says.
    pub secrets: Vec<String>,
    /// Log lines the plugin may write per minute (bursts up to as many).
    pub log_lines_per_minute: u32,
    /// The TLS client of the bucket's HTTPS connections (trusted CAs, client certificate).
    pub tls: super::tls::BucketTls,
    /// The broker of the bucket's platform credentials (`host.credentials`);
    /// `None` when its credentials are static.
    pub credentials: Option<Arc<crate::credentials::Broker>>,
}

/// Shows setting names only: setting values include the bucket's secrets.
impl std::fmt::Debug for BucketSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketSpec")
            .field("name", &self.name)
            .field("settings", &self.settings.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("directory", &self.directory)
            .field("allow_hosts", &self.allow_hosts)
            .field("memory_limit", &self.memory_limit)
            .field("call_timeout", &self.call_timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("secrets", &self.secrets)
            .field("log_lines_per_minute", &self.log_lines_per_minute)
            .finish_non_exhaustive()
    }
}

impl BucketSpec {
    /// The authorities the plugin may reach: those of every http(s) URL among
    /// its settings (and of `token_uri` in a JSON-valued setting), the same prefixed with the `bucket` setting (S3
    /// virtual-hosted addressing: `bucket.endpoint-host`), and `allow_hosts`.
    pub fn allowed_authorities(&self) -> BTreeSet<String> {
        let bucket = self.settings.iter().find(|(k, _)| k == "bucket").map(|(_, v)| v.to_ascii_lowercase());
        let from_settings = self.settings.iter().filter_map(|(_, v)| setting_authority(v)).flat_map(|a| {
            let virtual_hosted = bucket.as_ref().filter(|b| !b.is_empty()).map(|b| format!("{b}.{a}"));
            std::iter::once(a).chain(virtual_hosted)
        });
        let extra = self.allow_hosts.iter().filter_map(|h| {
            url_authority(h).or_else(|| url_authority(&format!("https://{h}")).filter(|_| h.contains(':')))
        });
        from_settings.chain(extra).collect()
    }
}

/// The authority a setting value lets its plugin reach: an http(s) URL's, or
/// for a JSON object (a GCS service-account key) its `token_uri`'s.
fn setting_authority(value: &str) -> Option<String> {
    url_authority(value).or_else(|| {
        let json: serde_json::Value = serde_json::from_str(value).ok()?;
        url_authority(json.get("token_uri")?.as_str()?)
    })
}

/// What a successful `put-block` came to, with what the plugin reported
/// about the object during the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Uploaded, or already present.
    pub outcome: Outcome,
    /// The version the service gave the new object (`host.object-version`).
    pub version: Option<String>,
    /// How the plugin confirmed the object holds the block's bytes
    /// (`host.object-confirmed`); `None`: only the plugin's word.
    pub confirmed: Option<Confirmation>,
}

/// Counters of one bucket's plugin calls.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that trapped.
    pub traps: AtomicU64,
    /// Calls stopped at their deadline.
    pub timeouts: AtomicU64,
    /// Calls that hit the memory cap.
    pub out_of_memory: AtomicU64,
    /// Instances created.
    pub instantiations: AtomicU64,
    /// Instances retired after a call because their resource table had
    /// grown past [`RETIRE_AT_TABLE_ENTRIES`].
    pub retired: AtomicU64,
    /// Time of each call (waiting for a free instance not included).
    pub call_seconds: crate::telemetry::Histogram,
}

/// An opened instance of the plugin with its bucket resource, and its reader
/// (opened at the first read call) when the plugin exports one.
struct Instance {
    store: Store<StoreState>,
    provider: Provider,
    bucket: ResourceAny,
    reader: Option<Arc<ReadingProvider>>,
    opened_reader: Option<ResourceAny>,
}

impl Instance {
    /// The reader resource of this instance, opened with `settings` the first time.
    async fn reader(
        &mut self,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(Arc<ReadingProvider>, ResourceAny), UploadError>> {
        let Some(reader) = self.reader.clone() else {
            return Ok(Err(UploadError::Permanent("the plugin exports no bucket-reader".into())));
        };
        if let Some(handle) = self.opened_reader {
            return Ok(Ok((reader, handle)));
        }
        let opened = reader.blockferry_uploader_bucket_reader().reader().call_open(&mut self.store, settings).await?;
        Ok(match opened {
            Ok(handle) => {
                self.opened_reader = Some(handle);
                Ok((reader, handle))
            }
            // Redacted and cut with every plugin error, by `upload_failure`.
            Err(message) => Err(UploadError::Permanent(format!("its reader refused the bucket's settings: {message}"))),
        })
    }
}

/// Runs `$call` on the reader of instance `$i` (opening it first), giving the
/// instance back with the result, as [`BucketClient::call`] expects.
macro_rules! with_reader {
    ($self:ident, $i:ident, |$r:ident, $h:ident| $call:expr) => {{
        let settings = $self.settings.clone();
        move |mut $i: Instance| async move {
            let r = match $i.reader(&settings).await {
                Ok(Ok(($r, $h))) => $call.await,
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            };
            ($i, r)
        }
    }};
}

/// A bucket reachable through its provider plugin. Calls may run concurrently.
pub struct BucketClient {
    plugin: Arc<Plugin>,
    sandbox: Sandbox,
    settings: Vec<(String, String)>,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Instance>>,
    /// Counters of this bucket's calls.
    pub stats: CallStats,
    provider: String,
}

impl std::fmt::Debug for BucketClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketClient").field("label", &self.sandbox.label).finish_non_exhaustive()
    }
}

impl BucketClient {
    /// Open the bucket described by `spec` with `plugin`: the plugin checks
    /// the settings now, so a bad setting fails here, not at the first upload.
    pub async fn open(plugin: Arc<Plugin>, spec: BucketSpec) -> Result<Self, CallError> {
        let plugin_name = plugin.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let label = format!("{plugin_name}/{}", spec.name);
        let mut settings = spec.settings.clone();
        if spec.directory.is_some() {
            settings.retain(|(k, _)| k != "root");
            settings.push(("root".into(), BUCKET_DIR_GUEST_PATH.into()));
        }
        let egress = EgressPolicy {
            label: label.clone(),
            allowed: spec.allowed_authorities(),
            denied_networks: spec.denied_networks.clone(),
            pool: ConnectionPool::new(MAX_CONNECTIONS_PER_INSTANCE * spec.max_concurrency.max(1), spec.tls.clone()),
            ..Default::default()
        };
        let secrets = spec.settings.iter().filter(|(k, _)| spec.secrets.contains(k)).map(|(_, v)| v.clone());
        let log = Arc::new(PluginLog::new(&label, secrets, spec.log_lines_per_minute));
        let sandbox = Sandbox {
            label,
            egress: Arc::new(egress),
            directory: spec.directory.clone(),
            memory_limit: spec.memory_limit,
            log,
            credentials: spec.credentials.clone(),
        };
        let mut client = Self {
            plugin,
            sandbox,
            settings,
            timeout: spec.call_timeout,
            permits: Semaphore::new(spec.max_concurrency.max(1)),
            idle: Mutex::new(Vec::new()),
            stats: CallStats::default(),
            provider: String::new(),
        };
        client.provider = client
            .call("provider", |mut i| async move {
                let r = i.provider.blockferry_uploader_bucket_uploader().bucket().call_provider(&mut i.store).await;
                (i, r)
            })
            .await?;
        // The name becomes a metric label and is shown on pages: only a short identifier will do.
        let name = client.sandbox.log.redact(&client.provider);
        if let Some(problem) = super::check::provider_name_problem(&name) {
            let err = CallError::BadProviderName {
                plugin: client.sandbox.label.clone(),
                name: super::check::shown(&name, 64),
                problem,
            };
            tracing::warn!("{err}");
            return Err(err);
        }
        Ok(client)
    }

    /// The provider's name, as the plugin reports it (`s3`, `fs`, ...).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// `plugin/bucket`, as log lines name this bucket.
    pub fn label(&self) -> &str {
        &self.sandbox.label
    }

    /// The plugin this bucket uses.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Outbound requests refused so far for this bucket.
    pub fn refused_requests(&self) -> u64 {
        self.sandbox.egress.refused.load(Ordering::Relaxed)
    }

    /// HTTP and HTTPS connections opened so far for this bucket, and requests
    /// that reused one (keep-alive).
    pub fn connections(&self) -> (u64, u64) {
        let pool = &self.sandbox.egress.pool;
        (pool.opened.load(Ordering::Relaxed), pool.reused.load(Ordering::Relaxed))
    }

    /// Upload `body` as `block` if the key is free (see `put-block` in the WIT).
    pub async fn put_block(&self, block: &BlockInfo, body: &BlockBody) -> Result<Outcome, CallError> {
        self.put_block_reported(block, body).await.map(|put| put.outcome)
    }

    /// [`put_block`](Self::put_block), with what the plugin reported about
    /// the object during the call (`host.object-version`, `host.object-confirmed`).
    pub async fn put_block_reported(&self, block: &BlockInfo, body: &BlockBody) -> Result<PutReport, CallError> {
        let block = block.clone();
        let body = body.clone();
        let result = self
            .call("put-block", |mut i| async move {
                let r = async {
                    let handle = i.store.data_mut().table.push(body)?;
                    let rep = handle.rep();
                    let result = i
                        .provider
                        .blockferry_uploader_bucket_uploader()
                        .bucket()
                        .call_put_block(&mut i.store, i.bucket, &block, handle)
                        .await;
                    // The plugin only borrowed the body: take it back (closing its
                    // file) so a long-lived instance does not accumulate bodies.
                    if result.is_ok() {
                        i.store.data_mut().table.delete(Resource::<BlockBody>::new_own(rep))?;
                    }
                    let version = i.store.data_mut().object_version(&block.key);
                    let confirmed = i.store.data_mut().object_confirmed(&block.key);
                    result.map(|r| r.map(|outcome| PutReport { outcome, version, confirmed }))
                }
                .await;
                (i, r)
            })
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// Whether this bucket's plugin exports the `bucket-reader`.
    pub fn can_read(&self) -> bool {
        self.plugin.can_read()
    }

    /// Fails unless the plugin can read, naming `what` the caller wanted.
    fn require_reader(&self, what: &'static str) -> Result<(), CallError> {
        if self.can_read() {
            return Ok(());
        }
        Err(CallError::NoReader { plugin: self.sandbox.label.clone(), what })
    }

    /// Read the object under `key` into `sink`: what the plugin says the object
    /// is, and what the sink received; `None` when nothing is stored there.
    pub async fn get(&self, key: &str, sink: BlockSink) -> Result<Option<(RemoteObject, Received)>, CallError> {
        self.require_reader("read objects")?;
        let key = key.to_string();
        let lent = sink.clone();
        let result = self
            .call(
                "get",
                with_reader!(self, i, |reader, handle| async {
                    let sink = i.store.data_mut().table.push(lent)?;
                    let rep = sink.rep();
                    let result = reader
                        .blockferry_uploader_bucket_reader()
                        .reader()
                        .call_get(&mut i.store, handle, &key, sink)
                        .await;
                    if result.is_ok() {
                        i.store.data_mut().table.delete(Resource::<BlockSink>::new_own(rep))?;
                    }
                    result
                }),
            )
            .await?;
        let Some(remote) = result.map_err(|e| upload_failure(&self.sandbox.log, e))? else {
            return Ok(None);
        };
        let received = sink.finish().map_err(|e| CallError::Plugin(PluginFailure::Transient(e)))?;
        Ok(Some((remote, received)))
    }

    /// One page of the objects under `prefix`, after the key `after`.
    pub async fn list(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<ObjectPage, CallError> {
        self.require_reader("list objects")?;
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        let result = self
            .call(
                "list",
                with_reader!(self, i, |reader, handle| reader.blockferry_uploader_bucket_reader().reader().call_list(
                    &mut i.store,
                    handle,
                    &prefix,
                    after.as_deref(),
                    limit.min(1000)
                )),
            )
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// Whether the bucket exists and its credentials work.
    pub async fn health(&self) -> Result<(), CallError> {
        self.require_reader("check the bucket's health")?;
        let result = self
            .call(
                "health",
                with_reader!(self, i, |reader, handle| reader
                    .blockferry_uploader_bucket_reader()
                    .reader()
                    .call_health(&mut i.store, handle)),
            )
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// Uploads under `prefix` that were started and never completed.
    pub async fn incomplete_uploads(&self, prefix: &str) -> Result<Vec<IncompleteUpload>, CallError> {
        self.require_reader("list incomplete uploads")?;
        let prefix = prefix.to_string();
        let result = self
            .call(
                "incomplete-uploads",
                with_reader!(self, i, |reader, handle| reader
                    .blockferry_uploader_bucket_reader()
                    .reader()
                    .call_incomplete_uploads(&mut i.store, handle, &prefix)),
            )
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// Abort an incomplete upload found by [`incomplete_uploads`](Self::incomplete_uploads).
    pub async fn abort_upload(&self, upload: &IncompleteUpload) -> Result<(), CallError> {
        self.require_reader("abort incomplete uploads")?;
        let upload = upload.clone();
        let result = self
            .call(
                "abort-upload",
                with_reader!(self, i, |reader, handle| reader
                    .blockferry_uploader_bucket_reader()
                    .reader()
                    .call_abort_upload(&mut i.store, handle, &upload)),
            )
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// What the bucket holds under `key`.
    pub async fn stat(&self, key: &str) -> Result<Option<RemoteObject>, CallError> {
        let key = key.to_string();
        let result = self
            .call("stat", |mut i| async move {
                let r = i
                    .provider
                    .blockferry_uploader_bucket_uploader()
                    .bucket()
                    .call_stat(&mut i.store, i.bucket, &key)
                    .await;
                (i, r)
            })
            .await?;
        result.map_err(|e| upload_failure(&self.sandbox.log, e))
    }

    /// Run one call on an idle or new instance, within the deadline. The
    /// instance goes back to the pool only if the call returned normally.
    async fn call<R, F, Fut>(&self, name: &'static str, f: F) -> Result<R, CallError>
    where
        F: FnOnce(Instance) -> Fut,
        Fut: Future<Output = (Instance, wasmtime::Result<R>)>,
    {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let run = async {
            let idle = self.idle.locked().pop();
            let mut instance = match idle {
                Some(instance) => instance,
                None => self.instantiate(deadline).await?,
            };
            instance.store.data_mut().begin_call(deadline);
            instance.store.set_epoch_deadline(1);
            let (mut instance, result) = f(instance).await;
            match result {
                Ok(value) => {
                    if instance.store.data_mut().table.iter_mut().count() <= RETIRE_AT_TABLE_ENTRIES {
                        self.idle.locked().push(instance);
                    } else {
                        self.stats.retired.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(value)
                }
                Err(e) => Err(self.classify(name, &instance, e)),
            }
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout + DEADLINE_GRACE, run).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(name)),
        };
        self.sandbox.log.flush_dropped();
        self.stats.call_seconds.observe(started.elapsed());
        result
    }

    async fn instantiate(&self, deadline: Instant) -> Result<Instance, CallError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let fail = |detail: String| CallError::Instantiate {
            plugin: self.sandbox.label.clone(),
            detail: guest_text(&self.sandbox.log, detail, MAX_GUEST_TEXT),
        };
        let mut store = new_store(&self.plugin.engine, &self.sandbox, deadline).map_err(|e| fail(format!("{e:#}")))?;
        let (provider, reader) = self.plugin.instantiate(&mut store).await.map_err(|e| fail(format!("{e:#}")))?;
        let opened =
            provider.blockferry_uploader_bucket_uploader().bucket().call_open(&mut store, &self.settings).await;
        match opened {
            Ok(Ok(bucket)) => {
                Ok(Instance { store, provider, bucket, reader: reader.map(Arc::new), opened_reader: None })
            }
            Ok(Err(message)) => {
                let message = guest_text(&self.sandbox.log, message, MAX_GUEST_TEXT);
                Err(CallError::Plugin(PluginFailure::Open { plugin: self.sandbox.label.clone(), message }))
            }
            Err(e) => Err(fail(format!("{e:#}"))),
        }
    }

    fn timed_out(&self, call: &'static str) -> CallError {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let err = CallError::Timeout {
            plugin: self.sandbox.label.clone(),
            call,
            timeout_ms: self.timeout.as_millis() as u64,
        };
        tracing::warn!("{err}");
        err
    }

    /// Turn a failed call into its typed error.
    fn classify(&self, call: &'static str, instance: &Instance, e: wasmtime::Error) -> CallError {
        let plugin = self.sandbox.label.clone();
        let err = if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return self.timed_out(call);
        } else if instance.store.data().hit_memory_cap() {
            self.stats.out_of_memory.fetch_add(1, Ordering::Relaxed);
            CallError::OutOfMemory { plugin, call, limit_bytes: self.sandbox.memory_limit }
        } else {
            self.stats.traps.fetch_add(1, Ordering::Relaxed);
            CallError::Trap { plugin, call, detail: guest_text(&self.sandbox.log, format!("{e:?}"), MAX_GUEST_TEXT) }
        };
        tracing::warn!("{err}");
        err
    }
}

/// A store for one instance of a plugin in `sandbox`, its first call ending
/// at `deadline`: memory capped, interrupted at its deadline, yielding to
/// other tasks at every epoch tick.
pub(super) fn new_store(engine: &Engine, sandbox: &Sandbox, deadline: Instant) -> anyhow::Result<Store<StoreState>> {
    let mut store = Store::new(engine, StoreState::new(sandbox)?);
    store.limiter(|s| s.limiter());
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline() { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
    });
    store.data_mut().begin_call(deadline);
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Longest text the host keeps from a plugin (an error message, its name):
/// what a plugin returns ends up in logs, `.meta` files and metric labels.
const MAX_GUEST_TEXT: usize = 4096;

/// `text` from a plugin, its bucket's secrets redacted, cut to `max` bytes
/// (at a character boundary).
fn guest_text(log: &PluginLog, text: String, max: usize) -> String {
    let mut text = log.redact(&text);
    if text.len() > max {
        let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let dropped = text.len() - cut;
        text.truncate(cut);
        text.push_str(&format!("… ({dropped} more bytes cut by the host)"));
    }
    text
}

/// Map the plugin's own error to the host's, its text redacted and cut.
fn upload_failure(log: &PluginLog, e: UploadError) -> CallError {
    CallError::Plugin(match e {
        UploadError::Transient(m) => PluginFailure::Transient(guest_text(log, m, MAX_GUEST_TEXT)),
        UploadError::Permanent(m) => PluginFailure::Permanent(guest_text(log, m, MAX_GUEST_TEXT)),
        UploadError::HashMismatch(remote) => PluginFailure::HashMismatch(remote),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: &[(&str, &str)], allow_hosts: &[&str]) -> BucketSpec {
        BucketSpec {
            name: "b".into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            directory: None,
            allow_hosts: allow_hosts.iter().map(|s| s.to_string()).collect(),
            denied_networks: Vec::new(),
            memory_limit: 1 << 20,
            call_timeout: Duration::from_secs(1),
            max_concurrency: 1,
            secrets: Vec::new(),
            log_lines_per_minute: 60,
            tls: Default::default(),
            credentials: None,
        }
    }

    #[test]
    fn allow_list_comes_from_url_settings_and_allow_hosts_only() {
        let s = spec(
            &[("endpoint", "https://s3.eu-west-1.amazonaws.com"), ("bucket", "Blocks"), ("region", "eu-west-1")],
            &["proxy.internal:3128"],
        );
        let allowed: Vec<String> = s.allowed_authorities().into_iter().collect();
        let key = r#"{"type":"service_account","token_uri":"https://oauth2.googleapis.com/token","client_email":"x"}"#;
        let gcs = spec(&[("service_account_json", key)], &[]);
        assert_eq!(gcs.allowed_authorities().into_iter().collect::<Vec<_>>(), ["oauth2.googleapis.com:443"]);
        let shown = format!("{:?}", spec(&[("secret_access_key", "hunter2")], &[]));
        assert!(shown.contains("secret_access_key") && !shown.contains("hunter2"), "{shown}");
        assert_eq!(
            allowed,
            ["blocks.s3.eu-west-1.amazonaws.com:443", "proxy.internal:3128", "s3.eu-west-1.amazonaws.com:443"]
        );
    }
}
