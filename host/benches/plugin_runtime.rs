//! Plugin runtime costs: compiling a provider cold vs loading it from the
//! cache, and one instantiate + trivial call with pooling on and off, beside
//! a direct Rust call. Run with `cargo bench -p blockferry --bench plugin_runtime`
//! after `scripts/build-plugins.sh`.

mod report;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use blockferry::plugin::{EngineSettings, PluginRuntime, Provenance};
use criterion::{Criterion, criterion_group, criterion_main};

fn fs_plugin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/blockferry_fs.wasm");
    assert!(path.exists(), "{} missing: run scripts/build-plugins.sh first", path.display());
    path
}

fn compile(c: &mut Criterion) {
    let plugin = fs_plugin();
    let mut group = c.benchmark_group("compile fs provider");
    group.sample_size(10);
    let runtime = PluginRuntime::new(&EngineSettings::default(), None).unwrap();
    group.bench_function("cold (no cache)", |b| {
        b.iter(|| assert_eq!(runtime.load(&plugin, None).unwrap().provenance, Provenance::Compiled))
    });
    let cache = tempfile::tempdir().unwrap();
    let cached = PluginRuntime::new(&EngineSettings::default(), Some(cache.path())).unwrap();
    cached.load(&plugin, None).unwrap();
    group.bench_function("from cache", |b| {
        b.iter(|| assert_eq!(cached.load(&plugin, None).unwrap().provenance, Provenance::Cached))
    });
    group.finish();
}

#[inline(never)]
fn provider_name_native() -> String {
    "fs".to_string()
}

fn instantiate_and_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("instantiate + trivial call");
    for pooling in [true, false] {
        let runtime = PluginRuntime::new(&EngineSettings { pooling, max_instances: 64 }, None).unwrap();
        let plugin = runtime.load(&fs_plugin(), None).unwrap();
        let name = if pooling { "pooling on" } else { "pooling off" };
        group.bench_function(name, |b| b.iter(|| rt.block_on(plugin.provider_name()).unwrap()));
    }
    group.bench_function("direct Rust call (baseline)", |b| b.iter(|| black_box(provider_name_native())));
    group.finish();
    report_row(&rt);
}

/// The table's row: median of single instantiate + call timings (pooling on),
/// beside the median direct call.
fn report_row(rt: &tokio::runtime::Runtime) {
    let runtime = PluginRuntime::new(&EngineSettings::default(), None).unwrap();
    let plugin = runtime.load(&fs_plugin(), None).unwrap();
    let time = |f: &mut dyn FnMut()| {
        let mut samples: Vec<f64> = (0..2000)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        report::median(&mut samples)
    };
    let call = time(&mut || {
        rt.block_on(plugin.provider_name()).unwrap();
    });
    let direct = time(&mut || {
        black_box(provider_name_native());
    });
    report::row(
        "instantiate + one trivial plugin call, median (pooling allocator)",
        call,
        "µs",
        Some(direct),
        report::Goal::AtMost(20.0),
    );
}

/// The criterion group of this file (a private module: its generated `pub fn` needs no doc).
mod group {
    use super::*;
    criterion_group!(benches, compile, instantiate_and_call);
}
criterion_main!(group::benches);
