//! Block store write throughput (fsync on, MD5 computed) beside the raw
//! baseline in the same run: write + fsync + MD5 of the same bytes to a new
//! file. Run with `cargo bench -p blockferry --bench store`.

use std::io::Write;

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
                let digest = Md5::digest(data);
                let mut f = std::fs::File::create(raw.join(m.to_string())).unwrap();
                f.write_all(data).unwrap();
                f.sync_all().unwrap();
                digest
            })
        });
    }
    group.finish();
}

criterion_group!(benches, write_throughput);
criterion_main!(benches);
