//! A block's `.meta` file: what the store knows about one block and where it
//! has been uploaded. Written whole (temporary file, rename); an upload's
//! outcome is written over it in place (`BlockStore::record_outcome`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::telemetry::now_ms;

/// An MD5 digest in the base64 form `.meta` files and log lines use.
pub fn md5_base64(md5: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

/// How a bucket's copy of a block was confirmed to hold exactly the block's
/// bytes. A copy with no confirmation rests on the plugin's word alone (the
/// plugin said `uploaded`, or found an object whose metadata carries the
/// right MD5), and retention keeps the local block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confirmed {
    /// A digest the service computed from what it stored (an S3 ETag, a GCS
    /// `md5Hash`, an echoed checksum) equals the block's MD5.
    ServerDigest,
    /// The stored bytes were read back and their MD5 equals the block's
    /// (`blockferry verify --deep`, or a provider that reads back).
    ReadBack,
}

/// Where one block stands with one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum BucketStatus {
    /// Not uploaded yet.
    #[default]
    Pending,
    /// Uploaded by this host.
    Uploaded {
        /// When, in Unix milliseconds.
        at_ms: u64,
        /// The version the service gave the object (S3 version id, GCS
        /// generation), when it reported one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// How the copy was confirmed; absent: only the plugin's word (and
        /// in `.meta` files written before confirmations were recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirmed: Option<Confirmed>,
    },
    /// The bucket already held the same content (another node uploaded it).
    AlreadyPresent {
        /// When this was found, in Unix milliseconds.
        at_ms: u64,
        /// How the copy was confirmed; absent: only the plugin's word.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirmed: Option<Confirmed>,
    },
    /// The bucket holds different content under the block's key. Final: never
    /// retried, and the local block is kept forever.
    HashMismatch {
        /// The remote object's content MD5 (base64), when known.
        remote_md5: Option<String>,
    },
    /// Attempts failed so far; uploading goes on.
    Failed {
        /// Failed attempts.
        attempts: u32,
        /// The last error.
        last_error: String,
        /// Whether the last error was permanent (needs an operator).
        permanent: bool,
    },
}

impl BucketStatus {
    /// The block is safe in this bucket (uploaded or already present).
    pub fn is_safe(&self) -> bool {
        matches!(self, BucketStatus::Uploaded { .. } | BucketStatus::AlreadyPresent { .. })
    }

    /// How the copy in this bucket was confirmed (`None` when it is not safe
    /// there, or rests on the plugin's word alone).
    pub fn confirmed(&self) -> Option<Confirmed> {
        match self {
            BucketStatus::Uploaded { confirmed, .. } | BucketStatus::AlreadyPresent { confirmed, .. } => *confirmed,
            _ => None,
        }
    }

    /// Safe in this bucket with at least the evidence `required` asks for.
    pub fn is_confirmed(&self, required: Confirmed) -> bool {
        self.confirmed().is_some_and(|c| c >= required)
    }

    /// Nothing more will be done for this block in this bucket.
    pub fn is_final(&self) -> bool {
        self.is_safe() || matches!(self, BucketStatus::HashMismatch { .. })
    }

    /// Failed attempts recorded so far.
    pub fn attempts(&self) -> u32 {
        match self {
            BucketStatus::Failed { attempts, .. } => *attempts,
            _ => 0,
        }
    }
}

/// The contents of a `.meta` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Block number.
    pub number: u64,
    /// Name of the block file in the store directory.
    pub file: String,
    /// Size of the block file in bytes (what is uploaded).
    pub size: u64,
    /// MD5 of the block file, base64.
    pub md5: String,
    /// When the block was stored, in Unix milliseconds.
    pub created_at_ms: u64,
    /// Status per bucket name.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketStatus>,
    /// Set once any bucket reported different content for this block.
    #[serde(default)]
    pub hash_mismatch: bool,
}

impl BlockMeta {
    /// Metadata of a freshly stored block, pending in `buckets`.
    pub fn new(number: u64, file: String, size: u64, md5: &[u8], buckets: &[String]) -> Self {
        Self {
            number,
            file,
            size,
            md5: md5_base64(md5),
            created_at_ms: now_ms(),
            buckets: buckets.iter().map(|b| (b.clone(), BucketStatus::Pending)).collect(),
            hash_mismatch: false,
        }
    }

    /// The MD5 as raw bytes.
    pub fn md5_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(&self.md5).unwrap_or_default()
    }

    /// Parse the bytes of block `number`'s `.meta` file, checking what the
    /// store relies on: the number, a block file name of that number (never
    /// a path elsewhere), a base64 MD5 of 16 bytes.
    pub fn parse(bytes: &[u8], number: u64) -> Result<Self, String> {
        let meta: BlockMeta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.number != number {
            return Err(format!("it describes block {} instead of {number}", meta.number));
        }
        let stem = format!("{number:036}");
        if super::strip_block_ext(&meta.file) != Some(stem.as_str()) {
            return Err(format!(
                "its file {:?} is not {stem} with a block extension ({})",
                meta.file,
                super::BLOCK_EXTS.join(", ")
            ));
        }
        if meta.md5_bytes().len() != 16 {
            return Err(format!("its md5 {:?} is not a base64 MD5", meta.md5));
        }
        Ok(meta)
    }

    /// Extension of the block file (`.blk`, `.blk.gz` or `.blk.zstd`), as object keys carry it.
    pub fn ext(&self) -> &'static str {
        super::Compression::of_name(&self.file).unwrap_or_default().ext()
    }

    /// Status in `bucket` (pending when the bucket is not recorded yet).
    pub fn status(&self, bucket: &str) -> BucketStatus {
        self.buckets.get(bucket).cloned().unwrap_or_default()
    }

    /// Safe in every one of `buckets` and never mismatched.
    pub fn safe_in_all<'a>(&self, mut buckets: impl Iterator<Item = &'a str>) -> bool {
        !self.hash_mismatch && buckets.all(|b| self.status(b).is_safe())
    }

    /// Safe in every one of `buckets` with at least the evidence `required`
    /// asks for, and never mismatched: the only state in which retention may
    /// delete the block.
    pub fn confirmed_in_all<'a>(&self, mut buckets: impl Iterator<Item = &'a str>, required: Confirmed) -> bool {
        !self.hash_mismatch && buckets.all(|b| self.status(b).is_confirmed(required))
    }
}
