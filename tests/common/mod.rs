//! Shared helpers of the end-to-end tests: where the built plugins are, a
//! runtime with a shared compile cache, bucket specs, blocks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blockferry::plugin::egress::DEFAULT_DENIED_NETWORKS;
use blockferry::plugin::{BlockInfo, BucketSpec, EngineSettings, Plugin, PluginRuntime};
use md5::{Digest, Md5};

pub mod servers;

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
