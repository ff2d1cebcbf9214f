//! `blockferry run`: the sidecar. Receives the consensus node's block stream
//! (`ingest`), stores blocks durably, uploads them to every bucket through
//! their plugins, resumes unfinished uploads at start-up and deletes local
//! blocks once retention allows.
//!
//! `--generate N` (generated blocks) or `--replay DIR` (real block files)
//! feeds it from the built-in consensus-node simulator, over real gRPC to its
//! own ingest endpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use blockferry::buffer::BlockBuffer;
use blockferry::config::Config;
use blockferry::http::{Http, Started};
use blockferry::ingest::Ingest;
use blockferry::metrics::Sources;
use blockferry::plugin::{EngineSettings, PluginRuntime};
use blockferry::publish::Publisher;
use blockferry::reload::{self, ConfigInForce, Live, Stages};
use blockferry::store::BlockStore;
use blockferry::upload::{
    BlockNodeAcks, BucketArchive, Census, Target, UploadManager, census_of_check, run_retention, spawn_retention,
};
use clap::Args;

/// How often the config, credentials and plugin files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Where `scripts/build-plugins.sh` puts the `fs` provider.
const DEFAULT_FS_PLUGIN: &str = "target/wasm32-wasip2/plugin/blockferry_fs.wasm";

/// Options of `blockferry run`.
#[derive(Args)]
pub struct RunArgs {
    /// Config file; without it, the embedded default: one `fs` bucket under --dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Working directory of the embedded default (store, bucket, plugin cache).
    #[arg(long, default_value = "blockferry-demo")]
    pub dir: PathBuf,
    /// The `fs` provider component used by the embedded default.
    #[arg(long, env = "BLOCKFERRY_FS_PLUGIN", default_value = DEFAULT_FS_PLUGIN)]
    pub fs_plugin: PathBuf,
    /// Listen for the consensus node here instead of `ingest.listen`
    /// (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR", env = "BLOCKFERRY_INGEST_LISTEN")]
    pub listen: Option<String>,
    /// Serve metrics, health and the status page here instead of `http.listen`.
    #[arg(long, value_name = "ADDR", env = "BLOCKFERRY_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Publish this many generated blocks to the ingest endpoint from the
    /// built-in consensus-node simulator (deterministic blocks).
    #[arg(long, default_value_t = 0)]
    pub generate: u64,
    /// Number of the first generated block (default: the block after the
    /// newest stored one).
    #[arg(long)]
    pub first: Option<u64>,
    /// Size of each generated block, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub block_size: usize,
    /// Time between generated blocks, in milliseconds (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0)]
    pub block_interval_ms: u64,
    /// Publish the real blocks of this directory (`<number>.blk` /
    /// `<number>.blk.gz` files, consecutive) item by item from the built-in
    /// consensus-node simulator, exactly as the files hold them.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["generate", "first", "block_size"])]
    pub replay: Option<PathBuf>,
    /// Exit once every stored block is final in every bucket (after one
    /// retention pass).
    #[arg(long)]
    pub exit_when_drained: bool,
}

/// The embedded default: one `fs` bucket in `dir/bucket`, store in `dir/blocks`.
pub fn embedded_default(dir: &Path, fs_plugin: &Path) -> anyhow::Result<Config> {
    anyhow::ensure!(
        fs_plugin.exists(),
        "the fs provider {} does not exist; build it with `scripts/build-plugins.sh` or pass --fs-plugin",
        fs_plugin.display()
    );
    let plugin = std::path::absolute(fs_plugin)?;
    let text = format!(
        "[store]\ndir = \"blocks\"\n[plugins]\ncache_dir = \"plugin-cache\"\n\n\
         [[buckets]]\nname = \"local\"\nplugin = {plugin:?}\ndirectory = \"bucket\"\n"
    );
    blockferry::store::create_dir_all_durably(&dir.join("bucket"))
        .with_context(|| format!("creating {}", dir.join("bucket").display()))?;
    Ok(Config::parse(&text, Path::new("<embedded default>"), dir)?)
}

/// The config named by `--config`, or the embedded default.
pub fn config_of(config: Option<&Path>, dir: &Path, fs_plugin: &Path) -> anyhow::Result<Config> {
    match config {
        Some(path) => Ok(Config::load(path)?),
        None => embedded_default(dir, fs_plugin),
    }
}

/// The plugin runtime of `config` (engine settings, compiled-artifact cache).
pub fn plugin_runtime(config: &Config) -> anyhow::Result<Arc<PluginRuntime>> {
    let settings = EngineSettings { pooling: config.plugins.pooling, max_instances: config.plugins.max_instances };
    Ok(Arc::new(PluginRuntime::new(&settings, Some(&config.plugins.cache_dir))?))
}

/// Load every bucket's plugin and open the bucket.
pub async fn open_targets(runtime: &Arc<PluginRuntime>, config: &Config) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    for b in &config.buckets {
        let target = Target::open(runtime, b, config.denied_networks()).await?;
        tracing::info!(bucket = %b.name, provider = target.client.provider(), "bucket ready");
        targets.push(target);
    }
    Ok(targets)
}

/// Run the sidecar.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = config_of(args.config.as_deref(), &args.dir, &args.fs_plugin)?;
    super::apply_log_level(&config.log.level);
    // The operators' endpoints answer at once ("starting" until start-up is done).
    let http_listen = args.http_listen.as_deref().unwrap_or(&config.http.listen);
    let http_listener = tokio::net::TcpListener::bind(http_listen).await.with_context(|| {
        format!("cannot serve metrics and the status page on {http_listen} (http.listen): is another process using it? choose another address")
    })?;
    tracing::info!(address = %http_listener.local_addr()?, "http: /metrics, /healthz, /readyz, /api/status, status page");
    let started = Arc::new(Started::default());
    let http_server = tokio::spawn(Http::serve(http_listener, started.clone()));
    let store = Arc::new(BlockStore::open(&config.store.dir, config.store.compression)?);
    let names = config.upload_buckets();
    let report = store.recover(&names)?;
    tracing::info!(
        blocks = report.blocks,
        rebuilt_meta = report.rebuilt_meta,
        removed_tmp = report.removed_tmp,
        removed_orphan_meta = report.removed_orphan_meta,
        "store recovered"
    );
    let runtime = plugin_runtime(&config)?;
    let targets = if config.mode.uploads() { open_targets(&runtime, &config).await? } else { Vec::new() };
    // Every .meta is read once, after this, in the background: the start-up
    // check rebuilds those a power cut tore, queues each block to the buckets
    // it is not final in, and counts the census.
    let census = Arc::new(Census::default());
    let (retention_settings, retention_rx) =
        tokio::sync::watch::channel(blockferry::reload::retention_settings(&config));
    let (count, counted) = {
        let settings = retention_rx.borrow();
        census_of_check(census.clone(), settings.buckets.clone(), settings.required)
    };
    let manager =
        Arc::new(UploadManager::start_checking(store.clone(), targets.clone(), config.upload.clone(), count, counted));

    let streams = config.streams();
    let buffer = Arc::new(BlockBuffer::new(config.buffer.clone(), streams));
    let pruner = buffer.spawn_pruner();
    let publisher = streams.then(|| {
        Arc::new(Publisher::start(
            config.publish.clone(),
            config.block_nodes.clone(),
            buffer.clone(),
            Some(store.clone()),
            Some(Arc::new(BucketArchive::new(manager.clone(), store.ext(), config.ingest.max_block_bytes as u64))),
        ))
    });
    let acks = {
        let buffer = buffer.clone();
        move || if streams { BlockNodeAcks::UpTo(buffer.highest_acked()) } else { BlockNodeAcks::NotStreaming }
    };
    let retention = spawn_retention(store.clone(), retention_rx.clone(), acks.clone(), census.clone());

    let ingest = Ingest::new(store.clone(), buffer.clone(), names.clone(), config.ingest.clone(), manager.notifier())?;
    // The ingest port opens only once the store is recovered: a publisher
    // (or a test) that reaches it finds every block's .meta in place.
    let listen = args.listen.as_deref().unwrap_or(&config.ingest.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen for the consensus node on {listen} (ingest.listen): is another process using it? choose another address")
    })?;
    let address = listener.local_addr()?;
    tracing::info!(%address, next_block = ?ingest.latest().map(|l| l + 1), "ingest: waiting for the consensus node");
    let (stop_ingest, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ingest.clone().serve(listener, async {
        let _ = stopped.await;
    }));

    let in_force = Arc::new(ConfigInForce::default());
    let sources = Arc::new(Sources {
        store: store.clone(),
        uploads: manager.clone(),
        buffer: buffer.clone(),
        ingest: ingest.clone(),
        publisher: publisher.clone(),
        readiness: Arc::default(),
        retained_blocks: Default::default(),
        census,
        config: in_force.clone(),
    });
    let http = Http::new(sources.clone(), Duration::from_secs(config.http.history_sample_secs));
    // SIGINT and SIGTERM are caught from before ready on: one sent as soon
    // as `/readyz` answers 200 shuts down cleanly.
    let shutdown = shutdown_signal()?;
    started.start(http);

    // Buckets, uploads, retention, block nodes and log level follow the config file.
    let watcher = match &args.config {
        Some(path) => {
            let stages = Stages {
                uploads: manager.clone(),
                ingest: ingest.clone(),
                publisher: publisher.clone(),
                retention: retention_settings,
                log_level: Box::new(super::apply_log_level),
            };
            let live = Live::new(path.clone(), runtime, config.clone(), &targets, stages, in_force);
            reload::watch(Arc::new(live), RELOAD_POLL)?
        }
        None => reload::ignore_hangup()?,
    };

    feed_from_simulator(&args, &format!("http://{address}"), || ingest.latest()).await?;

    if args.exit_when_drained {
        // Drained: final in every bucket and acknowledged by a block node.
        while !drained(&store, &manager).await? || buffer.state().unacked_blocks > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (s, r, a) = (store.clone(), retention_rx.borrow().clone(), acks());
        let r = tokio::task::spawn_blocking(move || run_retention(&s, &r.buckets, r.period, r.required, a)).await??;
        println!("retention: {} deleted, {} retained", r.deleted, r.retained);
    } else {
        shutdown.await;
        tracing::info!("shutting down; unfinished uploads resume at the next start");
    }
    retention.abort();
    pruner.abort();
    http_server.abort();
    watcher.abort();
    if let Some(publisher) = publisher {
        let status = publisher.status();
        println!(
            "block nodes: streaming block {} to {} ({:?})",
            status.streaming_block.map_or("-".into(), |b| b.to_string()),
            status.node.as_deref().unwrap_or("no node"),
            status.state
        );
        publisher.shutdown().await;
    }
    // A connected publisher's stream would hold a graceful shutdown open:
    // give it a moment, then stop. Nothing unacknowledged is lost.
    let _ = stop_ingest.send(());
    let mut server = server;
    match tokio::time::timeout(Duration::from_secs(2), &mut server).await {
        Ok(result) => result?.context("ingest endpoint")?,
        Err(_) => server.abort(),
    }
    for (name, s) in manager.stats() {
        println!(
            "bucket {name}: {} uploaded, {} already present, {} hash mismatches, {} failed attempts",
            s.uploaded.load(Ordering::Relaxed),
            s.already_present.load(Ordering::Relaxed),
            s.hash_mismatches.load(Ordering::Relaxed),
            s.failures.load(Ordering::Relaxed),
        );
    }
    manager.shutdown().await;
    for b in config.buckets.iter().filter(|b| b.directory.is_some()) {
        print_listing(b.directory.as_deref().unwrap_or(Path::new(".")))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stored block is final in every bucket.
async fn drained(store: &Arc<BlockStore>, manager: &UploadManager) -> anyhow::Result<bool> {
    if manager.pending() > 0 {
        return Ok(false);
    }
    let store = store.clone();
    let names: Vec<String> = manager.stats().into_iter().map(|(name, _)| name).collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        for n in store.numbers()? {
            let meta = match store.meta(n) {
                Err(blockferry::store::StoreError::NotFound(_)) => continue,
                other => other?,
            };
            if names.iter().any(|b| !meta.status(b).is_final()) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?
}

/// Catch SIGINT and SIGTERM from now on: the future ends at the first.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Print what a filesystem bucket holds (objects only, not its bookkeeping).
/// Only regular files count: a symlink the plugin made is never followed,
/// and names are shown with control characters escaped.
fn print_listing(dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<(String, u64)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            Some((
                blockferry::plugin::logs::escape_controls(&e.file_name().to_string_lossy()),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    entries.sort();
    let total: u64 = entries.iter().map(|e| e.1).sum();
    println!("{} holds {} objects, {total} bytes:", dir.display(), entries.len());
    for (name, size) in entries.iter().take(5) {
        println!("  {name}  {size} bytes");
    }
    if entries.len() > 5 {
        println!("  … ({} more)", entries.len() - 5);
    }
    Ok(())
}

/// `--generate` / `--replay`: publish blocks to the ingest endpoint from the
/// built-in consensus-node simulator, and require every one acknowledged.
#[cfg(feature = "simulators")]
async fn feed_from_simulator(args: &RunArgs, endpoint: &str, latest: impl Fn() -> Option<u64>) -> anyhow::Result<()> {
    use blockferry_sim::files::read_block_dir;
    use blockferry_sim::publisher::{PublisherOptions, publish};

    let endpoint = endpoint.to_string();
    let interval = Duration::from_millis(args.block_interval_ms);
    let simulated = if let Some(dir) = &args.replay {
        let blocks = read_block_dir(dir).with_context(|| format!("--replay {}", dir.display()))?;
        Some(PublisherOptions { interval, ..PublisherOptions::replay(endpoint, blocks) })
    } else {
        (args.generate > 0).then(|| PublisherOptions {
            endpoint,
            first_block: args.first.unwrap_or_else(|| latest().map_or(0, |l| l + 1)),
            blocks: args.generate,
            block_size: args.block_size,
            interval,
            ..PublisherOptions::default()
        })
    };
    if let Some(options) = simulated {
        let report = publish(&options).await.context("publishing blocks to the ingest endpoint")?;
        println!("consensus-node simulator:\n{}", report.summary());
        anyhow::ensure!(report.complete(), "the published blocks were not all acknowledged: {}", report.summary());
    }
    Ok(())
}

/// A build without the simulator refuses `--generate` / `--replay`.
#[cfg(not(feature = "simulators"))]
async fn feed_from_simulator(args: &RunArgs, _endpoint: &str, _latest: impl Fn() -> Option<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.generate == 0 && args.replay.is_none(),
        "--generate and --replay need the built-in consensus-node simulator, which this build leaves out; \
         build with `--features simulators` (on by default)"
    );
    Ok(())
}
