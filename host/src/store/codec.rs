//! Block file compression, in one place: each kind's file extension, how a
//! block is written (deterministically: the same block gives the same bytes
//! on every node, so conditional create and MD5 comparisons across nodes
//! hold) and how it is read back.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use super::Compression;
#[cfg(test)]
use super::strip_block_ext;

/// The zstd level blocks are written with (fixed: the output depends on it).
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The bytes of a block file of this kind holding `block`.
    pub fn encode(self, block: &[u8]) -> Cow<'_, [u8]> {
        match self {
            Compression::None => Cow::Borrowed(block),
            Compression::Gzip => Cow::Owned(gzip(block)),
            Compression::Zstd => Cow::Owned(zstd(block)),
        }
    }

    /// The block a file of this kind holds.
    pub fn decode(self, data: Vec<u8>) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data),
            Compression::Gzip => gunzip(&data),
            Compression::Zstd => zstd::stream::decode_all(&data[..]),
        }
    }
}

/// Deterministic gzip: fixed level, no file name, zero time, fixed OS byte.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc =
        flate2::GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), flate2::Compression::new(6));
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The bytes a gzip stream (a block file stored gzipped) holds.
pub fn gunzip(gz: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(gz).read_to_end(&mut out)?;
    Ok(out)
}

/// Deterministic zstd: one frame at a fixed level with the content size in
/// its header, no checksum, no dictionary.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a valid zstd level");
    c.include_checksum(false).expect("zstd parameter");
    c.include_contentsize(true).expect("zstd parameter");
    c.include_dictid(false).expect("zstd parameter");
    c.compress(bytes).expect("compressing in memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_is_deterministic() {
        let block: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let a = c.encode(&block).into_owned();
            assert_eq!(a, c.encode(&block).into_owned(), "{c:?}: the same bytes every time");
            assert_eq!(c.decode(a.clone()).unwrap(), block, "{c:?}");
            assert_eq!(Compression::of_name(&format!("{:036}{}", 7, c.ext())), Some(c));
        }
        // zstd's magic number, and the content size in the frame header.
        let z = zstd(&block);
        assert_eq!(z[..4], [0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&z).ok(), Some(Some(block.len() as u64)));
        assert_eq!(strip_block_ext("000.blk.zstd"), Some("000"));
        assert_eq!(strip_block_ext("000.blk.gz"), Some("000"));
        assert_eq!(strip_block_ext("000.blk"), Some("000"));
        assert_eq!(strip_block_ext("000.meta"), None);
        assert!(Compression::Zstd.decode(b"not zstd".to_vec()).is_err());
    }
}
