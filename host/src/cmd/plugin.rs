//! `blockferry plugin …`: check a provider component, and run the
//! conformance suite against a live bucket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use blockferry::config::Config;
use blockferry::config::Credentials;
use blockferry::conformance::{self, SuiteOptions};
use blockferry::plugin::check::{provider_name_problem, shown};
use blockferry::plugin::logs::{DEFAULT_LINES_PER_MINUTE, escape_controls};
use blockferry::plugin::network::DEFAULT_DENIED_NETWORKS;
use blockferry::plugin::{BucketSpec, CONTRACT_VERSION, EngineSettings, PluginRuntime};
use clap::{Args, Subcommand};

/// Plugin tools.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Check that FILE is a provider this host can run; print its world,
    /// version, provider name, imports and exports.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
    },
    /// Run the conformance suite: every promise of the plugin contract,
    /// checked against the live bucket the settings name (an emulator or a
    /// real bucket), under a scratch key prefix. Prints a checklist; exit 0
    /// only when no check fails.
    Test(TestArgs),
}

/// `blockferry plugin test`.
#[derive(Args)]
pub struct TestArgs {
    /// The component file (`.wasm`).
    file: PathBuf,
    /// Take the bucket's settings, credentials and sandbox from this config
    /// (with --bucket).
    #[arg(long, requires = "bucket", conflicts_with_all = ["setting", "directory"])]
    config: Option<PathBuf>,
    /// The `[[buckets]]` table of --config to test; without --config, the
    /// bucket's name in the --credentials file (default `plugin-test`).
    #[arg(long)]
    bucket: Option<String>,
    /// A provider setting, KEY=VALUE (repeat it), instead of --config.
    #[arg(long, value_name = "KEY=VALUE")]
    setting: Vec<String>,
    /// A credentials file (mode 600) whose `[buckets.NAME]` table holds the
    /// secret settings, with --setting.
    #[arg(long, conflicts_with = "config")]
    credentials: Option<PathBuf>,
    /// The directory a filesystem provider may use, with --setting.
    #[arg(long)]
    directory: Option<PathBuf>,
    /// Write every key under this prefix (default
    /// `blockferry-plugin-test/<time>-<pid>/`).
    #[arg(long)]
    prefix: Option<String>,
    /// Size of the large block, in bytes: past the provider's multipart or
    /// resumable threshold.
    #[arg(long, default_value_t = 12 * 1024 * 1024)]
    large_block_bytes: usize,
    /// Deadline of one call, in milliseconds (with --setting).
    #[arg(long, default_value_t = 30_000)]
    call_timeout_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Run a plugin subcommand.
pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check { file } => check(file).await,
        PluginCommand::Test(args) => test(args).await,
    }
}

/// The bucket spec and credential keys `args` describe.
fn test_spec(args: &TestArgs) -> anyhow::Result<(BucketSpec, Vec<String>)> {
    if let Some(path) = &args.config {
        let config = Config::load(path)?;
        let name = args.bucket.as_deref().unwrap_or_default();
        let bucket = config.buckets.iter().find(|b| b.name == name).with_context(|| {
            let names: Vec<&str> = config.buckets.iter().map(|b| b.name.as_str()).collect();
            format!("--bucket {name}: {} has no such bucket (its buckets: {})", path.display(), names.join(", "))
        })?;
        let keys = bucket.secrets.pairs().map(|(k, _)| k).collect();
        return Ok((bucket.spec(config.denied_networks()), keys));
    }
    let mut settings = Vec::new();
    for pair in &args.setting {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--setting {pair:?} is not KEY=VALUE; write e.g. --setting bucket=blocks"))?;
        settings.push((k.to_string(), v.to_string()));
    }
    let name = args.bucket.clone().unwrap_or_else(|| "plugin-test".into());
    let mut keys = Vec::new();
    if let Some(path) = &args.credentials {
        let secrets = Credentials::load(path)?.into_buckets().find(|(b, _)| *b == name).map(|(_, s)| s);
        let secrets = secrets.with_context(|| format!("{} has no [buckets.{name}] table", path.display()))?;
        for (k, v) in secrets.pairs() {
            keys.push(k.clone());
            settings.push((k, v));
        }
    }
    let spec = BucketSpec {
        name,
        settings,
        directory: args.directory.clone(),
        allow_hosts: Vec::new(),
        denied_networks: DEFAULT_DENIED_NETWORKS.iter().filter_map(|n| n.parse().ok()).collect(),
        memory_limit: 64 << 20,
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        max_concurrency: 4,
        secrets: keys.clone(),
        log_lines_per_minute: DEFAULT_LINES_PER_MINUTE,
        tls: Default::default(),
        credentials: None,
    };
    Ok((spec, keys))
}

async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (spec, credential_keys) = test_spec(&args)?;
    let runtime = PluginRuntime::new(&EngineSettings { pooling: false, ..Default::default() }, None)?;
    let plugin = runtime.load(&args.file, None)?;
    let prefix = args.prefix.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("blockferry-plugin-test/{ms}-{}/", std::process::id())
    });
    let opts = SuiteOptions { spec, credential_keys, prefix, large_block_bytes: args.large_block_bytes };
    let report = conformance::run(plugin, opts).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        println!(
            "the objects written are under {} (the plugin contract has no delete: remove them with the \
             provider's own tools, or test against a scratch bucket)",
            report.prefix
        );
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
