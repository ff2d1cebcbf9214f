//! Exact protobuf framing of block items.
//!
//! A serialized `Block` and a `BlockItemSet` both carry their items in field 1,
//! so an item of `n` bytes takes [`item_frame_len`]`(n)` bytes in either. A
//! block file is built from the items as they arrived (never re-encoded), and a
//! publisher packs requests to a size limit counting these bytes exactly.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, skip_field};

use crate::item::ItemError;

/// Bytes an item of `len` bytes takes inside a `Block` or a `BlockItemSet`:
/// its tag (one byte), its length prefix, and itself.
pub fn item_frame_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Bytes of a `PublishStreamRequest` carrying a `BlockItemSet` whose item
/// frames total `frames` bytes (see [`item_frame_len`]).
pub fn items_request_len(frames: usize) -> usize {
    1 + encoded_len_varint(frames as u64) + frames
}

/// The serialized `Block` made of `items`, each kept byte for byte.
pub fn encode_block(items: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| item_frame_len(i.len())).sum());
    for item in items {
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(item.len() as u64, &mut out);
        out.put_slice(item);
    }
    out
}

/// The items of a serialized `Block`, as slices of `block` (no copy).
pub fn split_block(block: &Bytes) -> Result<Vec<Bytes>, ItemError> {
    let malformed = |e: prost::DecodeError| ItemError::Malformed(e.to_string());
    let mut buf = &block[..];
    let mut items = Vec::new();
    while buf.has_remaining() {
        let (field, wire_type) = decode_key(&mut buf).map_err(malformed)?;
        if field != 1 {
            skip_field(wire_type, field, &mut buf, Default::default()).map_err(malformed)?;
            continue;
        }
        if wire_type != WireType::LengthDelimited {
            return Err(ItemError::Malformed(format!("Block.items has wire type {wire_type:?}")));
        }
        let len = decode_varint(&mut buf).map_err(malformed)?;
        let len = usize::try_from(len).ok().filter(|l| *l <= buf.len()).ok_or_else(|| {
            ItemError::Malformed(format!("an item claims {len} bytes, {} remain in the block", buf.len()))
        })?;
        let start = block.len() - buf.len();
        items.push(block.slice(start..start + len));
        buf.advance(len);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BlockItemSet, PublishStreamRequest, publish_stream_request::Request};
    use prost::Message;

    fn items(sizes: &[usize]) -> Vec<Bytes> {
        sizes.iter().enumerate().map(|(i, n)| Bytes::from(vec![i as u8; *n])).collect()
    }

    #[test]
    fn framing_matches_prost_exactly() {
        for sizes in [&[0usize][..], &[1, 127, 128], &[16_383, 16_384, 2_097_152], &[5; 300]] {
            let items = items(sizes);
            let frames: usize = items.iter().map(|i| item_frame_len(i.len())).sum();
            let set = BlockItemSet { block_items: items.clone() };
            assert_eq!(set.encoded_len(), frames);
            let request = PublishStreamRequest { request: Some(Request::BlockItems(set)) };
            assert_eq!(request.encoded_len(), items_request_len(frames));
            assert_eq!(encode_block(&items).len(), frames);
        }
    }

    #[test]
    fn block_round_trips_items_byte_for_byte() {
        let items = items(&[3, 200, 0, 70_000]);
        let block = Bytes::from(encode_block(&items));
        assert_eq!(split_block(&block).unwrap(), items);
        // The same bytes a prost-encoded Block has.
        let decoded = crate::api::BlockItemSet::decode(&block[..]).unwrap();
        assert_eq!(decoded.block_items, items);
    }

    #[test]
    fn truncated_block_is_an_error() {
        let block = Bytes::from(encode_block(&items(&[10, 10])));
        let cut = block.slice(..block.len() - 1);
        assert!(matches!(split_block(&cut), Err(ItemError::Malformed(_))));
    }

    proptest::proptest! {
        /// Any well-framed block — items of any field number, any payload —
        /// splits into its items and joins back to the same bytes, and every
        /// item passes the one rule for items.
        #[test]
        fn split_then_join_is_the_identity(
            spec in proptest::collection::vec(
                (1u32..(1 << 29), proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                0..40,
            )
        ) {
            let items: Vec<Bytes> = spec
                .iter()
                .map(|(field, payload)| {
                    let mut item = Vec::new();
                    encode_key(*field, WireType::LengthDelimited, &mut item);
                    encode_varint(payload.len() as u64, &mut item);
                    item.extend_from_slice(payload);
                    Bytes::from(item)
                })
                .collect();
            let block = Bytes::from(encode_block(&items));
            let split = split_block(&block).unwrap();
            proptest::prop_assert_eq!(&split, &items);
            proptest::prop_assert_eq!(Bytes::from(encode_block(&split)), block);
            for (item, (field, _)) in split.iter().zip(&spec) {
                proptest::prop_assert_eq!(crate::item::ItemKind::of(item), Ok(crate::item::ItemKind(*field)));
            }
        }
    }
}
