//! `blockferry init`: write the commented example config.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The example config, every option documented (`examples/blockferry.toml`).
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/blockferry.toml");

/// Write [`EXAMPLE_CONFIG`] to `path`.
pub fn run(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    std::fs::write(path, EXAMPLE_CONFIG).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {}; edit the [[buckets]] tables, then run `blockferry run --config {}`",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
