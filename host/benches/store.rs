//! Block store write throughput (fsync on, MD5 computed) beside the raw
//! baseline in the same run: write + fsync + MD5 of the same bytes to a new
//! file. Run with `cargo bench -p blockferry --bench store`.

mod report;

use std::io::Write;
use std::time::Instant;

use blockferry::config::Compression;
use blockferry::store::BlockStore;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use md5::{Digest, Md5};

fn write_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("store write (fsync on)");
    group.sample_size(20);
    for size in [64 * 1024usize, 1024 * 1024] {
        let data = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path().join("store"), Compression::None).unwrap();
        let buckets = vec!["a".to_string()];
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::new("block store", size), &data, |b, data| {
            b.iter(|| {
                n += 1;
                store.write_block(n, data, &buckets).unwrap()
            })
        });
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(&raw).unwrap();
        let mut m = 0u64;
        group.bench_with_input(BenchmarkId::new("raw write+fsync+md5", size), &data, |b, data| {
            b.iter(|| {
                m += 1;
                raw_write(&raw.join(m.to_string()), data)
            })
        });
    }
    group.finish();
    report_rows();
}

/// The table's rows: MB/s of the block store and of the raw baseline, the
/// median of 100 alternating writes each.
fn report_rows() {
    for (size, label) in [(64 * 1024usize, "64 KiB"), (1024 * 1024, "1 MiB")] {
        let data = vec![0x5a; size];
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path().join("store"), Compression::None).unwrap();
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(&raw).unwrap();
        let buckets = vec!["a".to_string()];
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for n in 0..100u64 {
            let started = Instant::now();
            store.write_block(n, &data, &buckets).unwrap();
            ours.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            raw_write(&raw.join(n.to_string()), &data);
            base.push(started.elapsed().as_secs_f64());
        }
        let mb_s = |secs: f64| size as f64 / 1e6 / secs;
        report::row(
            &format!("block store write, {label} blocks (fsync, MD5), vs raw write + fsync + MD5"),
            mb_s(report::median(&mut ours)),
            "MB/s",
            Some(mb_s(report::median(&mut base))),
            report::Goal::RatioAtLeast(0.8),
        );
    }
}

/// The baseline: MD5 of `data`, written to a new file at `path` and fsynced.
fn raw_write(path: &std::path::Path, data: &[u8]) -> [u8; 16] {
    let digest = Md5::digest(data).into();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    digest
}

/// The criterion group of this file (a private module: its generated `pub fn` needs no doc).
mod group {
    use super::*;
    criterion_group!(benches, write_throughput);
}
criterion_main!(group::benches);
