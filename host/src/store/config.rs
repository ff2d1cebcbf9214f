//! `[store]`: where blocks are kept on local disk, and how.

use std::path::PathBuf;

use serde::Deserialize;

/// `[store]`: where blocks are kept on local disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of block files and their `.meta` files.
    pub dir: PathBuf,
    /// How block files are stored (and uploaded).
    pub compression: Compression,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("data/blocks"), compression: Compression::None }
    }
}

/// Block file compression. `gzip` and `zstd` are deterministic (fixed level,
/// no name, time or checksum variations in the header), so two nodes storing
/// the same block produce the same bytes and the same MD5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Store the block's bytes as they arrived (`.blk`).
    #[default]
    None,
    /// Store them gzip-compressed (`.blk.gz`).
    Gzip,
    /// Store them zstd-compressed (`.blk.zstd`), as the Hiero block node's
    /// cloud-storage plugin writes its objects.
    Zstd,
}

/// The extensions of block files and objects, one per [`Compression`].
pub const BLOCK_EXTS: [&str; 3] = [".blk", ".blk.gz", ".blk.zstd"];

impl Compression {
    /// The extension of a block file or object of this kind.
    pub fn ext(self) -> &'static str {
        match self {
            Compression::None => BLOCK_EXTS[0],
            Compression::Gzip => BLOCK_EXTS[1],
            Compression::Zstd => BLOCK_EXTS[2],
        }
    }

    /// The kind of a file or key named `name`, by its extension.
    pub fn of_name(name: &str) -> Option<Compression> {
        [Compression::Gzip, Compression::Zstd, Compression::None].into_iter().find(|c| name.ends_with(c.ext()))
    }
}

/// The name's block number stem: `name` without its block extension.
pub fn strip_block_ext(name: &str) -> Option<&str> {
    Compression::of_name(name).and_then(|c| name.strip_suffix(c.ext()))
}
