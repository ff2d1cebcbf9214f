//! Shared helpers of the end-to-end tests: where the built plugins are, a
//! runtime with a shared compile cache, bucket specs, blocks, calls and their
//! failures, the `blockferry` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use blockferry::plugin::network::DEFAULT_DENIED_NETWORKS;
use blockferry::plugin::{
    BlockBody, BlockInfo, BucketClient, BucketSpec, CallError, EngineSettings, Outcome, Plugin, PluginFailure,
    PluginRuntime,
};
use md5::{Digest, Md5};

pub mod metadata;
pub mod metrics_list;
pub mod powercut;
pub mod servers;
pub mod sidecar;
pub mod tls;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A plugin built by `scripts/build-plugins.sh`; fails the test (never skips)
/// when it has not been built.
pub fn plugin_path(name: &str) -> PathBuf {
    let path = workspace().join("target/wasm32-wasip2/plugin").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins with scripts/build-plugins.sh (scripts/test.sh does it before the tests)",
        path.display()
    );
    path
}

/// A runtime whose compile cache is shared by all tests of this checkout, so
/// each plugin is compiled once per test run.
pub fn runtime() -> PluginRuntime {
    let cache = workspace().join("target/test-plugin-cache");
    PluginRuntime::new(&EngineSettings { pooling: true, max_instances: 32 }, Some(&cache)).expect("runtime")
}

/// Load a built plugin by name.
pub fn load(runtime: &PluginRuntime, name: &str) -> Arc<Plugin> {
    runtime.load(&plugin_path(name), None).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A bucket spec with test defaults (short deadline, small memory cap).
pub fn spec(name: &str) -> BucketSpec {
    BucketSpec {
        name: name.to_string(),
        settings: Vec::new(),
        directory: None,
        allow_hosts: Vec::new(),
        denied_networks: DEFAULT_DENIED_NETWORKS.iter().map(|n| n.parse().unwrap()).collect(),
        memory_limit: 32 << 20,
        call_timeout: Duration::from_secs(10),
        max_concurrency: 4,
        secrets: Vec::new(),
        log_lines_per_minute: 600,
        tls: Default::default(),
        credentials: None,
    }
}

/// The block info of `bytes` as block `number` under `key`.
pub fn block(number: u64, key: &str, bytes: &[u8]) -> BlockInfo {
    BlockInfo {
        number,
        size: bytes.len() as u64,
        md5: Md5::digest(bytes).to_vec(),
        key: key.to_string(),
        content_type: "application/octet-stream".into(),
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Settings from `base`, each pair of `extra` replacing the base key's value or added.
pub fn settings_with(base: &[(&str, &str)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in extra {
        all.retain(|(key, _)| key != k);
        all.push((k.to_string(), v.to_string()));
    }
    all
}

/// Puts `bytes` as block `number` under `key`.
pub async fn put(client: &BucketClient, number: u64, key: &str, bytes: &[u8]) -> Result<Outcome, CallError> {
    client.put_block(&block(number, key, bytes), &BlockBody::from_bytes(bytes.to_vec())).await
}

/// The message of a permanent failure (panics on any other result).
pub fn permanent(err: CallError) -> String {
    match err {
        CallError::Plugin(PluginFailure::Permanent(m)) => m,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// The message of a transient failure (panics on any other result).
pub fn transient(err: CallError) -> String {
    match err {
        CallError::Plugin(PluginFailure::Transient(m)) => m,
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

/// Runs the `blockferry` binary with `args` from the workspace root (where
/// the default `--fs-plugin` is), `RUST_LOG=warn`.
pub fn blockferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockferry"))
        .args(args)
        .current_dir(workspace())
        .env("RUST_LOG", "warn")
        // Tests run side by side: every sidecar listens on a free port.
        .env("BLOCKFERRY_INGEST_LISTEN", "127.0.0.1:0")
        .env("BLOCKFERRY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .expect("running blockferry")
}

/// The output's stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The objects an `fs` bucket directory holds (its hidden bookkeeping left out).
pub fn objects_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}
