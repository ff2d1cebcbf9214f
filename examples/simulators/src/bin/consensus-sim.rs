//! `consensus-sim`: stream generated blocks, or real block files, to
//! blockferry as a consensus node does, and print acknowledgement latency and
//! throughput.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use blockferry_sim::{PublisherOptions, publish, read_block_dir};
use clap::Parser;

/// Stream generated blocks to a block node (blockferry's ingest) over the
/// Hiero publish protocol and report acknowledgement latency.
#[derive(Parser, Debug)]
#[command(name = "consensus-sim", version)]
struct Args {
    /// The block node's publish endpoint.
    #[arg(long, default_value = "http://127.0.0.1:40840")]
    endpoint: String,
    /// The first block's number.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// How many blocks to publish.
    #[arg(long, default_value_t = 100)]
    blocks: u64,
    /// Target size of each serialized block, in bytes.
    #[arg(long, default_value_t = 65_536)]
    block_size: usize,
    /// Milliseconds between blocks (mainnet: 2000); 0 is full speed.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Pack requests up to this many bytes (a single larger item goes alone).
    #[arg(long, default_value_t = 2_000_000)]
    soft_limit: usize,
    /// Stop producing while this many blocks are unacknowledged.
    #[arg(long, default_value_t = 150)]
    max_unacked: u64,
    /// Give up after this many seconds without progress.
    #[arg(long, default_value_t = 30)]
    ack_timeout_s: u64,
    /// Replay the real blocks of this directory (`<number>.blk` /
    /// `<number>.blk.gz`, consecutive) item by item, exactly as the files
    /// hold them, instead of generated blocks.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["first", "blocks", "block_size"])]
    replay: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("consensus-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = match &args.replay {
        Some(dir) => PublisherOptions::replay(args.endpoint, read_block_dir(dir)?),
        None => PublisherOptions::new(args.endpoint, args.first, args.blocks, args.block_size),
    };
    let opts = PublisherOptions {
        interval: Duration::from_millis(args.interval_ms),
        soft_limit: args.soft_limit,
        max_unacked: args.max_unacked,
        ack_timeout: Duration::from_secs(args.ack_timeout_s),
        ..base
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let report = runtime.block_on(publish(&opts))?;
    print!("{}", report.summary());
    if report.complete() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("consensus-sim: {} of {} blocks acknowledged", report.acknowledged(), report.blocks);
        Ok(ExitCode::FAILURE)
    }
}
