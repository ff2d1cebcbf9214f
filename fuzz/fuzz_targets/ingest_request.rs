//! The ingest decoder: a `PublishStreamRequest` as it arrives from the
//! consensus node, decoded, and each item of a `BlockItemSet` read by the one
//! rule for items, as ingest does; and the same bytes as a stored block split
//! into items (import, resending from disk). None may panic. An item is
//! refused only for its framing or wire type, never for its field number; a
//! block split into items must join back to the same bytes.
#![no_main]

use blockferry_proto::api::publish_stream_request::Request;
use blockferry_proto::framing::{encode_block, split_block};
use blockferry_proto::item::{ItemError, check_block};
use blockferry_proto::{ItemKind, PublishStreamRequest, item::header_number};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = PublishStreamRequest::decode(data)
        && let Some(Request::BlockItems(set)) = request.request
    {
        for item in &set.block_items {
            match ItemKind::of(item) {
                Ok(ItemKind::BLOCK_HEADER) => {
                    let _ = header_number(item);
                }
                // Any other field number is an item, known or not.
                Ok(_) => {}
                Err(ItemError::Malformed(_) | ItemError::Empty) => {}
                Err(e) => panic!("an item refused for something other than its framing: {e}"),
            }
        }
        let _ = check_block(&set.block_items);
    }
    let block = bytes::Bytes::copy_from_slice(data);
    if let Ok(items) = split_block(&block) {
        // Fields other than 1 are skipped, so compare with the items re-split.
        let again = bytes::Bytes::from(encode_block(&items));
        assert_eq!(split_block(&again).unwrap(), items);
        // A block of field-1 items only joins back to itself.
        if encode_block(&items).len() == block.len() {
            assert_eq!(again, block);
        }
    }
});
