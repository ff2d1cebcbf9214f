//! `blockferry demo`: push generated blocks through the configured bucket
//! plugins (by default the `fs` provider into a local directory) and show what
//! landed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use blockferry::config::Config;
use blockferry::plugin::{
    BlockBody, BlockInfo, BucketClient, EngineSettings, Outcome, PluginRuntime,
};
use clap::Args;
use futures::StreamExt;
use md5::{Digest, Md5};

/// Where `scripts/build-plugins.sh` puts the `fs` provider.
const DEFAULT_FS_PLUGIN: &str = "target/wasm32-wasip2/plugin/blockferry_fs.wasm";

/// Options of `blockferry demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Config to use; without it, the embedded default: one `fs` bucket under --dir.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Working directory of the embedded default (bucket and plugin cache).
    #[arg(long, default_value = "blockferry-demo")]
    dir: PathBuf,
    /// The `fs` provider component used by the embedded default.
    #[arg(long, env = "BLOCKFERRY_FS_PLUGIN", default_value = DEFAULT_FS_PLUGIN)]
    fs_plugin: PathBuf,
    /// Number of blocks to generate.
    #[arg(long, default_value_t = 20)]
    blocks: u64,
    /// First block number.
    #[arg(long, default_value_t = 0)]
    first: u64,
}

/// The embedded default: one `fs` bucket in `dir/bucket`.
fn embedded_default(dir: &Path, fs_plugin: &Path) -> anyhow::Result<Config> {
    let plugin = std::path::absolute(fs_plugin)?;
    let text = format!(
        "[plugins]\ncache_dir = \"plugin-cache\"\n\n[[buckets]]\nname = \"local\"\nplugin = {plugin:?}\ndirectory = \"bucket\"\n"
    );
    std::fs::create_dir_all(dir.join("bucket"))
        .with_context(|| format!("creating {}", dir.join("bucket").display()))?;
    Ok(Config::parse(&text, Path::new("<embedded default>"), dir)?)
}

/// Deterministic block bytes: 1 to 64 KiB, different for every number.
fn generated_block(number: u64) -> Vec<u8> {
    let size = 1024 + (number.wrapping_mul(2_654_435_761) % (63 * 1024)) as usize;
    let mut state = number ^ 0x9e37_79b9_7f4a_7c15;
    let mut bytes = format!("demo block {number}\n").into_bytes();
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            if !args.fs_plugin.exists() {
                anyhow::bail!(
                    "the fs provider {} does not exist; build it with `scripts/build-plugins.sh` or pass --fs-plugin",
                    args.fs_plugin.display()
                );
            }
            embedded_default(&args.dir, &args.fs_plugin)?
        }
    };
    anyhow::ensure!(
        !config.buckets.is_empty(),
        "the config has no [[buckets]]; add one (see `blockferry init`)"
    );
    let settings = EngineSettings {
        pooling: config.plugins.pooling,
        max_instances: config.plugins.max_instances,
    };
    let runtime = PluginRuntime::new(&settings, Some(&config.plugins.cache_dir))?;
    let mut buckets = Vec::new();
    for b in &config.buckets {
        let plugin = runtime
            .load(&b.plugin, b.sha256.as_deref())
            .with_context(|| format!("bucket {}", b.name))?;
        let client = BucketClient::open(plugin, b.spec(config.denied_networks()))
            .await
            .with_context(|| format!("opening bucket {}", b.name))?;
        println!(
            "bucket {:<12} provider {:<6} plugin {}",
            b.name,
            client.provider(),
            b.plugin.display()
        );
        buckets.push((Arc::new(client), b.directory.clone(), b.concurrency));
    }
    let mut failures = 0;
    for (client, directory, concurrency) in &buckets {
        let (mut uploaded, mut present) = (0, 0);
        let blocks = (args.first..args.first + args.blocks).map(|n| {
            let bytes = generated_block(n);
            let info = BlockInfo {
                number: n,
                size: bytes.len() as u64,
                md5: Md5::digest(&bytes).to_vec(),
                key: format!("{n:036}.blk"),
                content_type: "application/octet-stream".into(),
            };
            let client = client.clone();
            async move {
                let outcome = client.put_block(&info, &BlockBody::from_bytes(bytes)).await;
                (info, outcome)
            }
        });
        let mut results = futures::stream::iter(blocks).buffer_unordered(*concurrency);
        while let Some((info, outcome)) = results.next().await {
            match outcome {
                Ok(Outcome::Uploaded) => uploaded += 1,
                Ok(Outcome::AlreadyPresent) => present += 1,
                Err(e) => {
                    failures += 1;
                    eprintln!("block {} to {}: {e}", info.number, client.label());
                }
            }
        }
        println!(
            "{}: {uploaded} uploaded, {present} already present, {} failed",
            client.label(),
            args.blocks - uploaded - present
        );
        if let Some(dir) = directory {
            print_listing(dir)?;
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Print what a filesystem bucket holds (objects only, not its bookkeeping).
fn print_listing(dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<(String, u64)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    entries.sort();
    let total: u64 = entries.iter().map(|e| e.1).sum();
    println!(
        "{} holds {} objects, {total} bytes:",
        dir.display(),
        entries.len()
    );
    for (name, size) in entries.iter().take(5) {
        println!("  {name}  {size} bytes");
    }
    if entries.len() > 5 {
        println!("  … ({} more)", entries.len() - 5);
    }
    Ok(())
}
