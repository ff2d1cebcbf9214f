//! Real blocks from files, to replay them item by item as a consensus node
//! streams them, and blocks with items a newer schema may add.
//!
//! A block file is a serialized `Block` (`<number>.blk`) or its gzip
//! (`<number>.blk.gz`, as a consensus node writes them); its items are kept
//! exactly as in the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint};

use blockferry_proto::framing::split_block;
use blockferry_proto::item::{ItemKind, check_block};

/// A block file that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum BlockFileError {
    /// The directory or a file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A file is not a block.
    #[error("{path} is not a block: {why}")]
    NotABlock {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The blocks do not follow each other.
    #[error("{dir}: block {missing} is missing (blocks must be consecutive to be streamed)")]
    Gap {
        /// The directory.
        dir: PathBuf,
        /// The first number missing.
        missing: u64,
    },
    /// No block files at all.
    #[error("{0} holds no .blk or .blk.gz files")]
    Empty(PathBuf),
}

/// Read every `.blk` / `.blk.gz` file of `dir` (not recursively): the blocks'
/// items, byte for byte, in block-number order (the number is the header's).
/// The blocks must be consecutive.
pub fn read_block_dir(dir: &Path) -> Result<Vec<Vec<Bytes>>, BlockFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BlockFileError::Io { path, source }
    };
    let mut blocks = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let gz = name.ends_with(".blk.gz");
        if !gz && !name.ends_with(".blk") {
            continue;
        }
        let raw = std::fs::read(&path).map_err(io(&path))?;
        let bytes = if gz {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io(&path))?;
            out
        } else {
            raw
        };
        let not_a_block = |why: String| BlockFileError::NotABlock { path: path.clone(), why };
        let items = split_block(&Bytes::from(bytes)).map_err(|e| not_a_block(e.to_string()))?;
        let summary = check_block(&items).map_err(|e| not_a_block(e.to_string()))?;
        blocks.push((summary.number, items));
    }
    blocks.sort_by_key(|(number, _)| *number);
    let first = blocks.first().map(|(n, _)| *n).ok_or_else(|| BlockFileError::Empty(dir.to_path_buf()))?;
    if let Some(missing) = (first..).zip(&blocks).find(|(want, (n, _))| want != n).map(|(want, _)| want) {
        return Err(BlockFileError::Gap { dir: dir.to_path_buf(), missing });
    }
    Ok(blocks.into_iter().map(|(_, items)| items).collect())
}

/// Field numbers of items no schema this build knows declares, as a newer
/// consensus node may send them: above the known ones, in categories 0-7
/// (fields 20-27), and two whose tags take two bytes (≥ 16).
pub const FUTURE_ITEM_FIELDS: [u32; 6] = [13, 18, 20, 27, 500, 16_000];

/// `items` with one item at each of [`FUTURE_ITEM_FIELDS`] inserted after the
/// header (and, for a block with a footer, one more right before it), each
/// carrying `payload`-derived bytes. Everything else is kept as it is.
pub fn with_future_items(items: &[Bytes]) -> Vec<Bytes> {
    let future = |field: u32| {
        let payload = format!("an item of a newer schema at field {field}");
        let mut out = Vec::new();
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload.as_bytes());
        Bytes::from(out)
    };
    let mut out = Vec::with_capacity(items.len() + FUTURE_ITEM_FIELDS.len() + 1);
    for (i, item) in items.iter().enumerate() {
        if ItemKind::of(item) == Ok(ItemKind::BLOCK_FOOTER) {
            out.push(future(21));
        }
        out.push(item.clone());
        if i == 0 {
            out.extend(FUTURE_ITEM_FIELDS.iter().map(|f| future(*f)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::generate_block;

    #[test]
    fn future_items_pass_the_one_rule_and_keep_the_rest() {
        let items = generate_block(5, 8192);
        let future = with_future_items(&items);
        assert_eq!(future.len(), items.len() + FUTURE_ITEM_FIELDS.len() + 1);
        assert_eq!(check_block(&future).unwrap().number, 5);
        let kept: Vec<&Bytes> = future
            .iter()
            .filter(|i| FUTURE_ITEM_FIELDS.iter().chain(&[21]).all(|f| ItemKind::of(i) != Ok(ItemKind(*f))))
            .collect();
        assert_eq!(kept, items.iter().collect::<Vec<_>>());
        // Field 500 and 16000 take a two-byte tag.
        assert!(future.iter().any(|i| i[0] == 0xa2 && i[1] == 0x1f));
    }

    #[test]
    fn gaps_and_empty_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_block_dir(dir.path()), Err(BlockFileError::Empty(_))));
        for n in [3u64, 5] {
            let bytes = blockferry_proto::framing::encode_block(&generate_block(n, 4096));
            std::fs::write(dir.path().join(format!("{n}.blk")), bytes).unwrap();
        }
        let err = read_block_dir(dir.path()).unwrap_err();
        assert!(matches!(err, BlockFileError::Gap { missing: 4, .. }), "{err}");
        std::fs::write(dir.path().join("4.blk"), b"garbage").unwrap();
        assert!(matches!(read_block_dir(dir.path()), Err(BlockFileError::NotABlock { .. })));
    }
}
