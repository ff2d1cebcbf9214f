//! Config reload: the config file is polled for changes and, once it has
//! settled, loaded and validated completely; an invalid file is rejected with
//! the same errors as at start-up and the running config stays in force.
//!
//! What a reload changes: the block node list. Other settings take effect at
//! the next start.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::config::Config;

/// How long the file must stay unchanged before it is read (editors write in steps).
const SETTLE: Duration = Duration::from_millis(200);

/// Watch `path` every `every`; call `apply` with each valid new config.
pub fn watch(path: PathBuf, every: Duration, apply: impl Fn(Config) + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = stamp(&path);
        loop {
            tokio::time::sleep(every).await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            seen = stamp(&path);
            let loaded = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Config::load(&path)).await
            };
            match loaded {
                Ok(Ok(config)) => {
                    tracing::info!(config = %path.display(), "config reloaded");
                    apply(config);
                }
                Ok(Err(e)) => tracing::error!("config reload rejected, the running config stays in force: {e}"),
                Err(e) => tracing::error!("config reload failed: {e}"),
            }
        }
    })
}
