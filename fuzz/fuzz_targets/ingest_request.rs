//! The ingest decoder: a `PublishStreamRequest` as it arrives from the
//! consensus node, decoded, and each item of a `BlockItemSet` classified and
//! its header number read, as ingest does; and the same bytes as a stored
//! block split into items (import, resending from disk). None may panic; a
//! block split into items must re-encode to the same bytes.
#![no_main]

use blockferry_proto::api::publish_stream_request::Request;
use blockferry_proto::framing::{encode_block, split_block};
use blockferry_proto::{ItemKind, PublishStreamRequest, item::header_number};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = PublishStreamRequest::decode(data)
        && let Some(Request::BlockItems(set)) = request.request
    {
        for item in &set.block_items {
            if matches!(ItemKind::of(item), Ok(ItemKind::BlockHeader)) {
                let _ = header_number(item);
            }
        }
    }
    let block = bytes::Bytes::copy_from_slice(data);
    if let Ok(items) = split_block(&block) {
        // Unknown fields are skipped, so compare with the items re-split.
        let again = encode_block(&items);
        assert_eq!(split_block(&bytes::Bytes::from(again)).unwrap(), items);
    }
});
