//! Backlog drain: a store holding N small blocks (default 100,000 of 8 KiB)
//! pending in one `fs` bucket, as after a restart; measures start-up recovery
//! and the time to upload them all through the `fs` provider plugin.
//! `BACKLOG_BLOCKS=N cargo bench -p blockferry --bench backlog`
//! (after scripts/build-plugins.sh).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockferry::config::{Compression, UploadConfig};
use blockferry::plugin::{BucketClient, BucketSpec, EngineSettings, PluginRuntime};
use blockferry::store::{BlockMeta, BlockStore};
use blockferry::upload::{Target, UploadManager};
use md5::{Digest, Md5};

fn main() {
    let n: u64 = std::env::var("BACKLOG_BLOCKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = std::env::var("BACKLOG_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/blockferry_fs.wasm");
    assert!(plugin.exists(), "run scripts/build-plugins.sh first");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let store = BlockStore::open(&store_dir, Compression::None).unwrap();
    // Lay the backlog down directly (as a week of blocks would have been).
    let names = vec!["fs".to_string()];
    let block = vec![0xa5u8; 8192];
    let md5 = Md5::digest(&block);
    for i in 0..n {
        let file = format!("{i:036}.blk");
        std::fs::write(store_dir.join(&file), &block).unwrap();
        let meta = BlockMeta::new(i, file, block.len() as u64, &md5, &names);
        std::fs::write(store.meta_path(i), serde_json::to_vec(&meta).unwrap()).unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let report = store.recover(&names).unwrap();
        let recovered = started.elapsed();
        let runtime = PluginRuntime::new(&EngineSettings::default(), None).unwrap();
        let spec = BucketSpec {
            name: "fs".into(),
            settings: Vec::new(),
            directory: Some(bucket.clone()),
            allow_hosts: Vec::new(),
            denied_networks: Vec::new(),
            memory_limit: 64 << 20,
            call_timeout: Duration::from_secs(30),
            max_concurrency: concurrency,
        };
        let client = BucketClient::open(runtime.load(&plugin, None).unwrap(), spec).await.unwrap();
        let target = Target {
            name: "fs".into(),
            client: Arc::new(client),
            key: Arc::new(|n, ext| format!("{n:036}{ext}")),
            concurrency,
            prefix: String::new(),
        };
        let store = Arc::new(store);
        let started = Instant::now();
        let manager = UploadManager::start(store.clone(), vec![target], UploadConfig::default()).unwrap();
        while manager.stats()[0].1.safe() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained = started.elapsed();
        manager.shutdown().await;
        println!(
            "backlog of {n} blocks of 8 KiB to fs (concurrency {concurrency}): recovery scan {:.2} s ({} blocks), \
             drain {:.2} s = {:.0} blocks/s",
            recovered.as_secs_f64(),
            report.blocks,
            drained.as_secs_f64(),
            n as f64 / drained.as_secs_f64()
        );
    });
}
