//! A scriptable block node: serves `publishBlockStream` over real gRPC, records
//! what publishers send, acknowledges blocks, and answers anything at any
//! block when told to — or stalls, drops the stream, cuts the connection, or
//! crashes.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use blockferry_proto::EndOfStreamCode;
//! use blockferry_sim::block_node::{Action, BlockNode, Trigger, end_of_stream};
//!
//! let node = BlockNode::start().await;
//! node.script(Trigger::OnBlockEnd(5).then(Action::Respond(end_of_stream(EndOfStreamCode::Error, 4))));
//! node.script(Trigger::OnHeader(9).then(Action::Stall));
//! // ... point a publisher at node.endpoint() ...
//! assert!(node.wait_for_block(4, Duration::from_secs(10)).await);
//! # }
//! ```
//!
//! Per stream, a block is assembled from its header to its `BlockEnd` and
//! recorded in [`Record::blocks`] (last copy wins) and [`Record::block_order`];
//! by default each complete block is answered `BlockAcknowledgement(n)`. With
//! [`BlockNode::set_latest`] the node "already has" blocks up to that number:
//! it answers an older header `SkipBlock(n)` and a header beyond the next
//! block `BehindPublisher(latest)`, and does not keep or acknowledge those
//! blocks. [`Rule`]s change any of this at a header, a `BlockEnd` or the start
//! of a stream.

mod net;
mod script;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use blockferry_proto::api::block_stream_publish_service_server::BlockStreamPublishServiceServer;
use blockferry_proto::api::publish_stream_response::{
    BehindPublisher, BlockAcknowledgement, EndOfStream, ResendBlock, Response, SkipBlock,
};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamResponse};

use crate::session::MAX_MESSAGE_BYTES;
use net::{Incoming, Net};
pub use script::{Action, Rule, Trigger};
use stream::{Control, Service};

/// Default largest request the node decodes (tonic refuses a larger one with `OUT_OF_RANGE`).
pub const DEFAULT_HARD_LIMIT: usize = MAX_MESSAGE_BYTES;

/// `BlockAcknowledgement { block_number }`.
pub fn ack(block_number: u64) -> PublishStreamResponse {
    response(Response::Acknowledgement(BlockAcknowledgement { block_number }))
}

/// `EndOfStream { status: code, block_number }` (the last block the node has).
pub fn end_of_stream(code: EndOfStreamCode, block_number: u64) -> PublishStreamResponse {
    response(Response::EndStream(EndOfStream { status: code as i32, block_number, proximate_block_number: 0 }))
}

/// `SkipBlock { block_number }`.
pub fn skip_block(block_number: u64) -> PublishStreamResponse {
    response(Response::SkipBlock(SkipBlock { block_number }))
}

/// `ResendBlock { block_number }`.
pub fn resend_block(block_number: u64) -> PublishStreamResponse {
    response(Response::ResendBlock(ResendBlock { block_number }))
}

/// `BehindPublisher { block_number }` (the last block the node has).
pub fn behind_publisher(block_number: u64) -> PublishStreamResponse {
    response(Response::NodeBehindPublisher(BehindPublisher { block_number }))
}

fn response(response: Response) -> PublishStreamResponse {
    PublishStreamResponse { response: Some(response) }
}

/// Everything the node has seen and done, over all its streams (and restarts).
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The items of every complete block received (last copy wins; empty item lists if items are not kept).
    pub blocks: BTreeMap<u64, Vec<Bytes>>,
    /// Numbers of complete blocks in the order received, duplicates included.
    pub block_order: Vec<u64>,
    /// Every request decoded, in order.
    pub requests: Vec<RequestRecord>,
    /// The publishers' `EndStream` requests.
    pub end_streams: Vec<EndStreamRecord>,
    /// What happened, in order.
    pub events: Vec<Event>,
    /// Streams opened (refused ones too); stream `k` is the `k`-th.
    pub connections: u64,
    /// Streams open now.
    pub open_streams: u64,
    /// The last block the node has, if it tracks one (see [`BlockNode::set_latest`]).
    pub latest: Option<u64>,
}

impl Record {
    /// Every response sent, with its stream, in order.
    pub fn responses(&self) -> Vec<(u64, PublishStreamResponse)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Responded { stream, response } => Some((*stream, *response)),
                _ => None,
            })
            .collect()
    }

    /// How stream `stream` ended, if it has.
    pub fn stream_end(&self, stream: u64) -> Option<&StreamEnd> {
        self.events.iter().find_map(|e| match e {
            Event::StreamEnded { stream: s, end } if *s == stream => Some(end),
            _ => None,
        })
    }
}

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The stream it came on.
    pub stream: u64,
    /// `prost::Message::encoded_len` of the request.
    pub encoded_len: usize,
    /// What it was.
    pub kind: RequestKind,
}

/// What a request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A `BlockItemSet` of `count` items of these serialized lengths.
    Items {
        /// How many items.
        count: usize,
        /// Each item's length.
        item_lens: Vec<usize>,
    },
    /// `BlockEnd(n)`.
    BlockEnd(u64),
    /// `EndStream` (a code the enum does not know reads as `Unknown`).
    EndStream {
        /// Its code.
        code: EndStreamCode,
        /// `earliest_block_number`.
        earliest: u64,
        /// `latest_block_number`.
        latest: u64,
    },
    /// A request with nothing set.
    Empty,
}

/// A publisher's `EndStream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndStreamRecord {
    /// The stream it came on.
    pub stream: u64,
    /// Its code (`Unknown` for a code the enum does not know).
    pub code: EndStreamCode,
    /// `earliest_block_number`.
    pub earliest: u64,
    /// `latest_block_number`.
    pub latest: u64,
}

/// Something the node saw or did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stream opened.
    StreamOpened {
        /// Its number.
        stream: u64,
        /// The publisher's address.
        peer: Option<SocketAddr>,
    },
    /// A rule fired.
    Fired {
        /// On this stream.
        stream: u64,
        /// Its trigger.
        trigger: Trigger,
        /// Its action.
        action: Action,
    },
    /// A block arrived complete (header to `BlockEnd`) and was kept.
    BlockReceived {
        /// The stream.
        stream: u64,
        /// The block's number.
        number: u64,
        /// How many items.
        items: usize,
        /// Its size as a serialized `Block`.
        bytes: usize,
    },
    /// A block the node already had, or beyond a gap, arrived complete and was not kept.
    BlockRefused {
        /// The stream.
        stream: u64,
        /// The block's number.
        number: u64,
    },
    /// A block stopped before its `BlockEnd` (another header came, or the stream ended).
    BlockAbandoned {
        /// The stream.
        stream: u64,
        /// The block's number.
        number: u64,
    },
    /// Items arrived with no block open (no header before them).
    StrayItems {
        /// The stream.
        stream: u64,
        /// How many.
        count: usize,
    },
    /// `BlockEnd(number)` arrived while that block was not open.
    StrayBlockEnd {
        /// The stream.
        stream: u64,
        /// The number in the `BlockEnd`.
        number: u64,
        /// The block open then, if any.
        open: Option<u64>,
    },
    /// A publisher's `EndStream` arrived.
    EndStream(EndStreamRecord),
    /// The node sent a response.
    Responded {
        /// The stream.
        stream: u64,
        /// The response.
        response: PublishStreamResponse,
    },
    /// A stream ended.
    StreamEnded {
        /// The stream.
        stream: u64,
        /// How.
        end: StreamEnd,
    },
    /// The node was killed.
    Killed,
    /// The node started serving again after a kill.
    Restarted,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The publisher ended its request stream (without `EndStream`).
    PublisherClosed,
    /// The publisher sent `EndStream`.
    PublisherEndStream,
    /// The node sent `EndOfStream`.
    EndOfStream,
    /// The node ended the call with this status ([`Action::Drop`], [`Action::DropWith`]); at
    /// the start of a stream, it refused the call.
    Dropped(tonic::Code),
    /// The node cut the connection ([`Action::Disconnect`]).
    Disconnected,
    /// The node was killed.
    Killed,
    /// The call went away under the node (the publisher cancelled it, or the connection broke).
    Cancelled,
    /// Reading a request failed (too large a request, a broken stream); the node ended the call with this status.
    RequestFailed {
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

/// How a [`BlockNode`] serves; see [`BlockNode::builder`].
#[derive(Debug, Clone)]
pub struct BlockNodeBuilder {
    addr: SocketAddr,
    hard_limit: usize,
    window: Option<u32>,
    keep_items: bool,
    late_headers: bool,
}

impl Default for BlockNodeBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            hard_limit: DEFAULT_HARD_LIMIT,
            window: None,
            keep_items: true,
            late_headers: false,
        }
    }
}

impl BlockNodeBuilder {
    /// Listen on `addr` (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Decode requests of at most `bytes` (default [`DEFAULT_HARD_LIMIT`]); tonic ends a call
    /// carrying a larger one with `OUT_OF_RANGE`.
    pub fn hard_limit(mut self, bytes: usize) -> Self {
        self.hard_limit = bytes;
        self
    }

    /// HTTP/2 stream and connection windows (default: hyper's), which bound what a
    /// publisher can send to a node that stopped reading.
    pub fn window(mut self, bytes: u32) -> Self {
        self.window = Some(bytes);
        self
    }

    /// Keep the items of received blocks (default); without, [`Record::blocks`] holds empty item lists.
    pub fn keep_items(mut self, keep: bool) -> Self {
        self.keep_items = keep;
        self
    }

    /// Send a stream's response headers only with its first response (as
    /// grpc-python's server does), not when the stream opens (default off).
    pub fn late_headers(mut self, late: bool) -> Self {
        self.late_headers = late;
        self
    }

    /// Bind and serve (on the current tokio runtime).
    pub async fn start(self) -> io::Result<BlockNode> {
        let listener = net::bind(self.addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hard_limit: self.hard_limit,
            window: self.window,
            keep_items: self.keep_items,
            late_headers: self.late_headers,
            record: Mutex::default(),
            rules: Mutex::default(),
            streams: Mutex::default(),
            net: Mutex::default(),
            changed: Notify::new(),
            ack_nothing: AtomicBool::new(false),
            kills: AtomicU64::new(0),
        });
        shared.serve(listener);
        Ok(BlockNode { addr, shared })
    }
}

/// A running block node simulator. Dropping it kills it.
pub struct BlockNode {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl BlockNode {
    /// Serve on a free port of 127.0.0.1 with the defaults (panics if it cannot bind).
    pub async fn start() -> BlockNode {
        Self::builder().start().await.expect("cannot bind 127.0.0.1:0")
    }

    /// Serve on `addr` with the defaults (e.g. a killed node's address: the port is bound with `SO_REUSEADDR`).
    pub async fn start_on(addr: SocketAddr) -> io::Result<BlockNode> {
        Self::builder().listen(addr).start().await
    }

    /// Options: address, hard limit, HTTP/2 windows, whether to keep items.
    pub fn builder() -> BlockNodeBuilder {
        BlockNodeBuilder::default()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Add a rule (after those already there).
    pub fn script(&self, rule: Rule) {
        lock(&self.shared.rules).push((rule, false));
    }

    /// Remove every rule.
    pub fn clear_script(&self) {
        lock(&self.shared.rules).clear();
    }

    /// The last block the node has (`None`: it takes any block and tracks none).
    /// It then advances with each block kept.
    pub fn set_latest(&self, latest: Option<u64>) {
        self.shared.update(|r| r.latest = latest);
    }

    /// The last block the node has, if it tracks one.
    pub fn latest(&self) -> Option<u64> {
        self.record().latest
    }

    /// Acknowledge nothing (`true`) or resume acknowledging blocks completed from now on (`false`).
    pub fn ack_nothing(&self, on: bool) {
        self.shared.ack_nothing.store(on, Ordering::SeqCst);
    }

    /// Send `response` now on every open stream (even a stalled one); an `EndOfStream` ends them.
    /// Returns how many streams it went to.
    pub fn respond_now(&self, response: PublishStreamResponse) -> usize {
        let streams = lock(&self.shared.streams);
        streams.values().filter(|tx| tx.send(Control::Respond(response)).is_ok()).count()
    }

    /// Send `response` now on stream `stream`; whether that stream is open.
    pub fn respond_on(&self, stream: u64, response: PublishStreamResponse) -> bool {
        lock(&self.shared.streams).get(&stream).is_some_and(|tx| tx.send(Control::Respond(response)).is_ok())
    }

    /// Resume every stalled stream (it reads and answers again, from where it stopped).
    pub fn resume(&self) {
        for tx in lock(&self.shared.streams).values() {
            let _ = tx.send(Control::Resume);
        }
    }

    /// Crash: close the listener, end the server and cut every connection at once
    /// (publishers see their connections fail; new connections are refused).
    /// The record stays; [`restart`](Self::restart) or [`start_on`](Self::start_on) serve again.
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// Serve again on the same address after [`kill`](Self::kill), keeping the record,
    /// the rules and `latest` (a restarted node that kept its blocks).
    pub async fn restart(&self) -> io::Result<()> {
        if lock(&self.shared.net).listener.is_some() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "the block node is running; kill it first"));
        }
        let listener = net::bind(self.addr)?;
        self.shared.update(|r| r.events.push(Event::Restarted));
        self.shared.serve(listener);
        Ok(())
    }

    /// Whether it is serving (not killed).
    pub fn is_running(&self) -> bool {
        lock(&self.shared.net).listener.is_some()
    }

    /// The record, locked: do not hold it across an `.await`.
    pub fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.shared.record)
    }

    /// The items of every complete block received (last copy wins).
    pub fn blocks(&self) -> BTreeMap<u64, Vec<Bytes>> {
        self.record().blocks.clone()
    }

    /// Numbers of complete blocks in the order received, duplicates included.
    pub fn block_order(&self) -> Vec<u64> {
        self.record().block_order.clone()
    }

    /// Every request decoded, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.record().requests.clone()
    }

    /// The publishers' `EndStream` requests.
    pub fn end_streams(&self) -> Vec<EndStreamRecord> {
        self.record().end_streams.clone()
    }

    /// What happened, in order.
    pub fn events(&self) -> Vec<Event> {
        self.record().events.clone()
    }

    /// The events from index `from` on (for following the log).
    pub fn events_since(&self, from: usize) -> Vec<Event> {
        self.record().events.get(from..).map_or_else(Vec::new, <[Event]>::to_vec)
    }

    /// Every response sent, with its stream, in order.
    pub fn responses(&self) -> Vec<(u64, PublishStreamResponse)> {
        self.record().responses()
    }

    /// Streams opened (refused ones too).
    pub fn connections(&self) -> u64 {
        self.record().connections
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u64 {
        self.record().open_streams
    }

    /// Wait until `done` holds for the record; whether it did within `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Record) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.record()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(&self.record());
            }
        }
    }

    /// Wait until block `n` has arrived complete; whether it did within `timeout`.
    pub async fn wait_for_block(&self, n: u64, timeout: Duration) -> bool {
        self.wait_for(timeout, |r| r.blocks.contains_key(&n)).await
    }
}

impl Drop for BlockNode {
    fn drop(&mut self) {
        self.shared.kill();
    }
}

/// What the server, the streams and the handle share.
struct Shared {
    hard_limit: usize,
    window: Option<u32>,
    keep_items: bool,
    /// Response headers go out with the first response.
    late_headers: bool,
    record: Mutex<Record>,
    /// Rules, and whether each has fired.
    rules: Mutex<Vec<(Rule, bool)>>,
    /// Open streams' control channels.
    streams: Mutex<HashMap<u64, mpsc::UnboundedSender<Control>>>,
    net: Mutex<Net>,
    /// Notified on every change of the record.
    changed: Notify,
    ack_nothing: AtomicBool,
    /// How many times the node was killed.
    kills: AtomicU64,
}

impl Shared {
    /// Change the record and wake the waiters.
    fn update<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        let result = f(&mut lock(&self.record));
        self.changed.notify_waiters();
        result
    }

    /// The actions of the rules `trigger` fires on `stream` (marking once-rules fired).
    fn fire(&self, trigger: Trigger, stream: u64) -> Vec<Action> {
        let actions: Vec<Action> = lock(&self.rules)
            .iter_mut()
            .filter(|(rule, fired)| {
                rule.trigger == trigger && rule.stream.is_none_or(|s| s == stream) && (rule.always || !*fired)
            })
            .map(|(rule, fired)| {
                *fired = true;
                rule.action.clone()
            })
            .collect();
        if !actions.is_empty() {
            self.update(|r| {
                let fired = actions.iter().map(|action| Event::Fired { stream, trigger, action: action.clone() });
                r.events.extend(fired);
            });
        }
        actions
    }

    /// Number and register a new stream.
    fn open_stream(&self, peer: Option<SocketAddr>, control: mpsc::UnboundedSender<Control>) -> u64 {
        let stream = self.update(|r| {
            r.connections += 1;
            r.open_streams += 1;
            r.events.push(Event::StreamOpened { stream: r.connections, peer });
            r.connections
        });
        lock(&self.streams).insert(stream, control);
        stream
    }

    fn close_stream(&self, stream: u64, end: StreamEnd) {
        lock(&self.streams).remove(&stream);
        self.update(|r| {
            r.open_streams -= 1;
            r.events.push(Event::StreamEnded { stream, end });
        });
    }

    /// Serve `listener` (replacing whatever was served before).
    fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let slot = Arc::new(Mutex::new(Some(listener)));
        lock(&self.net).listener = Some(slot.clone());
        let incoming = Incoming { listener: slot, shared: self.clone() };
        let service = BlockStreamPublishServiceServer::new(Service(self.clone()))
            .max_decoding_message_size(self.hard_limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(self.window)
            .initial_connection_window_size(self.window)
            .add_service(service)
            .serve_with_incoming(incoming);
        let handle = tokio::spawn(async move {
            let _ = server.await;
        });
        lock(&self.net).server = Some(handle);
    }

    /// Close the listener, stop the server, cut every connection and end every stream, now.
    fn kill(&self) {
        let (listener, server, conns) = {
            let mut net = lock(&self.net);
            (net.listener.take(), net.server.take(), std::mem::take(&mut net.conns))
        };
        let was_running = listener.is_some();
        // Streams learn of the kill before their connections fail.
        self.kills.fetch_add(1, Ordering::SeqCst);
        for tx in lock(&self.streams).values() {
            let _ = tx.send(Control::Kill);
        }
        if let Some(slot) = listener {
            drop(lock(&slot).take());
        }
        if let Some(server) = server {
            server.abort();
        }
        for conn in conns.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if was_running {
            self.update(|r| r.events.push(Event::Killed));
        }
    }

    /// Cut the connection `conn`.
    fn cut(&self, conn: Option<u64>) {
        if let Some(id) = conn {
            lock(&self.net).cut(id);
        }
    }
}

/// Lock, ignoring poisoning (a panicking test thread must not hide the record).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
