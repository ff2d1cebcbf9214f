//! The runtime itself: the engine and linker, a loaded plugin, and opening a
//! bucket's client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use super::bindings::reading::{ReadingProvider, ReadingProviderIndices};
use super::bindings::{Provider, ProviderIndices};
use super::engine::EpochTicker;
use super::sandbox::StoreState;
use super::{
    ArtifactCache, CallError, ComponentReport, EngineSettings, LoadError, Provenance, bindings, check, client, engine,
    logs, sandbox,
};

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles and links provider components; one per process.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Option<ArtifactCache>,
    ticker: Arc<EpochTicker>,
}

/// A loaded, checked and linked provider component.
pub struct Plugin {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// What it implements, imports and exports.
    pub report: ComponentReport,
    /// Whether it was compiled now or loaded from the cache.
    pub provenance: Provenance,
    pre: InstancePre<StoreState>,
    /// How to reach the `bucket-uploader` export.
    uploader: ProviderIndices,
    /// How to reach the `bucket-reader` export, when the component has one.
    reader: Option<ReadingProviderIndices>,
    pub(super) engine: Engine,
    /// Keeps the epoch advancing (deadlines firing) while the plugin lives,
    /// even if its runtime is dropped.
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

impl Plugin {
    /// A new instance in `store`, with its uploader and (if exported) reader.
    pub(super) async fn instantiate(
        &self,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<(Provider, Option<ReadingProvider>)> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let uploader = self.uploader.load(&mut *store, &instance)?;
        let reader = self.reader.as_ref().map(|r| r.load(&mut *store, &instance)).transpose()?;
        Ok((uploader, reader))
    }

    /// Whether the component exports the `bucket-reader` (restore, deep
    /// verify, serving old blocks, health checks, cleanup).
    pub fn can_read(&self) -> bool {
        self.reader.is_some()
    }

    /// The provider's name (its static `provider` function), from a
    /// throw-away instance with no settings, no filesystem and no network.
    pub async fn provider_name(&self) -> Result<String, CallError> {
        let label = format!("{}/check", self.path.display());
        let sandbox = sandbox::Sandbox {
            label: label.clone(),
            egress: Default::default(),
            directory: None,
            memory_limit: 64 << 20,
            log: Arc::new(logs::PluginLog::new(&label, [], logs::DEFAULT_LINES_PER_MINUTE)),
            credentials: None,
        };
        let fail = |detail: String| CallError::Instantiate { plugin: label.clone(), detail };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut store = client::new_store(&self.engine, &sandbox, deadline).map_err(|e| fail(format!("{e:#}")))?;
        let (provider, _) = self.instantiate(&mut store).await.map_err(|e| fail(format!("{e:#}")))?;
        provider
            .blockferry_uploader_bucket_uploader()
            .bucket()
            .call_provider(&mut store)
            .await
            .map_err(|e| CallError::Trap { plugin: label.clone(), call: "provider", detail: format!("{e:#}") })
    }
}

impl PluginRuntime {
    /// A runtime with the given engine settings, caching compiled components
    /// in `cache_dir` when one is given.
    pub fn new(settings: &EngineSettings, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        let engine = engine::build_engine(settings)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::blockferry::uploader::types::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        bindings::blockferry::uploader::host::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        let cache = cache_dir.map(ArtifactCache::open).transpose()?;
        let ticker = Arc::new(EpochTicker::start(&engine));
        Ok(Self { engine, linker, cache, ticker })
    }

    /// The engine plugins run in.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load the component at `path`: verify the pinned digest if any, check it
    /// is a compatible provider, compile it (or take it from the cache), link it.
    pub fn load(&self, path: &Path, pinned_sha256: Option<&str>) -> Result<Arc<Plugin>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = pinned_sha256
            && !expected.trim().eq_ignore_ascii_case(&sha256)
        {
            return Err(LoadError::DigestMismatch {
                path: path.to_path_buf(),
                expected: expected.trim().to_ascii_lowercase(),
                actual: sha256,
            });
        }
        check::check_header(path, &bytes)?;
        let (component, provenance) = self.compile(path, &sha256, &bytes)?;
        let report = check::inspect(&self.engine, path, &component)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::Incompatible {
            path: path.to_path_buf(),
            detail: format!(
                "{e}; a provider may import only `blockferry:uploader/host`, WASI 0.2 and wasi:http (imports: {:?})",
                report.imports
            ),
        })?;
        let reader = if report.reader {
            let indices = ReadingProviderIndices::new(&instance_pre).map_err(|e| LoadError::Incompatible {
                path: path.to_path_buf(),
                detail: format!("its bucket-reader export does not match the `reading-provider` world: {e}"),
            })?;
            Some(indices)
        } else {
            tracing::info!(
                plugin = %path.display(),
                "the plugin exports no bucket-reader: {} are not available for its buckets",
                check::READER_FEATURES
            );
            None
        };
        let uploader = ProviderIndices::new(&instance_pre).map_err(|e| LoadError::Incompatible {
            path: path.to_path_buf(),
            detail: format!("its exports do not match the `provider` world: {e}"),
        })?;
        tracing::info!(plugin = %path.display(), sha256 = %sha256, world = %report.world(), ?provenance, "plugin loaded");
        Ok(Arc::new(Plugin {
            path: path.to_path_buf(),
            sha256,
            report,
            provenance,
            pre: instance_pre,
            uploader,
            reader,
            engine: self.engine.clone(),
            _ticker: self.ticker.clone(),
        }))
    }

    fn compile(&self, path: &Path, sha256: &str, bytes: &[u8]) -> Result<(Component, Provenance), LoadError> {
        let key = ArtifactCache::key(&self.engine, sha256);
        if let Some(cache) = &self.cache
            && let Some(component) = cache.load(&self.engine, &key)
        {
            return Ok((component, Provenance::Cached));
        }
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(|e| LoadError::Compile { path: path.to_path_buf(), detail: format!("{e:#}") })?;
        if let Some(cache) = &self.cache {
            // A cache that cannot be written costs a recompile next start, not this load.
            if let Err(e) = cache.store(&key, &component) {
                tracing::warn!("{e}");
            }
        }
        Ok((component, Provenance::Compiled))
    }
}
