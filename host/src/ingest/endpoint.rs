//! The endpoint and its state: one publisher at a time, the latest block.

mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockferry_proto::PublishStreamResponse;
use blockferry_proto::api::block_stream_publish_service_server::{
    BlockStreamPublishService, BlockStreamPublishServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::IngestConfig;
use crate::buffer::BlockBuffer;
use crate::store::{BlockStore, StoreError};
use crate::sync::{Locked, ReadWrite};

/// Called with each newly stored block's number (the upload manager's hook).
pub type OnStored = Arc<dyn Fn(u64) + Send + Sync>;

/// Counters since start.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Blocks stored and acknowledged.
    pub blocks: AtomicU64,
    /// Bytes of those blocks (serialized, before compression).
    pub bytes: AtomicU64,
    /// Headers of blocks already stored (answered `SkipBlock`).
    pub duplicates: AtomicU64,
    /// Headers beyond the next block (answered `BehindPublisher`).
    pub gaps: AtomicU64,
    /// Streams ended with `INVALID_REQUEST`.
    pub invalid: AtomicU64,
    /// Streams ended with `PERSISTENCE_FAILED`.
    pub persistence_failed: AtomicU64,
    /// Publishers refused because another was streaming.
    pub refused_publishers: AtomicU64,
}

/// The ingest endpoint's shared state.
pub struct Ingest {
    store: Arc<BlockStore>,
    buffer: Arc<BlockBuffer>,
    buckets: std::sync::RwLock<Arc<[String]>>,
    on_stored: OnStored,
    limits: IngestConfig,
    /// The highest block stored: the next one expected is this + 1.
    latest: Mutex<Option<u64>>,
    /// The address of the publisher streaming now.
    publisher: Mutex<Option<SocketAddr>>,
    /// Why the last block could not be stored, until a block is stored again.
    store_error: Mutex<Option<String>>,
    counters: IngestCounters,
}

impl Ingest {
    /// Ingest into `store` (blocks pending in `buckets`) and `buffer`;
    /// `on_stored` hears of every new block. The next block expected follows
    /// the highest one in the store; an empty store accepts any first block.
    pub fn new(
        store: Arc<BlockStore>,
        buffer: Arc<BlockBuffer>,
        buckets: Vec<String>,
        limits: IngestConfig,
        on_stored: OnStored,
    ) -> Result<Arc<Self>, StoreError> {
        let latest = store.numbers()?.last().copied();
        Ok(Arc::new(Self {
            store,
            buffer,
            buckets: std::sync::RwLock::new(buckets.into()),
            on_stored,
            limits,
            latest: Mutex::new(latest),
            publisher: Mutex::new(None),
            store_error: Mutex::new(None),
            counters: IngestCounters::default(),
        }))
    }

    /// The buckets a newly stored block is recorded as pending in.
    pub fn buckets(&self) -> Arc<[String]> {
        self.buckets.reading().clone()
    }

    /// Record blocks stored from now on as pending in `buckets` (config reload).
    pub fn set_buckets(&self, buckets: Vec<String>) {
        *self.buckets.writing() = buckets.into();
    }

    /// Why the last block could not be stored (a full disk, say), until a
    /// block is stored again.
    pub fn store_error(&self) -> Option<String> {
        self.store_error.locked().clone()
    }

    fn set_store_error(&self, error: Option<String>) {
        *self.store_error.locked() = error;
    }

    /// Counters since start.
    pub fn counters(&self) -> &IngestCounters {
        &self.counters
    }

    /// The address of the publisher streaming now.
    pub fn publisher(&self) -> Option<SocketAddr> {
        *self.publisher.locked()
    }

    /// The highest block stored.
    pub fn latest(&self) -> Option<u64> {
        *self.latest.locked()
    }

    fn set_latest(&self, number: u64) {
        let mut latest = self.latest.locked();
        *latest = (*latest).max(Some(number));
    }

    /// Serve `publishBlockStream` on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let limit = self.limits.hard_limit_bytes;
        let service = BlockStreamPublishServiceServer::new(Service(self))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        tonic::transport::Server::builder()
            // Windows that fit a large block in flight: a 64 KiB window costs
            // a round trip per 64 KiB of every block.
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            // A publisher that vanished without closing frees its slot.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Take the single publisher slot for `peer`, or name who holds it.
    fn claim(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<PublisherSlot, Option<SocketAddr>> {
        let mut slot = self.publisher.locked();
        if let Some(current) = *slot {
            return Err(Some(current));
        }
        let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        *slot = Some(peer);
        Ok(PublisherSlot(self.clone()))
    }
}

/// Holds the publisher slot; frees it when the stream ends.
struct PublisherSlot(Arc<Ingest>);

impl Drop for PublisherSlot {
    fn drop(&mut self) {
        *self.0.publisher.locked() = None;
    }
}

struct Service(Arc<Ingest>);

#[tonic::async_trait]
impl BlockStreamPublishService for Service {
    type publishBlockStreamStream = ReceiverStream<Result<PublishStreamResponse, Status>>;

    async fn publish_block_stream(
        &self,
        request: Request<Streaming<blockferry_proto::PublishStreamRequest>>,
    ) -> Result<Response<Self::publishBlockStreamStream>, Status> {
        let peer = request.remote_addr();
        let slot = self.0.claim(peer).map_err(|current| {
            self.0.counters.refused_publishers.fetch_add(1, Ordering::Relaxed);
            let current = current.map_or("another publisher".to_string(), |a| a.to_string());
            tracing::warn!(peer = ?peer, current = %current, "refused a second publisher");
            Status::resource_exhausted(format!(
                "blockferry accepts one publisher at a time and {current} is streaming now; \
                 retry when its stream ends"
            ))
        })?;
        tracing::info!(peer = ?peer, next = ?self.0.latest().map(|l| l + 1), "publisher connected");
        let (tx, rx) = mpsc::channel(64);
        let ingest = self.0.clone();
        tokio::spawn(async move {
            session::Session::new(ingest, tx).run(request.into_inner()).await;
            drop(slot);
            tracing::info!(peer = ?peer, "publisher stream ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
