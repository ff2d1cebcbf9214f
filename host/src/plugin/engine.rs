//! The wasmtime engine every plugin runs in, and the clock that bounds calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of each linear memory and table kept resident when a pooled slot is
/// released (reset in place rather than decommitted).
const KEEP_RESIDENT: usize = 2 << 20;

/// Decommits (of the rest) batched into one system call: none. A discarded
/// instance's memory is released at once, so host memory stays within the
/// buckets' `memory_limit_mib` × `concurrency` (with a batch of 8, released
/// slots waiting for their batch doubled to tripled the peak).
const DECOMMIT_BATCH: usize = 1;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Use the pooling instance allocator (fast instantiation, preallocated slots).
    pub pooling: bool,
    /// Plugin instances that may exist at once, across all buckets (pooling only).
    pub max_instances: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self { pooling: true, max_instances: 256 }
    }
}

/// Build the engine: component model, cranelift, epoch interruption, and the
/// pooling allocator when asked.
pub fn build_engine(settings: &EngineSettings) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    if settings.pooling {
        let n = settings.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            // A released slot's memory is reset in place (only the pages the
            // instance touched, found with PAGEMAP_SCAN where the kernel has
            // it) instead of being unmapped: no TLB shootdown per instance,
            // no page faults when the slot is reused.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto)
            .decommit_batch_size(DECOMMIT_BATCH);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the WebAssembly engine: {e}"))
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Start ticking `engine`'s epoch.
    pub fn start(engine: &Engine) -> Self {
        let engine = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("blockferry-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawning the epoch thread");
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
