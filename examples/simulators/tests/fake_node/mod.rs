//! A block node test double: serves `publishBlockStream` on 127.0.0.1 over
//! real gRPC, records every request, re-assembles blocks between their
//! header and `BlockEnd`, acknowledges each `BlockEnd`, and answers
//! `SkipBlock` / `ResendBlock` / `BehindPublisher` / `EndOfStream` when told to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use blockferry_proto::api::block_stream_publish_service_server::{
    BlockStreamPublishService, BlockStreamPublishServiceServer,
};
use blockferry_proto::api::publish_stream_request::{EndStream, Request as Req};
use blockferry_proto::api::publish_stream_response::{
    BehindPublisher, BlockAcknowledgement, EndOfStream, ResendBlock, Response as Resp, SkipBlock,
};
use blockferry_proto::framing::encode_block;
use blockferry_proto::item::{ItemKind, header_number};
use blockferry_proto::{EndOfStreamCode, PublishStreamRequest, PublishStreamResponse};

/// How the double answers. Each trigger fires once.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Refuse every call with `RESOURCE_EXHAUSTED` and this message.
    pub refuse: Option<String>,
    /// Acknowledge nothing until [`FakeNode::release_acks`].
    pub hold_acks: bool,
    /// At block `.0`'s header: `SkipBlock(.0)`, then stop reading for `.1`.
    pub skip_on_header: Option<(u64, Duration)>,
    /// At `BlockEnd(.0)`: `SkipBlock(.1)` before acknowledging `.0`.
    pub skip_at_end: Option<(u64, u64)>,
    /// At `BlockEnd(.0)`: `ResendBlock(.1)` instead of an acknowledgement;
    /// then discard everything until block `.1`'s header.
    pub resend_at_end: Option<(u64, u64)>,
    /// At block `.0`'s header: `BehindPublisher(.1)`; then discard until block `.1 + 1`.
    pub behind_on_header: Option<(u64, u64)>,
    /// At `BlockEnd(.0)`: `EndOfStream(code, .0 - 1)` and end the call.
    pub end_at_end: Option<(u64, EndOfStreamCode)>,
    /// At `BlockEnd(.0)`: end the call with an `INTERNAL` status carrying `.1`.
    pub fail_at_end: Option<(u64, String)>,
}

/// One request as the double received it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A `BlockItemSet`: the request's encoded length and each item's length.
    Items { encoded_len: usize, item_lens: Vec<usize> },
    /// `BlockEnd(n)`.
    BlockEnd(u64),
    /// `EndStream`.
    EndStream(EndStream),
    /// A request with nothing set.
    Empty,
}

/// What the double has seen.
#[derive(Debug, Default)]
pub struct Record {
    /// Every request, in order.
    pub requests: Vec<Seen>,
    /// Blocks from header to `BlockEnd`, serialized, in arrival order (discarded ones left out).
    pub complete: Vec<(u64, Vec<u8>)>,
    /// Blocks whose items stopped before their `BlockEnd` (the next header came first).
    pub abandoned: Vec<u64>,
    /// Every header's block number, in order (discarded blocks too).
    pub headers: Vec<u64>,
    /// The publisher's `EndStream`.
    pub end_stream: Option<EndStream>,
    /// The publisher ended its request stream (without `EndStream`).
    pub inbound_ended: bool,
    /// Calls received (refused ones too).
    pub calls: usize,
}

impl Record {
    /// The numbers of the complete blocks, in arrival order.
    pub fn complete_numbers(&self) -> Vec<u64> {
        self.complete.iter().map(|(n, _)| *n).collect()
    }

    /// How many times block `n` arrived complete.
    pub fn arrivals(&self, n: u64) -> usize {
        self.complete.iter().filter(|(m, _)| *m == n).count()
    }

    /// How many `BlockEnd`s arrived.
    pub fn block_ends(&self) -> usize {
        self.requests.iter().filter(|r| matches!(r, Seen::BlockEnd(_))).count()
    }
}

struct Shared {
    behaviour: Behaviour,
    record: Mutex<Record>,
    hold: AtomicBool,
    release: Notify,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running double.
pub struct FakeNode {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl FakeNode {
    /// Serve on a free port of 127.0.0.1 (on the test's runtime).
    pub async fn start(behaviour: Behaviour) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let hold = AtomicBool::new(behaviour.hold_acks);
        let shared =
            Arc::new(Shared { behaviour, record: Mutex::new(Record::default()), hold, release: Notify::new() });
        let service = BlockStreamPublishServiceServer::new(Service(shared.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        // Small HTTP/2 windows: a publisher cannot get far ahead of what the double reads.
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(256 * 1024)
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        FakeNode { endpoint, shared }
    }

    /// What the double has seen so far.
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.shared.record()
    }

    /// Stop holding acknowledgements: acknowledge the highest complete block
    /// now, and every block from then on.
    pub fn release_acks(&self) {
        self.shared.hold.store(false, Ordering::SeqCst);
        self.shared.release.notify_one();
    }

    /// Wait (up to 30 s) until `done` holds for the record.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Record) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&self.record()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {:?}", self.summary());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A short description of the record, for failure messages.
    pub fn summary(&self) -> String {
        let r = self.record();
        format!(
            "complete {:?}, abandoned {:?}, headers {:?}, {} requests",
            r.complete_numbers(),
            r.abandoned,
            r.headers,
            r.requests.len()
        )
    }
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl BlockStreamPublishService for Service {
    type publishBlockStreamStream = ReceiverStream<Result<PublishStreamResponse, Status>>;

    async fn publish_block_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::publishBlockStreamStream>, Status> {
        self.0.record().calls += 1;
        if let Some(message) = &self.0.behaviour.refuse {
            return Err(Status::resource_exhausted(message.clone()));
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(Stream::new(self.0.clone(), tx).run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One call's state.
struct Stream {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<PublishStreamResponse, Status>>,
    open: Option<(u64, Vec<Bytes>)>,
    /// Discarding everything until this block's header.
    discard_until: Option<u64>,
    highest: Option<u64>,
    fired: [bool; 4],
}

impl Stream {
    fn new(shared: Arc<Shared>, tx: mpsc::Sender<Result<PublishStreamResponse, Status>>) -> Self {
        Self { shared, tx, open: None, discard_until: None, highest: None, fired: [false; 4] }
    }

    /// Whether trigger `i` has yet to fire (and fire it).
    fn fire(&mut self, i: usize) -> bool {
        !std::mem::replace(&mut self.fired[i], true)
    }

    async fn respond(&self, response: Resp) {
        let _ = self.tx.send(Ok(PublishStreamResponse { response: Some(response) })).await;
    }

    async fn ack(&self, n: u64) {
        self.respond(Resp::Acknowledgement(BlockAcknowledgement { block_number: n })).await;
    }

    async fn run(mut self, mut inbound: Streaming<PublishStreamRequest>) {
        let shared = self.shared.clone();
        let b = &shared.behaviour;
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                _ = shared.release.notified() => {
                    if let Some(h) = self.highest {
                        self.ack(h).await;
                    }
                    continue;
                }
            };
            let request = match next {
                Ok(Some(request)) => request,
                Ok(None) => {
                    shared.record().inbound_ended = true;
                    return;
                }
                Err(_) => return,
            };
            let encoded_len = request.encoded_len();
            match request.request {
                Some(Req::BlockItems(set)) => {
                    let item_lens = set.block_items.iter().map(Bytes::len).collect();
                    shared.record().requests.push(Seen::Items { encoded_len, item_lens });
                    for item in set.block_items {
                        if ItemKind::of(&item) != Ok(ItemKind::BLOCK_HEADER) {
                            if let Some((_, items)) = &mut self.open {
                                items.push(item);
                            }
                            continue;
                        }
                        let n = header_number(&item).unwrap();
                        {
                            let mut record = shared.record();
                            record.headers.push(n);
                            if let Some((m, _)) = self.open.take() {
                                record.abandoned.push(m);
                            }
                        }
                        match self.discard_until {
                            Some(wanted) if wanted != n => continue,
                            _ => self.discard_until = None,
                        }
                        if let Some((at, behind)) = b.behind_on_header
                            && at == n
                            && self.fire(0)
                        {
                            self.respond(Resp::NodeBehindPublisher(BehindPublisher { block_number: behind })).await;
                            self.discard_until = Some(behind + 1);
                            continue;
                        }
                        self.open = Some((n, vec![item]));
                        if let Some((at, pause)) = b.skip_on_header
                            && at == n
                            && self.fire(1)
                        {
                            self.respond(Resp::SkipBlock(SkipBlock { block_number: n })).await;
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
                Some(Req::EndOfBlock(end)) => {
                    let n = end.block_number;
                    shared.record().requests.push(Seen::BlockEnd(n));
                    let Some((m, items)) = self.open.take() else { continue };
                    assert_eq!(m, n, "BlockEnd({n}) while block {m} is open");
                    shared.record().complete.push((n, encode_block(&items)));
                    self.highest = self.highest.max(Some(n));
                    if let Some((at, from)) = b.resend_at_end
                        && at == n
                        && self.fire(2)
                    {
                        self.respond(Resp::ResendBlock(ResendBlock { block_number: from })).await;
                        self.discard_until = Some(from);
                        continue;
                    }
                    if let Some((at, code)) = b.end_at_end
                        && at == n
                    {
                        let end = EndOfStream { status: code as i32, block_number: n - 1, proximate_block_number: 0 };
                        self.respond(Resp::EndStream(end)).await;
                        return;
                    }
                    if let Some((at, message)) = &b.fail_at_end
                        && *at == n
                    {
                        let _ = self.tx.send(Err(Status::internal(message.clone()))).await;
                        return;
                    }
                    if let Some((at, skip)) = b.skip_at_end
                        && at == n
                        && self.fire(3)
                    {
                        self.respond(Resp::SkipBlock(SkipBlock { block_number: skip })).await;
                    }
                    if !shared.hold.load(Ordering::SeqCst) {
                        self.ack(n).await;
                    }
                }
                Some(Req::EndStream(end)) => {
                    let mut record = shared.record();
                    record.requests.push(Seen::EndStream(end));
                    record.end_stream = Some(end);
                    return;
                }
                None => shared.record().requests.push(Seen::Empty),
            }
        }
    }
}
