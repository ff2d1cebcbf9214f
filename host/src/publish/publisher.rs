//! The publisher: picks the block node, runs one connection at a time, and
//! applies the failover rules when it ends.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::buffer::BlockBuffer;
use crate::store::BlockStore;
use crate::sync::Locked;

use super::connection::{self, Ended};
use super::context::{Ctx, PublishCounters, PublishStatus, Stop};
use super::policy::{self, Backoff, EndOfStreamLimit, Restart, Retry};
use super::{Archive, BlockNodeConfig, PublishConfig};

/// One configured node and when it may be tried again.
struct Node {
    config: BlockNodeConfig,
    available_at: Instant,
    backoff: Backoff,
    end_of_streams: EndOfStreamLimit,
}

/// The running publisher (connection manager).
pub struct Publisher {
    ctx: Arc<Ctx>,
    stop: watch::Sender<Stop>,
    nodes: watch::Sender<Vec<BlockNodeConfig>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Start streaming the blocks of `buffer` (and, for blocks it no longer
    /// holds, `store`) to `nodes`.
    pub fn start(
        config: PublishConfig,
        nodes: Vec<BlockNodeConfig>,
        buffer: Arc<BlockBuffer>,
        store: Option<Arc<BlockStore>>,
        archive: Option<Arc<dyn Archive>>,
    ) -> Self {
        let ctx = Arc::new(Ctx {
            config,
            buffer,
            store,
            archive,
            archived: Mutex::new(None),
            status: Mutex::new(PublishStatus::default()),
            counters: PublishCounters::default(),
            streaming: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(Stop::None);
        let (nodes, nodes_rx) = watch::channel(nodes);
        let task = tokio::spawn(Manager::new(ctx.clone()).run(stop_rx, nodes_rx));
        Self { ctx, stop, nodes, task: Mutex::new(Some(task)) }
    }

    /// Replace the block node list (config reload). Nodes kept keep their
    /// schedule; if the active node is removed or changed, its connection
    /// closes gracefully and the best node of the new list takes over.
    pub fn set_nodes(&self, nodes: Vec<BlockNodeConfig>) {
        self.nodes.send_if_modified(|current| {
            let changed = *current != nodes;
            *current = nodes;
            changed
        });
    }

    /// The configured block nodes' names (`address:port`).
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.borrow().iter().map(BlockNodeConfig::name).collect()
    }

    /// Where publishing is now.
    pub fn status(&self) -> PublishStatus {
        self.ctx.status.locked().clone()
    }

    /// Counters since start.
    pub fn counters(&self) -> &PublishCounters {
        &self.ctx.counters
    }

    /// Stop at once: the connection closes without the graceful steps.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(Stop::Shutdown);
        let task = self.task.locked().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The connection manager: picks a node, runs a connection, applies the outcome.
struct Manager {
    ctx: Arc<Ctx>,
    nodes: Vec<Node>,
    /// Where the next stream to the same node starts.
    restart: Restart,
    /// The node of the last connection.
    previous: Option<String>,
    /// A node to retry after its backoff, without trying others meanwhile.
    sticky: Option<String>,
}

impl Manager {
    fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx, nodes: Vec::new(), restart: Restart::Latest, previous: None, sticky: None }
    }

    /// Take a new node list, keeping the schedule of nodes that stay.
    fn set_nodes(&mut self, configs: Vec<BlockNodeConfig>) {
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.nodes);
        for config in configs {
            let node = match old.iter().position(|n| n.config == config) {
                Some(i) => old.swap_remove(i),
                None => Node {
                    config,
                    available_at: now,
                    backoff: Backoff::from_config(&self.ctx.config),
                    end_of_streams: EndOfStreamLimit::new(
                        self.ctx.config.max_end_of_streams,
                        Duration::from_millis(self.ctx.config.end_of_stream_time_frame_ms),
                    ),
                },
            };
            self.nodes.push(node);
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.config.name()).collect();
        self.sticky = self.sticky.take().filter(|s| names.contains(s));
        tracing::info!(nodes = ?names, "block nodes");
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.config.name() == name)
    }

    async fn run(mut self, mut stop: watch::Receiver<Stop>, mut configs: watch::Receiver<Vec<BlockNodeConfig>>) {
        self.set_nodes(configs.borrow_and_update().clone());
        loop {
            if *stop.borrow() == Stop::Shutdown {
                return;
            }
            let sticky = self.sticky.as_deref().and_then(|s| self.index_of(s));
            let wait = match sticky {
                Some(i) if self.nodes[i].available_at > Instant::now() => Some(self.nodes[i].available_at),
                Some(_) => None,
                None if pick(&self.nodes).is_none() => Some(
                    self.nodes
                        .iter()
                        .map(|n| n.available_at)
                        .min()
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(1)),
                ),
                None => None,
            };
            if let Some(wake) = wait {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => {}
                    _ = configs.changed() => self.set_nodes(configs.borrow_and_update().clone()),
                }
                continue;
            }
            self.sticky = None;
            let Some(index) = sticky.or_else(|| pick(&self.nodes)) else { continue };
            let node = self.nodes[index].config.clone();
            let Some(start) = self.start_for(&node, &mut stop).await else { return };

            let (conn_stop, conn_stop_rx) = watch::channel(Stop::None);
            let ctx = self.ctx.clone();
            let connection = connection::run(&ctx, &node, start, conn_stop_rx);
            tokio::pin!(connection);
            let better = self
                .nodes
                .iter()
                .filter(|n| n.config.priority < node.priority)
                .map(|n| (n.config.clone(), n.available_at))
                .collect();
            let probe = probe_higher(&ctx, better);
            tokio::pin!(probe);
            let mut probing = true;
            let outcome = loop {
                tokio::select! {
                    outcome = &mut connection => break outcome,
                    _ = &mut probe, if probing => {
                        probing = false;
                        let _ = conn_stop.send(Stop::Switch);
                    }
                    _ = stop.changed() => {
                        let _ = conn_stop.send(*stop.borrow());
                    }
                    _ = configs.changed() => {
                        self.set_nodes(configs.borrow_and_update().clone());
                        if !self.nodes.iter().any(|n| n.config == node) {
                            tracing::info!(node = %node.name(), "block node removed or changed by a config reload");
                            let _ = conn_stop.send(Stop::Switch);
                        }
                    }
                }
            };
            if let Ended::Shutdown = outcome.ended {
                return;
            }
            self.previous = Some(node.name());
            self.apply(&node, start, outcome);
        }
    }

    /// Where a stream to `node` starts: the first stream, and one to another
    /// node than the last, where the fleet is (the lowest unacknowledged
    /// block, else the first block to come); the same node where the tables
    /// say. `None` on shutdown.
    async fn start_for(&self, node: &BlockNodeConfig, stop: &mut watch::Receiver<Stop>) -> Option<u64> {
        let other = self.previous.as_ref().is_none_or(|p| *p != node.name());
        let fleet = if other { self.ctx.buffer.lowest_unacked() } else { None };
        match (fleet, self.restart) {
            (Some(n), _) | (None, Restart::At(n)) => Some(n),
            (None, Restart::Latest) => {
                let latest = wait_for_latest(&self.ctx, stop).await?;
                // Blocks may have arrived meanwhile: the fleet starts at the first of them.
                Some(if other { self.ctx.buffer.lowest_unacked().unwrap_or(latest) } else { latest })
            }
        }
    }

    /// The failover tables: when `node` may be tried again and where its next stream starts.
    fn apply(&mut self, node: &BlockNodeConfig, start: u64, outcome: connection::Outcome) {
        let ctx = self.ctx.clone();
        let now = Instant::now();
        let lowest_unacked = Restart::At(ctx.buffer.lowest_unacked().unwrap_or(start));
        let name = node.name();
        let Some(index) = self.index_of(&name).filter(|i| self.nodes[*i].config == *node) else {
            // Removed by a reload meanwhile.
            self.restart = lowest_unacked;
            return;
        };
        let n = &mut self.nodes[index];
        if outcome.acknowledged {
            n.backoff.reset();
        }
        self.restart = match outcome.ended {
            Ended::Shutdown | Ended::Switched | Ended::Reset => lowest_unacked,
            Ended::EndOfStream { code, block } => {
                if n.end_of_streams.record(now.into_std()) {
                    tracing::warn!(
                        node = %name,
                        "more than {} EndOfStreams within {} ms: node rescheduled in {} ms",
                        ctx.config.max_end_of_streams,
                        ctx.config.end_of_stream_time_frame_ms,
                        ctx.config.end_of_stream_schedule_delay_ms
                    );
                    ctx.count("end_of_stream_rate_limited_total", &name);
                    n.end_of_streams.clear();
                    n.available_at = now + Duration::from_millis(ctx.config.end_of_stream_schedule_delay_ms);
                    Restart::Latest
                } else {
                    let (retry, restart) = policy::on_end_of_stream(code, block);
                    n.available_at = now
                        + match retry {
                            Retry::SwitchFixed => Duration::from_millis(ctx.config.retry_delay_ms),
                            Retry::SameNodeBackoff => {
                                self.sticky = Some(name);
                                n.backoff.next_delay()
                            }
                        };
                    restart
                }
            }
            Ended::TooFarBehind(_) | Ended::FutureBlock(_) | Ended::TooLarge(..) => {
                n.available_at = now + Duration::from_millis(ctx.config.retry_delay_ms);
                Restart::Latest
            }
            Ended::Failed(_) | Ended::Timeout(_) | Ended::Stalled(_) => {
                if matches!(outcome.ended, Ended::Timeout(_) | Ended::Stalled(_)) {
                    ctx.count("timeouts_total", &name);
                }
                n.available_at = now + n.backoff.next_delay();
                lowest_unacked
            }
        };
    }
}

/// The available node of best priority, random among equals.
fn pick(nodes: &[Node]) -> Option<usize> {
    let now = Instant::now();
    let best = nodes.iter().filter(|n| n.available_at <= now).map(|n| n.config.priority).min()?;
    let candidates: Vec<usize> =
        (0..nodes.len()).filter(|i| nodes[*i].available_at <= now && nodes[*i].config.priority == best).collect();
    Some(candidates[fastrand::usize(..candidates.len())])
}

/// Wait for the first block; `None` on shutdown.
async fn wait_for_latest(ctx: &Ctx, stop: &mut watch::Receiver<Stop>) -> Option<u64> {
    let mut latest = ctx.buffer.subscribe_latest();
    loop {
        if let Some(n) = *latest.borrow_and_update() {
            return Some(n);
        }
        tokio::select! {
            _ = latest.changed() => {}
            _ = stop.changed() => if *stop.borrow() == Stop::Shutdown { return None },
        }
    }
}

/// Complete once one of the `better` nodes (of higher priority than the
/// active one) is due to be tried again and reachable; never, when there is none.
async fn probe_higher(ctx: &Ctx, better: Vec<(BlockNodeConfig, Instant)>) {
    if better.is_empty() {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.probe_interval_ms));
    tick.tick().await;
    loop {
        tick.tick().await;
        for (node, _) in better.iter().filter(|(_, due)| *due <= Instant::now()) {
            let address = format!("{}:{}", node.address, node.port);
            if let Ok(Ok(_)) =
                tokio::time::timeout(ctx.pipeline_timeout(), tokio::net::TcpStream::connect(&address)).await
            {
                tracing::info!(node = %node.name(), "a block node of higher priority is reachable: switching to it");
                return;
            }
        }
    }
}
