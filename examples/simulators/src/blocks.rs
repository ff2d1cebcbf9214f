//! Deterministic generated blocks with a consensus node's item mix.
//!
//! A block is `block_header`, `round_header`, events (each an `event_header`
//! followed by transactions: `signed_transaction`, `transaction_result` and
//! sometimes `transaction_output`), one `state_changes`, a `block_footer` and
//! a `block_proof`. Payloads are pseudo-random bytes drawn from the block
//! number and target size, so the same arguments always give the same bytes
//! (and the payloads are incompressible: a worst case for compression).

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use blockferry_proto::framing::{encode_block, item_frame_len};
use blockferry_proto::item::ItemKind;
use blockferry_proto::stream::{BlockHeader, BlockItem, SemanticVersion, Timestamp, block_item::Item};

/// Blocks of at least this target size carry one item above 2 MiB (the
/// consensus node's default soft request limit).
pub const BIG_ITEM_FROM: usize = 3 * MIB;

/// The largest item a generated block carries: below the 6 MB + 1 KB hard limit.
pub const MAX_ITEM_BYTES: usize = 5 * MIB;

const MIB: usize = 1024 * 1024;
/// The big item's smallest payload: clearly above the 2 MB (and 2 MiB) soft limit.
const BIG_ITEM_MIN: usize = 2 * MIB + 64 * 1024;
/// The smallest `state_changes` payload (the item that absorbs the size remainder).
const MIN_STATE_CHANGES: usize = 64;
/// `block_footer`: three 48-byte SHA-384 hashes, each a length-delimited field.
const FOOTER_HASHES: usize = 3;
const HASH_LEN: usize = 48;
/// Consensus time of block 0 (seconds since the epoch); blocks are 2 s apart.
const GENESIS_SECONDS: i64 = 1_750_000_000;

/// The items of block `number`, each a serialized `BlockItem`, sized so that
/// the serialized block is about `target_size` bytes (to a few bytes, for
/// targets of 4 KiB and more; smaller targets give the minimum block).
///
/// Deterministic: the same `number` and `target_size` give the same bytes.
/// Transactions are 100 B to 6 KiB; from [`BIG_ITEM_FROM`] on, the
/// `state_changes` item is above 2 MiB (and never above [`MAX_ITEM_BYTES`]).
pub fn generate_block(number: u64, target_size: usize) -> Vec<Bytes> {
    let mut rng = Rng::new(number ^ (target_size as u64).rotate_left(29) ^ 0x5eed_b10c_f377_0000);
    let mut items = vec![header(number, &mut rng), round_header(number)];
    let mut total: usize = items.iter().map(|i| item_frame_len(i.len())).sum();

    let proof_len = rng.range(400, 1000);
    let footer_len = FOOTER_HASHES * (key_len(1) + encoded_len_varint(HASH_LEN as u64) + HASH_LEN);
    let big = if target_size >= BIG_ITEM_FROM { (target_size / 3).clamp(BIG_ITEM_MIN, MAX_ITEM_BYTES) } else { 0 };
    let state_min = big.max(MIN_STATE_CHANGES);
    let tail = frame(ItemKind::BLOCK_FOOTER, footer_len) + frame(ItemKind::BLOCK_PROOF, proof_len);
    let budget = target_size.saturating_sub(total + tail + frame(ItemKind::STATE_CHANGES, state_min));

    // Events of 1 to 8 transactions, while they fit (at least one transaction).
    let mut used = 0;
    let mut left_in_event = 0;
    loop {
        let event_len = (left_in_event == 0).then(|| rng.range(60, 160));
        let mut tx_len = match rng.below(10) {
            0..7 => rng.range(100, 600),
            7..9 => rng.range(600, 2048),
            _ => rng.range(2048, 6144),
        };
        let result_len = rng.range(40, 200);
        let mut output_len = (rng.below(4) == 0).then(|| rng.range(60, 1200));
        let cost = |tx: usize, out: Option<usize>| {
            event_len.map_or(0, |l| frame(ItemKind::EVENT_HEADER, l))
                + frame(ItemKind::SIGNED_TRANSACTION, tx)
                + frame(ItemKind::TRANSACTION_RESULT, result_len)
                + out.map_or(0, |l| frame(ItemKind::TRANSACTION_OUTPUT, l))
        };
        if used + cost(tx_len, output_len) > budget {
            if used > 0 {
                break;
            }
            // The one transaction every block has: shrink it to fit.
            output_len = None;
            let over = cost(tx_len, None).saturating_sub(budget);
            tx_len = tx_len.saturating_sub(over).max(100);
        }
        used += cost(tx_len, output_len);
        if let Some(len) = event_len {
            items.push(random_item(ItemKind::EVENT_HEADER, len, &mut rng));
            left_in_event = rng.range(1, 8);
        }
        items.push(random_item(ItemKind::SIGNED_TRANSACTION, tx_len, &mut rng));
        items.push(random_item(ItemKind::TRANSACTION_RESULT, result_len, &mut rng));
        if let Some(len) = output_len {
            items.push(random_item(ItemKind::TRANSACTION_OUTPUT, len, &mut rng));
        }
        left_in_event -= 1;
    }
    total += used;

    // `state_changes` takes what is left, so the block lands on the target.
    let room = target_size.saturating_sub(total + tail);
    let state_len = payload_for_frame(ItemKind::STATE_CHANGES, room).max(state_min);
    items.push(random_item(ItemKind::STATE_CHANGES, state_len, &mut rng));
    items.push(footer(&mut rng));
    items.push(random_item(ItemKind::BLOCK_PROOF, proof_len, &mut rng));
    items
}

/// The serialized `Block` of [`generate_block`]`(number, target_size)`.
pub fn block_bytes(number: u64, target_size: usize) -> Vec<u8> {
    encode_block(&generate_block(number, target_size))
}

/// A real `BlockHeader` item: versions, number and consensus timestamp.
fn header(number: u64, rng: &mut Rng) -> Bytes {
    let version = SemanticVersion { major: 0, minor: 66, patch: 0, ..Default::default() };
    let seconds = GENESIS_SECONDS.wrapping_add((number as i64).wrapping_mul(2));
    let header = BlockHeader {
        hapi_proto_version: Some(version.clone()),
        software_version: Some(version),
        number,
        block_timestamp: Some(Timestamp { seconds, nanos: rng.below(1_000_000_000) as i32 }),
        hash_algorithm: 0,
    };
    BlockItem { item: Some(Item::BlockHeader(header)) }.encode_to_vec().into()
}

/// A `round_header` carrying its round number (field 1), as upstream's does.
fn round_header(number: u64) -> Bytes {
    let round = number.wrapping_mul(3).wrapping_add(1_000_000);
    let mut payload = Vec::new();
    encode_key(1, WireType::Varint, &mut payload);
    encode_varint(round, &mut payload);
    item(ItemKind::ROUND_HEADER, &payload)
}

/// A `block_footer`: three hashes (previous block root, block hashes tree root, state root).
fn footer(rng: &mut Rng) -> Bytes {
    let mut payload = Vec::new();
    for field in 1..=FOOTER_HASHES as u32 {
        encode_key(field, WireType::LengthDelimited, &mut payload);
        encode_varint(HASH_LEN as u64, &mut payload);
        let start = payload.len();
        payload.resize(start + HASH_LEN, 0);
        rng.fill(&mut payload[start..]);
    }
    item(ItemKind::BLOCK_FOOTER, &payload)
}

/// A serialized `BlockItem` of `kind` with `payload`.
fn item(kind: ItemKind, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(item_len(kind, payload.len()));
    encode_key(kind.field(), WireType::LengthDelimited, &mut out);
    encode_varint(payload.len() as u64, &mut out);
    out.put_slice(payload);
    out.into()
}

/// A serialized `BlockItem` of `kind` with `len` pseudo-random payload bytes.
fn random_item(kind: ItemKind, len: usize, rng: &mut Rng) -> Bytes {
    let mut out = Vec::with_capacity(item_len(kind, len));
    encode_key(kind.field(), WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    let start = out.len();
    out.resize(start + len, 0);
    rng.fill(&mut out[start..]);
    out.into()
}

/// Bytes of a `BlockItem` of `kind` whose payload is `payload` bytes.
fn item_len(kind: ItemKind, payload: usize) -> usize {
    key_len(kind.field()) + encoded_len_varint(payload as u64) + payload
}

/// Bytes such an item takes inside a block.
fn frame(kind: ItemKind, payload: usize) -> usize {
    item_frame_len(item_len(kind, payload))
}

/// The largest payload whose item of `kind` takes at most `room` bytes in a
/// block (0 if none fits).
fn payload_for_frame(kind: ItemKind, room: usize) -> usize {
    // Tag, two length prefixes: at most 2 + 10 + 10 bytes of overhead.
    (0..=22).map(|overhead| room.saturating_sub(overhead)).find(|&len| frame(kind, len) <= room).unwrap_or(0)
}

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockferry_proto::framing::split_block;
    use blockferry_proto::item::header_number;

    const SIZES: [usize; 7] = [0, 1000, 4096, 10_000, 65_536, 1 << 20, 8 << 20];

    #[test]
    fn same_number_and_size_give_the_same_bytes() {
        for size in [4096, 65_536, 8 << 20] {
            assert_eq!(generate_block(7, size), generate_block(7, size));
            assert_ne!(block_bytes(7, size), block_bytes(8, size));
        }
    }

    #[test]
    fn header_first_proof_last_and_a_real_mix_between() {
        for (number, size) in SIZES.iter().enumerate().map(|(i, s)| (i as u64 * 1_000_003, *s)) {
            let items = generate_block(number, size);
            assert_eq!(header_number(&items[0]), Ok(number), "size {size}");
            let kinds: Vec<ItemKind> = items.iter().map(|i| ItemKind::of(i).unwrap()).collect();
            assert_eq!(kinds[1], ItemKind::ROUND_HEADER);
            assert_eq!(kinds[2], ItemKind::EVENT_HEADER);
            assert_eq!(kinds[3], ItemKind::SIGNED_TRANSACTION);
            assert_eq!(kinds[4], ItemKind::TRANSACTION_RESULT);
            assert_eq!(
                &kinds[kinds.len() - 3..],
                [ItemKind::STATE_CHANGES, ItemKind::BLOCK_FOOTER, ItemKind::BLOCK_PROOF]
            );
            assert_eq!(kinds.iter().filter(|k| **k == ItemKind::BLOCK_HEADER).count(), 1);
            let proof = items.last().unwrap().len();
            assert!((400..=1010).contains(&proof), "proof of {proof} bytes");
            // The block splits back into exactly these items.
            let block = Bytes::from(encode_block(&items));
            assert_eq!(split_block(&block).unwrap(), items);
        }
    }

    #[test]
    fn sizes_land_on_the_target() {
        for size in [4096, 5000, 10_000, 65_536, 100_000, 1 << 20, 3 << 20, 8 << 20, 20 << 20] {
            for number in [0, 1, 99, u64::MAX] {
                let len = block_bytes(number, size).len();
                let off = len.abs_diff(size) as f64 / size as f64;
                assert!(off < 0.01, "block {number} of target {size} is {len} bytes");
            }
        }
    }

    #[test]
    fn small_targets_give_the_minimum_block() {
        let tiny = block_bytes(3, 0).len();
        assert!(tiny < 4096, "minimum block is {tiny} bytes");
        assert_eq!(generate_block(3, 0).len(), 8, "header, round, event, tx, result, state, footer, proof");
    }

    #[test]
    fn transactions_vary_in_size() {
        let items = generate_block(42, 8 << 20);
        let txs: Vec<usize> =
            items.iter().filter(|i| ItemKind::of(i) == Ok(ItemKind::SIGNED_TRANSACTION)).map(|i| i.len()).collect();
        assert!(txs.len() > 1000);
        assert!(txs.iter().all(|l| (100..6200).contains(l)));
        assert!(txs.iter().any(|l| *l < 300) && txs.iter().any(|l| *l > 4096));
        assert!(items.iter().any(|i| ItemKind::of(i) == Ok(ItemKind::TRANSACTION_OUTPUT)));
    }

    #[test]
    fn big_blocks_carry_an_item_above_2_mib_and_none_above_6_mib() {
        for size in [BIG_ITEM_FROM, 8 << 20, 20 << 20] {
            let items = generate_block(5, size);
            let largest = items.iter().map(Bytes::len).max().unwrap();
            assert!(largest > 2 * MIB, "target {size}: largest item {largest}");
            assert!(largest <= 6_000_000, "target {size}: largest item {largest}");
        }
        let largest = generate_block(5, 2 << 20).iter().map(Bytes::len).max().unwrap();
        assert!(largest < 10_000, "largest item {largest}");
    }
}
