//! `blockferry plugin …`: check a provider component.

use std::path::PathBuf;
use std::process::ExitCode;

use blockferry::plugin::check::{provider_name_problem, shown};
use blockferry::plugin::logs::escape_controls;
use blockferry::plugin::{CONTRACT_VERSION, EngineSettings, PluginRuntime};
use clap::Subcommand;

/// Plugin tools.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Check that FILE is a provider this host can run; print its world,
    /// version, provider name, imports and exports.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
    },
}

/// Run a plugin subcommand.
pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check { file } => check(file).await,
    }
}

async fn check(file: PathBuf) -> anyhow::Result<ExitCode> {
    let runtime = PluginRuntime::new(&EngineSettings { pooling: false, ..Default::default() }, None)?;
    let plugin = match runtime.load(&file, None) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let provider = match plugin.provider_name().await {
        Ok(name) => name,
        Err(e) => {
            eprintln!(
                "error: {} loads but its `provider` function failed: {}",
                file.display(),
                escape_controls(&e.to_string())
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(problem) = provider_name_problem(&provider) {
        eprintln!(
            "error: {} names its provider {}, which is not a short identifier ({problem}); \
             the host refuses it: the plugin is faulty or hostile",
            file.display(),
            shown(&provider, 64)
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("file:     {}", file.display());
    println!("sha256:   {}", plugin.sha256);
    println!("world:    {} (this host implements {CONTRACT_VERSION})", plugin.report.world());
    println!("provider: {provider}");
    println!("imports:");
    for i in &plugin.report.imports {
        println!("  {}", escape_controls(i));
    }
    println!("exports:");
    for e in &plugin.report.exports {
        println!("  {}", escape_controls(e));
    }
    if plugin.can_read() {
        println!("reads:    yes (bucket-reader: {})", blockferry::plugin::check::READER_FEATURES);
    } else {
        println!(
            "reads:    no — it exports no bucket-reader, so its buckets get uploads only: no {}; \
             rebuild it against the `reading-provider` world to offer them",
            blockferry::plugin::check::READER_FEATURES
        );
    }
    println!("ok: {} is a compatible provider", file.display());
    Ok(ExitCode::SUCCESS)
}
