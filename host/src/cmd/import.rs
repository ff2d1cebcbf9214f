//! `blockferry import DIR`: backfill block files that already exist (a
//! consensus node's `block-<shard.realm.num>/<36 digits>.blk.gz` files, or
//! any `<number>.blk` / `<number>.blk.gz`) into the block store, pending in
//! every bucket. It does not upload: `blockferry run` does.
//!
//! Each block file is checked before it is stored, by the same rule ingest
//! applies: its (decompressed) bytes must be a serialized `Block` whose first
//! item is a `block_header` with the number in the file name, whose items are
//! each one length-delimited field (of any field number: items a newer
//! schema adds are kept as they are), with a `block_proof` among them. A file that fails is not stored; it is listed
//! with what is wrong, as are files that cannot be read, and the import exits
//! non-zero. The bytes stored are the file's, decompressed, never re-encoded.
//!
//! The consensus node's writer leaves other files beside its blocks: a
//! zero-length `<number>.mf` marker once a block is complete (accepted
//! silently) and `<number>.pnd.gz` / `<number>.pnd.json` while a block is
//! still being written (not imported; counted, so that the operator knows to
//! import again later). Any other file is skipped with a warning.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use blockferry::store::{BlockStore, StoreError};
use blockferry_proto::framing::split_block;
use blockferry_proto::item::{BlockError, ItemError, check_block};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::status::ConfigArgs;

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
    /// Files whose name is neither a block file's nor one the node's writer
    /// leaves beside its blocks.
    skipped: Vec<PathBuf>,
    /// Blocks still being written by the node (`.pnd.gz` / `.pnd.json`): the
    /// directory and block number of each, once.
    pending: BTreeSet<(PathBuf, u64)>,
    /// Blocks already stored with different bytes (kept), with the message.
    conflicts: Vec<String>,
    /// Block files that could not be read or decompressed, or whose content
    /// is not a valid block, with the error.
    unreadable: Vec<String>,
}

/// What a file is, by its name.
#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    /// `<digits>.blk` (`gz: false`) or `<digits>.blk.gz`: a block to import.
    Block { number: u64, gz: bool },
    /// `<digits>.mf`: the node's marker of a complete block.
    Marker,
    /// `<digits>.pnd.gz` or `<digits>.pnd.json`: a block the node is still writing.
    Pending(u64),
    /// Anything else.
    Foreign,
}

/// The number of `<digits><suffix>`, any number of digits.
fn numbered(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What the file named `name` is.
fn classify(name: &str) -> FileKind {
    if let Some(number) = numbered(name, ".blk.gz") {
        FileKind::Block { number, gz: true }
    } else if let Some(number) = numbered(name, ".blk") {
        FileKind::Block { number, gz: false }
    } else if numbered(name, ".mf").is_some() {
        FileKind::Marker
    } else if let Some(number) = numbered(name, ".pnd.gz").or_else(|| numbered(name, ".pnd.json")) {
        FileKind::Pending(number)
    } else {
        FileKind::Foreign
    }
}

/// Check that `bytes` are block `number`: a serialized `Block` whose items
/// pass the one rule for items ([`check_block`]) and whose header is for
/// `number`. The error says what is wrong.
fn check_file_block(number: u64, bytes: &Bytes) -> Result<(), String> {
    let items = split_block(bytes).map_err(|e| match e {
        ItemError::Malformed(m) => format!("not a serialized Block: {m}"),
        e => format!("not a serialized Block: {e}"),
    })?;
    match check_block(&items) {
        Ok(summary) if summary.number == number => Ok(()),
        Ok(summary) => Err(format!("header says block {} but the file is named for block {number}", summary.number)),
        Err(BlockError::NoItems) => Err(format!("not a serialized Block: no items ({} bytes)", bytes.len())),
        Err(e) => Err(e.to_string()),
    }
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
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let (number, gz) = match classify(&name) {
            FileKind::Block { number, gz } => (number, gz),
            FileKind::Marker => continue,
            FileKind::Pending(number) => {
                tally.pending.insert((path.parent().unwrap_or(root).to_path_buf(), number));
                continue;
            }
            FileKind::Foreign => {
                tally.skipped.push(path.clone());
                continue;
            }
        };
        let bytes = match read_block(path, gz) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tally.unreadable.push(format!("{shown}: {e:#}"));
                continue;
            }
        };
        if let Err(e) = check_file_block(number, &bytes) {
            tally.unreadable.push(format!("{shown}: {e}"));
            continue;
        }
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
    let buckets = config.upload_buckets();
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
    list(
        &format!(
            "error: {} block files could not be read or are not valid blocks, and were not imported",
            tally.unreadable.len()
        ),
        &tally.unreadable,
    );
    println!("imported {} blocks ({} already present, {} skipped)", tally.imported, tally.present, tally.skipped.len());
    if !tally.pending.is_empty() {
        println!(
            "{} blocks still being written (.pnd.gz) were not imported; import again once the node has finished them",
            tally.pending.len()
        );
    }
    if !tally.conflicts.is_empty() || !tally.unreadable.is_empty() {
        println!(
            "{} conflicting, {} unreadable or invalid: nothing was overwritten",
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
    use super::*;
    use blockferry_proto::framing::encode_block;
    use blockferry_sim::generate_block;

    #[test]
    fn file_names() {
        assert_eq!(classify(&format!("{:036}.blk.gz", 42)), FileKind::Block { number: 42, gz: true });
        assert_eq!(classify("7.blk"), FileKind::Block { number: 7, gz: false });
        assert_eq!(classify(&format!("{:036}.mf", 42)), FileKind::Marker);
        assert_eq!(classify(&format!("{:036}.pnd.gz", 43)), FileKind::Pending(43));
        assert_eq!(classify("43.pnd.json"), FileKind::Pending(43));
        assert_eq!(classify(".blk"), FileKind::Foreign);
        assert_eq!(classify("12a.blk"), FileKind::Foreign);
        assert_eq!(classify("12.blk.tmp"), FileKind::Foreign);
        assert_eq!(classify("x.mf"), FileKind::Foreign);
        assert_eq!(classify(".pnd.gz"), FileKind::Foreign);
        assert_eq!(classify("99999999999999999999999.blk"), FileKind::Foreign, "beyond u64");
    }

    fn block(items: &[Bytes]) -> Bytes {
        Bytes::from(encode_block(items))
    }

    #[test]
    fn a_real_block_passes() {
        for n in [0, 1, 7, u64::MAX] {
            assert_eq!(check_file_block(n, &block(&generate_block(n, 2000))), Ok(()), "block {n}");
        }
    }

    #[test]
    fn each_defect_is_named() {
        let items = generate_block(7, 2000);
        let err = |number, bytes: Bytes| check_file_block(number, &bytes).unwrap_err();

        assert_eq!(err(8, block(&items)), "header says block 7 but the file is named for block 8");
        assert!(err(7, block(&items[..items.len() - 1])).starts_with("no block_proof item"));
        assert_eq!(
            err(7, block(&items[1..])),
            "the first item is not a readable block_header: expected a block_header item, found round_header (field 3)"
        );
        // Items at field numbers a newer schema may use pass; a varint item does not.
        let mut future = items.clone();
        future.insert(2, Bytes::from_static(&[0xa2, 0x1f, 0x01, 0x00]));
        assert_eq!(check_file_block(7, &block(&future)), Ok(()));
        future.insert(3, Bytes::from_static(&[0xa0, 0x1f, 0x01]));
        assert!(err(7, block(&future)).starts_with("item 3 of the block: "));
        assert_eq!(err(7, Bytes::new()), "not a serialized Block: no items (0 bytes)");
        let e = err(7, Bytes::from_static(b"\x0a\xff\xff\xff\x0f garbage"));
        assert!(e.starts_with("not a serialized Block: an item claims"), "{e}");
        let e = err(7, Bytes::from_static(&[0x0b]));
        assert!(e.starts_with("not a serialized Block: "), "{e}");
        let e = err(7, block(&[Bytes::from_static(&[0xff])]));
        assert!(e.starts_with("the first item is not a readable block_header: "), "{e}");
    }
}
