//! `blockferry status`: what the local store holds and where each block stands
//! with each bucket, read from the `.meta` files one at a time (a backlog of
//! hundreds of thousands of blocks never sits in memory).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use blockferry::config::Config;
use blockferry::store::{BlockStore, BucketStatus, StoreError};
use blockferry::telemetry::now_ms;
use clap::Args;
use serde::Serialize;

/// How the store commands (`import`, `status`, `verify`) find the config: as
/// `blockferry run` does, a config file or the embedded default under --dir.
#[derive(Args)]
pub struct ConfigArgs {
    /// Config file; without it, the embedded default: one `fs` bucket under --dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Working directory of the embedded default (store, bucket, plugin cache).
    #[arg(long, default_value = "blockferry-demo")]
    pub dir: PathBuf,
    /// The `fs` provider component used by the embedded default.
    #[arg(long, env = "BLOCKFERRY_FS_PLUGIN", default_value = "target/wasm32-wasip2/plugin/blockferry_fs.wasm")]
    pub fs_plugin: PathBuf,
}

impl ConfigArgs {
    /// The config these options name (see [`super::run::config_of`]).
    pub fn load(&self) -> anyhow::Result<Config> {
        super::run::config_of(self.config.as_deref(), &self.dir, &self.fs_plugin)
    }
}

/// Open the store the config names, failing if it does not exist (a status or
/// verify of a mistyped path should not create an empty store).
pub fn open_existing_store(config: &Config) -> anyhow::Result<BlockStore> {
    let dir = &config.store.dir;
    anyhow::ensure!(dir.is_dir(), "the block store {} does not exist", dir.display());
    BlockStore::open(dir, config.store.compression)
        .with_context(|| format!("opening the block store {}", dir.display()))
}

/// Options of `blockferry status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Where the config is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the figures as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the running sidecar serves `/api/status` (default: `http.listen`).
    #[arg(long, value_name = "ADDR", env = "BLOCKFERRY_HTTP_LISTEN")]
    pub http_listen: Option<String>,
}

/// What the running sidecar says of itself (`/api/status`).
#[derive(Debug, Default, Serialize)]
pub struct SidecarFigures {
    /// The address asked.
    pub address: String,
    /// Whether it answered.
    pub running: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Whether it is ready.
    pub ready: Option<bool>,
    /// The config generation in force (1 at start, +1 per reload applied).
    pub config_generation: Option<u64>,
    /// When that config was loaded (Unix ms).
    pub config_loaded_at_ms: Option<u64>,
}

/// Ask the sidecar serving on `address` for its status.
pub fn query_sidecar(address: &str) -> SidecarFigures {
    let mut figures = SidecarFigures { address: address.to_string(), ..Default::default() };
    match get_status(address) {
        Ok(status) => {
            figures.running = true;
            figures.ready = status["ready"].as_bool();
            figures.config_generation = status["config_generation"].as_u64();
            figures.config_loaded_at_ms = status["config_loaded_at_ms"].as_u64();
        }
        Err(e) => figures.error = Some(e),
    }
    figures
}

/// `GET /api/status` over plain HTTP/1.1, with short timeouts.
fn get_status(address: &str) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(address)
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or("the address resolves to nothing")?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET /api/status HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    serde_json::from_str(body).map_err(|e| format!("not a blockferry status: {e}"))
}

/// The figures of one bucket.
#[derive(Debug, Default, Serialize)]
pub struct BucketFigures {
    /// The bucket's name.
    pub name: String,
    /// Blocks uploaded by this host.
    pub uploaded: u64,
    /// Blocks the bucket already held (uploaded by another node).
    pub already_present: u64,
    /// Blocks not attempted yet.
    pub pending: u64,
    /// Blocks whose attempts failed so far (still retried).
    pub failed: u64,
    /// Of the failed ones, those whose last error was permanent (need an operator).
    pub failed_permanent: u64,
    /// Blocks the bucket holds with different content (kept locally forever).
    pub hash_mismatch: u64,
    /// The oldest block not yet in the bucket (pending or failed), by storage time.
    pub oldest_pending: Option<u64>,
    /// Age of that block in milliseconds.
    pub lag_ms: Option<u64>,
    /// Age of that block, human readable.
    pub lag: Option<String>,
    #[serde(skip)]
    oldest_created_ms: u64,
}

/// What `blockferry status` reports.
#[derive(Debug, Default, Serialize)]
pub struct StatusReport {
    /// The store directory.
    pub store: PathBuf,
    /// Block files on disk.
    pub blocks: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Block files whose `.meta` is missing or unreadable (rebuilt by `run` at start).
    pub unreadable_meta: u64,
    /// Per configured bucket.
    pub buckets: Vec<BucketFigures>,
    /// The running sidecar, if one answers.
    pub sidecar: Option<SidecarFigures>,
}

/// Tally the store, reading one `.meta` at a time.
pub fn collect(store: &BlockStore, buckets: &[String]) -> anyhow::Result<StatusReport> {
    let now = now_ms();
    let mut report = StatusReport {
        store: store.dir().to_path_buf(),
        buckets: buckets.iter().map(|b| BucketFigures { name: b.clone(), ..Default::default() }).collect(),
        ..Default::default()
    };
    for n in store.numbers().with_context(|| format!("listing the block store {}", store.dir().display()))? {
        let meta = match store.read_meta(n) {
            Ok(meta) => meta,
            Err(StoreError::NotFound(_)) if !store.has_block(n) => continue, // deleted by retention meanwhile
            Err(e) => {
                tracing::warn!(block = n, "{e}");
                report.blocks += 1;
                report.unreadable_meta += 1;
                continue;
            }
        };
        report.blocks += 1;
        report.bytes += meta.size;
        for figures in &mut report.buckets {
            let unfinished = match meta.status(&figures.name) {
                BucketStatus::Pending => {
                    figures.pending += 1;
                    true
                }
                BucketStatus::Uploaded { .. } => {
                    figures.uploaded += 1;
                    false
                }
                BucketStatus::AlreadyPresent { .. } => {
                    figures.already_present += 1;
                    false
                }
                BucketStatus::HashMismatch { .. } => {
                    figures.hash_mismatch += 1;
                    false
                }
                BucketStatus::Failed { permanent, .. } => {
                    figures.failed += 1;
                    figures.failed_permanent += u64::from(permanent);
                    true
                }
            };
            // Numbers ascend, so on equal times the lowest number is kept.
            if unfinished && (figures.oldest_pending.is_none() || meta.created_at_ms < figures.oldest_created_ms) {
                figures.oldest_pending = Some(n);
                figures.oldest_created_ms = meta.created_at_ms;
            }
        }
    }
    for figures in &mut report.buckets {
        if figures.oldest_pending.is_some() {
            let lag = now.saturating_sub(figures.oldest_created_ms);
            figures.lag_ms = Some(lag);
            figures.lag = Some(human_duration(lag));
        }
    }
    Ok(report)
}

/// A duration in milliseconds as its two largest units: `3d 4h`, `5m 12s`, `850ms`.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let units = [(s / 86_400, "d"), (s / 3600 % 24, "h"), (s / 60 % 60, "m"), (s % 60, "s")];
    let first = units.iter().position(|&(v, _)| v > 0).unwrap_or(units.len() - 1);
    units[first..].iter().take(2).map(|(v, u)| format!("{v}{u}")).collect::<Vec<_>>().join(" ")
}

/// Print the status of the store.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = open_existing_store(&config)?;
    let names: Vec<String> = config.buckets.iter().map(|b| b.name.clone()).collect();
    let mut report = collect(&store, &names)?;
    let http = args.http_listen.as_deref().unwrap_or(&config.http.listen);
    report.sidecar = Some(query_sidecar(http));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising the status")?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("store {}: {} blocks on disk, {} bytes", report.store.display(), report.blocks, report.bytes);
    if report.unreadable_meta > 0 {
        println!(
            "  {} blocks without readable metadata (`blockferry run` rebuilds it at start)",
            report.unreadable_meta
        );
    }
    for b in &report.buckets {
        println!(
            "bucket {}: {} uploaded, {} already present, {} pending, {} failed ({} permanent), {} hash-mismatched",
            b.name, b.uploaded, b.already_present, b.pending, b.failed, b.failed_permanent, b.hash_mismatch
        );
        match (b.oldest_pending, &b.lag) {
            (Some(n), Some(lag)) => println!("  oldest pending block {n}, lag {lag}"),
            _ => println!("  nothing pending"),
        }
    }
    if let Some(sidecar) = &report.sidecar {
        print_sidecar(sidecar);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_sidecar(s: &SidecarFigures) {
    match (s.config_generation, s.config_loaded_at_ms) {
        (Some(generation), Some(at)) => println!(
            "sidecar on {}: {}, config generation {generation} loaded {} ago",
            s.address,
            if s.ready == Some(true) { "ready" } else { "not ready" },
            human_duration(now_ms().saturating_sub(at))
        ),
        _ => println!(
            "sidecar on {}: not answering ({}); is `blockferry run` running? --http-listen names its address",
            s.address,
            s.error.as_deref().unwrap_or("no status")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_000), "12s");
        assert_eq!(human_duration(312_000), "5m 12s");
        assert_eq!(human_duration(3_600_000), "1h 0m");
        assert_eq!(human_duration((3 * 86_400 + 4 * 3600 + 59) * 1000), "3d 4h");
    }
}
