//! Reading a block item without decoding it.
//!
//! One rule for items, everywhere: a `BlockItem` is one length-delimited
//! field of *any* field number, kept exactly as received. The block stream
//! adds item types at new field numbers, so a field number blockferry does not
//! know is never an error; only broken framing or a wrong wire type is. The
//! only things read are an item's field number ([`ItemKind`]), the header's
//! block number, and whether a block has a `block_proof`.

use std::fmt;

use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};

use crate::stream::BlockHeader;

/// The `BlockItem` oneof field an item sets: any field number, known or not.
///
/// Names exist for logs only ([`ItemKind::name`]); nothing refuses an item
/// for its field number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKind(pub u32);

impl ItemKind {
    /// `block_header = 1`: the first item of a block.
    pub const BLOCK_HEADER: Self = Self(1);
    /// `event_header = 2`.
    pub const EVENT_HEADER: Self = Self(2);
    /// `round_header = 3`.
    pub const ROUND_HEADER: Self = Self(3);
    /// `signed_transaction = 4`.
    pub const SIGNED_TRANSACTION: Self = Self(4);
    /// `transaction_result = 5`.
    pub const TRANSACTION_RESULT: Self = Self(5);
    /// `transaction_output = 6`.
    pub const TRANSACTION_OUTPUT: Self = Self(6);
    /// `state_changes = 7`.
    pub const STATE_CHANGES: Self = Self(7);
    /// `filtered_single_item = 8`.
    pub const FILTERED_SINGLE_ITEM: Self = Self(8);
    /// `block_proof = 9`: at the end of a block (there may be several).
    pub const BLOCK_PROOF: Self = Self(9);
    /// `record_file = 10`.
    pub const RECORD_FILE: Self = Self(10);
    /// `trace_data = 11`.
    pub const TRACE_DATA: Self = Self(11);
    /// `block_footer = 12`: once per block, right before the proof.
    pub const BLOCK_FOOTER: Self = Self(12);
    /// `redacted_item = 19`.
    pub const REDACTED_ITEM: Self = Self(19);

    /// The `BlockItem` field number.
    pub fn field(self) -> u32 {
        self.0
    }

    /// The field's name in the block stream schema this build knows, for
    /// logs; `None` for a field number added after it.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "block_header",
            2 => "event_header",
            3 => "round_header",
            4 => "signed_transaction",
            5 => "transaction_result",
            6 => "transaction_output",
            7 => "state_changes",
            8 => "filtered_single_item",
            9 => "block_proof",
            10 => "record_file",
            11 => "trace_data",
            12 => "block_footer",
            19 => "redacted_item",
            _ => return None,
        })
    }

    /// The kind of a serialized `BlockItem`: the field number it sets.
    pub fn of(item: &[u8]) -> Result<Self, ItemError> {
        Ok(scan(item)?.0)
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (field {})", self.0),
            None => write!(f, "an item at field {} (a newer schema's; kept as is)", self.0),
        }
    }
}

/// A block item, or a block, that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// The bytes are not protobuf framing, or a field is not length-delimited.
    #[error("the item is not a valid protobuf BlockItem: {0}")]
    Malformed(String),
    /// An item with no field at all.
    #[error("an empty BlockItem (it sets no item)")]
    Empty,
    /// The item is a header whose block number cannot be read.
    #[error("the block header cannot be decoded: {0}")]
    BadHeader(String),
    /// The item is not a block header.
    #[error("expected a block_header item, found {0}")]
    NotAHeader(ItemKind),
}

/// The block number in a serialized `block_header` item.
pub fn header_number(item: &[u8]) -> Result<u64, ItemError> {
    match scan(item)? {
        (ItemKind::BLOCK_HEADER, payload) => {
            BlockHeader::decode(payload).map(|h| h.number).map_err(|e| ItemError::BadHeader(e.to_string()))
        }
        (kind, _) => Err(ItemError::NotAHeader(kind)),
    }
}

/// What a whole block is made of, as far as blockferry reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSummary {
    /// The header's block number.
    pub number: u64,
    /// How many items the block has.
    pub items: usize,
}

/// A whole block that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block has no items.
    #[error("the block has no items")]
    NoItems,
    /// The first item is not a readable `block_header`.
    #[error("the first item is not a readable block_header: {0}")]
    NoHeader(ItemError),
    /// Item `index` (0-based) cannot be read.
    #[error("item {index} of the block: {error}")]
    BadItem {
        /// Which item.
        index: usize,
        /// Why.
        error: ItemError,
    },
    /// A second `block_header` inside the block.
    #[error("item {0} is a second block_header inside the block")]
    SecondHeader(usize),
    /// No `block_proof` item.
    #[error("no block_proof item (among {0} items)")]
    NoProof(usize),
}

/// Check the items of one whole block by the one rule (a header first, every
/// item well-framed at any field number, at least one `block_proof`) and read
/// its number. Used wherever a whole block is taken in: import, restore, the
/// bucket archive, the simulators.
pub fn check_block(items: &[Bytes]) -> Result<BlockSummary, BlockError> {
    let first = items.first().ok_or(BlockError::NoItems)?;
    let number = header_number(first).map_err(BlockError::NoHeader)?;
    let mut proof = false;
    for (index, item) in items.iter().enumerate().skip(1) {
        match ItemKind::of(item).map_err(|error| BlockError::BadItem { index, error })? {
            ItemKind::BLOCK_HEADER => return Err(BlockError::SecondHeader(index)),
            ItemKind::BLOCK_PROOF => proof = true,
            _ => {}
        }
    }
    if !proof {
        return Err(BlockError::NoProof(items.len()));
    }
    Ok(BlockSummary { number, items: items.len() })
}

/// The item's field and payload. Every field must be length-delimited (that is
/// how a `BlockItem` carries any of its items); if several are present the
/// last wins, as in a protobuf `oneof`.
fn scan(mut buf: &[u8]) -> Result<(ItemKind, &[u8]), ItemError> {
    let malformed = |e: prost::DecodeError| ItemError::Malformed(e.to_string());
    let mut found = None;
    while buf.has_remaining() {
        let (field, wire_type) = decode_key(&mut buf).map_err(malformed)?;
        if wire_type != WireType::LengthDelimited {
            return Err(ItemError::Malformed(format!(
                "field {field} has wire type {wire_type:?}; a BlockItem carries its item as a length-delimited field"
            )));
        }
        let len = decode_varint(&mut buf).map_err(malformed)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= buf.len())
            .ok_or_else(|| ItemError::Malformed(format!("field {field} claims {len} bytes, {} remain", buf.len())))?;
        found = Some((ItemKind(field), &buf[..len]));
        buf.advance(len);
    }
    found.ok_or(ItemError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{BlockItem, block_item::Item};
    use prost::encoding::{encode_key, encode_varint};

    fn encode(item: Item) -> Vec<u8> {
        BlockItem { item: Some(item) }.encode_to_vec()
    }

    /// An item at `field` with `payload`, whatever the field number.
    fn raw(field: u32, payload: &[u8]) -> Bytes {
        let mut out = Vec::new();
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out.into()
    }

    #[test]
    fn reads_kind_and_header_number() {
        let header = encode(Item::BlockHeader(BlockHeader { number: 4242, ..Default::default() }));
        assert_eq!(ItemKind::of(&header), Ok(ItemKind::BLOCK_HEADER));
        assert_eq!(header_number(&header), Ok(4242));
        let proof = encode(Item::BlockProof(vec![1, 2, 3].into()));
        assert_eq!(ItemKind::of(&proof), Ok(ItemKind::BLOCK_PROOF));
        assert_eq!(header_number(&proof), Err(ItemError::NotAHeader(ItemKind::BLOCK_PROOF)));
        // The footer is field 12, as real consensus-node blocks carry it.
        let footer = encode(Item::BlockFooter(vec![].into()));
        assert_eq!(footer[0], 12 << 3 | 2);
        assert_eq!(ItemKind::of(&footer), Ok(ItemKind::BLOCK_FOOTER));
    }

    #[test]
    fn header_number_zero_is_read() {
        // proto3 omits a zero field: an empty header is block 0.
        let header = encode(Item::BlockHeader(BlockHeader::default()));
        assert_eq!(header_number(&header), Ok(0));
    }

    #[test]
    fn any_field_number_is_an_item() {
        for field in [12, 13, 18, 19, 20, 21, 27, 127, 128, 500, 16_383, 16_384, (1 << 29) - 1] {
            let item = raw(field, b"future");
            assert_eq!(ItemKind::of(&item), Ok(ItemKind(field)), "field {field}");
        }
        assert_eq!(ItemKind(500).name(), None);
        assert!(ItemKind(500).to_string().contains("500"));
        assert_eq!(ItemKind(12).to_string(), "block_footer (field 12)");
    }

    #[test]
    fn refuses_broken_framing_and_wrong_wire_types() {
        assert!(matches!(ItemKind::of(&[0x0a, 0x05, 1]), Err(ItemError::Malformed(_))));
        assert!(matches!(ItemKind::of(&[0xff]), Err(ItemError::Malformed(_))));
        assert_eq!(ItemKind::of(&[]), Err(ItemError::Empty));
        // A varint, at a known or an unknown field number, is not an item.
        assert!(matches!(ItemKind::of(&[0x48, 0x01]), Err(ItemError::Malformed(_))));
        assert!(matches!(ItemKind::of(&[0xa0, 0x1f, 0x01]), Err(ItemError::Malformed(_))));
    }

    #[test]
    fn checks_whole_blocks_by_the_one_rule() {
        let header = Bytes::from(encode(Item::BlockHeader(BlockHeader { number: 7, ..Default::default() })));
        let proof = raw(9, b"proof");
        let footer = raw(12, b"footer");
        let future = raw(500, b"x");
        let ok = [header.clone(), raw(4, b"tx"), future.clone(), footer.clone(), proof.clone()];
        assert_eq!(check_block(&ok), Ok(BlockSummary { number: 7, items: 5 }));
        assert_eq!(check_block(&[]), Err(BlockError::NoItems));
        assert!(matches!(check_block(&[proof.clone()]), Err(BlockError::NoHeader(_))));
        assert_eq!(check_block(&[header.clone(), footer.clone()]), Err(BlockError::NoProof(2)));
        assert_eq!(check_block(&[header.clone(), header.clone(), proof.clone()]), Err(BlockError::SecondHeader(1)));
        let bad = Bytes::from_static(&[0x48, 0x01]);
        assert!(matches!(check_block(&[header, bad, proof]), Err(BlockError::BadItem { index: 1, .. })));
    }
}
