//! `[plugins]`: how provider components are compiled and run.

use std::path::PathBuf;

use serde::Deserialize;

use super::network::DEFAULT_DENIED_NETWORKS;

/// `[plugins]`: how provider components are compiled and run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory of compiled components (only the host writes there).
    pub cache_dir: PathBuf,
    /// Use the pooling instance allocator.
    pub pooling: bool,
    /// Plugin instances that may exist at once across all buckets.
    pub max_instances: u32,
    /// Networks no plugin request may reach, even through a permitted name.
    pub denied_networks: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from("data/plugin-cache"),
            pooling: true,
            max_instances: 256,
            denied_networks: DEFAULT_DENIED_NETWORKS.iter().map(|s| s.to_string()).collect(),
        }
    }
}
