//! `consensus-sim`: stream generated blocks to blockferry as a consensus node
//! does, and print acknowledgement latency and throughput.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use blockferry_sim::{PublisherOptions, publish};
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
    let opts = PublisherOptions {
        endpoint: args.endpoint,
        first_block: args.first,
        blocks: args.blocks,
        block_size: args.block_size,
        interval: Duration::from_millis(args.interval_ms),
        soft_limit: args.soft_limit,
        max_unacked: args.max_unacked,
        ack_timeout: Duration::from_secs(args.ack_timeout_s),
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
