//! Packing a block's items into publish requests for one node's limits,
//! counting the protobuf framing of every item exactly.

use std::ops::Range;

use blockferry_proto::framing::{item_frame_len, items_request_len};
use bytes::Bytes;

/// An item no request to this node can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "item {index} of the block needs a {request_len}-byte request, above the node's hard limit of {hard_limit} bytes; \
     raise the block node's hard_limit_bytes (and the node's own limit)"
)]
pub struct TooLarge {
    /// Index of the item in the block.
    pub index: usize,
    /// Size of the request that would carry it alone.
    pub request_len: usize,
    /// The node's hard limit.
    pub hard_limit: usize,
}

/// Split `items` into requests (ranges of item indices): each as close to
/// `soft_limit` bytes as possible without passing it; an item that alone
/// passes the soft limit goes in a request of its own; one that passes
/// `hard_limit` cannot be sent.
pub fn pack(items: &[Bytes], soft_limit: usize, hard_limit: usize) -> Result<Vec<Range<usize>>, TooLarge> {
    let mut requests = Vec::new();
    let mut start = 0;
    let mut frames = 0;
    for (index, item) in items.iter().enumerate() {
        let frame = item_frame_len(item.len());
        let alone = items_request_len(frame);
        if alone > hard_limit {
            return Err(TooLarge { index, request_len: alone, hard_limit });
        }
        if index > start && items_request_len(frames + frame) > soft_limit {
            requests.push(start..index);
            start = index;
            frames = 0;
        }
        frames += frame;
    }
    if start < items.len() {
        requests.push(start..items.len());
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockferry_proto::api::{BlockItemSet, PublishStreamRequest, publish_stream_request::Request};
    use prost::Message;

    fn items(sizes: &[usize]) -> Vec<Bytes> {
        sizes.iter().map(|n| Bytes::from(vec![1u8; *n])).collect()
    }

    fn encoded(items: &[Bytes]) -> usize {
        PublishStreamRequest { request: Some(Request::BlockItems(BlockItemSet { block_items: items.to_vec() })) }
            .encoded_len()
    }

    #[test]
    fn packs_to_the_soft_limit_exactly() {
        // Ten items of 97 bytes: 100-byte frames (1 tag + 2 length + 97).
        let items = items(&[97; 10]);
        assert_eq!(item_frame_len(97), 99);
        // A request of three frames is 3 + 297 = 300 bytes: a soft limit of
        // exactly 300 takes three, 299 only two.
        let three = pack(&items, encoded(&items[..3]), 10_000).unwrap();
        assert_eq!(three[0], 0..3);
        assert!(three.iter().all(|r| encoded(&items[r.clone()]) <= encoded(&items[..3])));
        let two = pack(&items, encoded(&items[..3]) - 1, 10_000).unwrap();
        assert_eq!(two[0], 0..2);
        assert_eq!(two.iter().map(|r| r.len()).sum::<usize>(), 10);
    }

    #[test]
    fn a_large_item_goes_alone_and_one_past_the_hard_limit_is_refused() {
        let items = items(&[10, 10, 5000, 10]);
        assert_eq!(pack(&items, 1000, 10_000).unwrap(), vec![0..2, 2..3, 3..4]);
        let err = pack(&items, 1000, 4000).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.request_len, encoded(&items[2..3]));
    }

    #[test]
    fn every_item_is_sent_once_in_order() {
        let items = items(&[1, 300, 20, 700, 5, 5, 5, 900, 0]);
        let ranges = pack(&items, 1024, 4096).unwrap();
        let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(flat, (0..items.len()).collect::<Vec<_>>());
        for r in ranges {
            assert!(encoded(&items[r.clone()]) <= 1024 || r.len() == 1);
        }
    }
}
