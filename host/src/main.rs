//! The `blockferry` command: the sidecar and its tools.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// blockferry: stores a consensus node's block stream durably and uploads every
/// block to cloud buckets through WebAssembly provider plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: store blocks, upload them to every bucket, resume
    /// unfinished uploads, apply retention (without --config: the embedded
    /// default, the `fs` provider into a local directory).
    Run(cmd::run::RunArgs),
    /// Backfill existing block files (`<number>.blk`, `<number>.blk.gz`, as a
    /// consensus node writes them) from a directory into the block store,
    /// pending in every bucket; `blockferry run` uploads them.
    Import(cmd::import::ImportArgs),
    /// Per bucket: uploaded, already present, pending, failed and
    /// hash-mismatched blocks, the oldest pending block and the lag.
    Status(cmd::status::StatusArgs),
    /// Compare each local block's MD5 with what every bucket holds under its
    /// key (what the bucket reports; with --deep, the MD5 of the content
    /// downloaded). Exit 1 when anything is missing or mismatched.
    Verify(cmd::verify::VerifyArgs),
    /// Download a range of blocks from one bucket into DIR, a block store
    /// (block files and `.meta`s), checking each against the MD5 the bucket
    /// reports; never overwrites a block DIR holds. Exit 1 when objects are
    /// missing or a block could not be restored.
    Restore(cmd::restore::RestoreArgs),
    /// Write a commented example config.
    Init {
        /// Where to write it.
        #[arg(default_value = "blockferry.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Tools for provider plugins.
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cmd::run::run(args).await,
            Command::Import(args) => tokio::task::spawn_blocking(move || cmd::import::run(args)).await?,
            Command::Status(args) => tokio::task::spawn_blocking(move || cmd::status::run(args)).await?,
            Command::Verify(args) => cmd::verify::run(args).await,
            Command::Restore(args) => cmd::restore::run(args).await,
            Command::Init { path, force } => cmd::init::run(&path, force),
            Command::Plugin(c) => cmd::plugin::run(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Exit at once: tearing the runtime down would cancel tasks that
            // were started before the error (plugin instances among them)
            // and could print their cancellation as a panic after the error.
            std::process::exit(2)
        }
    }
}
