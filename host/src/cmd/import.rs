//! `blockferry import DIR`: backfill block files that already exist (a
//! consensus node's `block-<shard.realm.num>/<36 digits>.blk.gz` files, or
//! any `<number>.blk` / `<number>.blk.gz`) into the block store, pending in
//! every bucket. It does not upload: `blockferry run` does.

use std::fs::{self, File};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use blockferry::store::{BlockStore, StoreError};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::status::{ConfigArgs, upload_buckets};

/// Problems of one kind listed by name before "… and N more".
const LISTED: usize = 10;

/// Options of `blockferry import`.
#[derive(Args)]
pub struct ImportArgs {
    /// Directory of block files, searched recursively.
    #[arg(value_name = "DIR")]
    pub source: PathBuf,
    /// Where the config (and so the store) is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// What an import did.
#[derive(Debug, Default)]
struct Tally {
    imported: u64,
    present: u64,
    /// Files whose name is not a block file's.
    skipped: Vec<PathBuf>,
    /// Blocks already stored with different bytes (kept), with the message.
    conflicts: Vec<String>,
    /// Block files that could not be read or decompressed, with the error.
    unreadable: Vec<String>,
}

/// The block number of a file name and whether it is gzip-compressed:
/// `<digits>.blk` or `<digits>.blk.gz`, any number of digits.
fn block_file(name: &str) -> Option<(u64, bool)> {
    let (stem, gz) = match name.strip_suffix(".blk.gz") {
        Some(stem) => (stem, true),
        None => (name.strip_suffix(".blk")?, false),
    };
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, gz))
}

/// Every file under `root` (following symlinks to files, not to directories),
/// in path order.
fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The bytes of a block file, decompressed when `gz`.
fn read_block(path: &Path, gz: bool) -> anyhow::Result<Vec<u8>> {
    let mut file = File::open(path).context("opening")?;
    let mut bytes = Vec::new();
    if gz {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes).context("decompressing (gzip)")?;
    } else {
        file.read_to_end(&mut bytes).context("reading")?;
    }
    Ok(bytes)
}

/// Store every block file of `files`, one at a time.
fn import(
    store: &BlockStore,
    root: &Path,
    files: &[PathBuf],
    buckets: &[String],
    bar: &ProgressBar,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for path in files {
        bar.inc(1);
        let shown = path.strip_prefix(root).unwrap_or(path).display();
        let Some((number, gz)) = path.file_name().and_then(|n| block_file(&n.to_string_lossy())) else {
            tally.skipped.push(path.clone());
            continue;
        };
        let bytes = match read_block(path, gz) {
            Ok(bytes) => bytes,
            Err(e) => {
                tally.unreadable.push(format!("{shown}: {e:#}"));
                continue;
            }
        };
        let existed = store.has_block(number);
        match store.write_block(number, &bytes, buckets) {
            Ok(_) if existed => tally.present += 1,
            Ok(_) => tally.imported += 1,
            Err(e @ StoreError::Conflict { .. }) => tally.conflicts.push(format!("{shown}: {e}")),
            Err(e) => return Err(e).with_context(|| format!("storing block {number} from {}", path.display())),
        }
    }
    Ok(tally)
}

/// Print up to [`LISTED`] of `items` under `heading` to stderr.
fn list(heading: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    eprintln!("{heading}:");
    for item in items.iter().take(LISTED) {
        eprintln!("  {item}");
    }
    if items.len() > LISTED {
        eprintln!("  … and {} more", items.len() - LISTED);
    }
}

/// Import the block files under the source directory.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let source = &args.source;
    anyhow::ensure!(source.is_dir(), "{} is not a directory of block files", source.display());
    let store = BlockStore::open(&config.store.dir, config.store.compression)
        .with_context(|| format!("opening the block store {}", config.store.dir.display()))?;
    let buckets = upload_buckets(&config);
    let files = files_under(source)?;

    let bar = if std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} files  {elapsed} eta {eta}")
            .expect("a valid progress template");
        ProgressBar::new(files.len() as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let tally = import(&store, source, &files, &buckets, &bar);
    bar.finish_and_clear();
    let tally = tally?;

    if !tally.skipped.is_empty() {
        let names: Vec<String> =
            tally.skipped.iter().map(|p| p.strip_prefix(source).unwrap_or(p).display().to_string()).collect();
        list(
            &format!(
                "warning: skipped {} files whose name is not a block file's (<number>.blk or <number>.blk.gz)",
                names.len()
            ),
            &names,
        );
    }
    list(
        &format!("error: {} blocks conflict with stored ones, which are kept", tally.conflicts.len()),
        &tally.conflicts,
    );
    list(&format!("error: {} block files could not be read", tally.unreadable.len()), &tally.unreadable);
    println!("imported {} blocks ({} already present, {} skipped)", tally.imported, tally.present, tally.skipped.len());
    if !tally.conflicts.is_empty() || !tally.unreadable.is_empty() {
        println!(
            "{} conflicting, {} unreadable: nothing was overwritten",
            tally.conflicts.len(),
            tally.unreadable.len()
        );
    }
    if tally.imported > 0 {
        if buckets.is_empty() {
            println!("the writer mode does not upload, so they stay local");
        } else {
            println!(
                "`blockferry run` uploads them to {} (a running one picks them up at its next start)",
                buckets.join(", ")
            );
        }
    }
    let clean = tally.conflicts.is_empty() && tally.unreadable.is_empty();
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::block_file;

    #[test]
    fn block_file_names() {
        assert_eq!(block_file(&format!("{:036}.blk.gz", 42)), Some((42, true)));
        assert_eq!(block_file("7.blk"), Some((7, false)));
        assert_eq!(block_file(".blk"), None);
        assert_eq!(block_file("12a.blk"), None);
        assert_eq!(block_file("12.blk.tmp"), None);
        assert_eq!(block_file("99999999999999999999999.blk"), None, "beyond u64");
    }
}
