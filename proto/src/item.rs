//! Reading a block item without decoding it: its kind (the `BlockItem` oneof
//! field that is set) and, for a header, the block number.

use bytes::Buf;
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, skip_field};

use crate::stream::BlockHeader;

/// Which field of the `BlockItem` oneof an item carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// `block_header = 1`: the first item of a block.
    BlockHeader,
    /// `event_header = 2`.
    EventHeader,
    /// `round_header = 3`.
    RoundHeader,
    /// `signed_transaction = 4`.
    SignedTransaction,
    /// `transaction_result = 5`.
    TransactionResult,
    /// `transaction_output = 6`.
    TransactionOutput,
    /// `state_changes = 7`.
    StateChanges,
    /// `filtered_item_hash = 8`.
    FilteredItemHash,
    /// `block_proof = 9`: comes at the end of a block (there may be several).
    BlockProof,
    /// `record_file = 10`.
    RecordFile,
    /// `trace_data = 11`.
    TraceData,
    /// `filtered_single_item = 20`.
    FilteredSingleItem,
    /// `block_footer = 21`.
    BlockFooter,
}

impl ItemKind {
    /// The kind carried in `BlockItem` field `field`, if it is one.
    pub fn from_field(field: u32) -> Option<Self> {
        use ItemKind::*;
        Some(match field {
            1 => BlockHeader,
            2 => EventHeader,
            3 => RoundHeader,
            4 => SignedTransaction,
            5 => TransactionResult,
            6 => TransactionOutput,
            7 => StateChanges,
            8 => FilteredItemHash,
            9 => BlockProof,
            10 => RecordFile,
            11 => TraceData,
            20 => FilteredSingleItem,
            21 => BlockFooter,
            _ => return None,
        })
    }

    /// The `BlockItem` field number of this kind.
    pub fn field(self) -> u32 {
        use ItemKind::*;
        match self {
            BlockHeader => 1,
            EventHeader => 2,
            RoundHeader => 3,
            SignedTransaction => 4,
            TransactionResult => 5,
            TransactionOutput => 6,
            StateChanges => 7,
            FilteredItemHash => 8,
            BlockProof => 9,
            RecordFile => 10,
            TraceData => 11,
            FilteredSingleItem => 20,
            BlockFooter => 21,
        }
    }

    /// The kind of a serialized `BlockItem` (the oneof field it sets; unknown
    /// fields around it are allowed, as protobuf allows them).
    pub fn of(item: &[u8]) -> Result<Self, ItemError> {
        Ok(scan(item)?.0)
    }
}

/// A block item that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// The bytes are not a protobuf message.
    #[error("the item is not a valid protobuf BlockItem: {0}")]
    Malformed(String),
    /// A valid message that sets no `BlockItem` field this protocol knows.
    #[error("the item sets no known BlockItem field (fields 1-11, 20, 21)")]
    NoKnownField,
    /// The item is a header whose block number cannot be read.
    #[error("the block header cannot be decoded: {0}")]
    BadHeader(String),
    /// The item is not a block header.
    #[error("expected a block_header item, found {0:?}")]
    NotAHeader(ItemKind),
}

/// The block number in a serialized `block_header` item.
pub fn header_number(item: &[u8]) -> Result<u64, ItemError> {
    match scan(item)? {
        (ItemKind::BlockHeader, payload) => {
            BlockHeader::decode(payload).map(|h| h.number).map_err(|e| ItemError::BadHeader(e.to_string()))
        }
        (kind, _) => Err(ItemError::NotAHeader(kind)),
    }
}

/// Find the oneof field an item sets: its kind and payload.
fn scan(mut buf: &[u8]) -> Result<(ItemKind, &[u8]), ItemError> {
    let malformed = |e: prost::DecodeError| ItemError::Malformed(e.to_string());
    let mut found = None;
    while buf.has_remaining() {
        let (field, wire_type) = decode_key(&mut buf).map_err(malformed)?;
        match (ItemKind::from_field(field), wire_type) {
            (Some(kind), WireType::LengthDelimited) => {
                let len = decode_varint(&mut buf).map_err(malformed)?;
                let len = usize::try_from(len).ok().filter(|l| *l <= buf.len()).ok_or_else(|| {
                    ItemError::Malformed(format!("field {field} claims {len} bytes, {} remain", buf.len()))
                })?;
                // In a oneof the last field set wins, as protobuf decoders do.
                found = Some((kind, &buf[..len]));
                buf.advance(len);
            }
            (Some(_), other) => {
                return Err(ItemError::Malformed(format!("field {field} has wire type {other:?}, expected a message")));
            }
            (None, _) => skip_field(wire_type, field, &mut buf, Default::default()).map_err(malformed)?,
        }
    }
    found.ok_or(ItemError::NoKnownField)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{BlockItem, block_item::Item};

    fn encode(item: Item) -> Vec<u8> {
        BlockItem { item: Some(item) }.encode_to_vec()
    }

    #[test]
    fn reads_kind_and_header_number() {
        let header = encode(Item::BlockHeader(BlockHeader { number: 4242, ..Default::default() }));
        assert_eq!(ItemKind::of(&header), Ok(ItemKind::BlockHeader));
        assert_eq!(header_number(&header), Ok(4242));
        let proof = encode(Item::BlockProof(vec![1, 2, 3].into()));
        assert_eq!(ItemKind::of(&proof), Ok(ItemKind::BlockProof));
        assert_eq!(header_number(&proof), Err(ItemError::NotAHeader(ItemKind::BlockProof)));
        let footer = encode(Item::BlockFooter(vec![].into()));
        assert_eq!(ItemKind::of(&footer), Ok(ItemKind::BlockFooter));
    }

    #[test]
    fn header_number_zero_is_read() {
        // proto3 omits a zero field: an empty header is block 0.
        let header = encode(Item::BlockHeader(BlockHeader::default()));
        assert_eq!(header_number(&header), Ok(0));
    }

    #[test]
    fn rejects_garbage_and_unknown_items() {
        assert!(matches!(ItemKind::of(&[0x0a, 0x05, 1]), Err(ItemError::Malformed(_))));
        assert!(matches!(ItemKind::of(&[0xff]), Err(ItemError::Malformed(_))));
        assert_eq!(ItemKind::of(&[]), Err(ItemError::NoKnownField));
        // Field 12 is reserved: skipped, and nothing known remains.
        assert_eq!(ItemKind::of(&[0x62, 0x01, 0x00]), Err(ItemError::NoKnownField));
        // A known field with a varint wire type is not an item.
        assert!(matches!(ItemKind::of(&[0x48, 0x01]), Err(ItemError::Malformed(_))));
    }

    #[test]
    fn every_kind_round_trips_its_field_number() {
        for field in (1..=11).chain([20, 21]) {
            assert_eq!(ItemKind::from_field(field).map(ItemKind::field), Some(field));
        }
        assert_eq!(ItemKind::from_field(12), None);
    }
}
