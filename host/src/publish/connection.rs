//! One connection to a block node, as a consensus node keeps it: its state machine
//! `UNINITIALIZED → READY → ACTIVE → CLOSING → CLOSED`, the worker that sends
//! blocks as packed requests, and the handling of every response.
//!
//! A connection runs once and is never reused: [`run`] returns why it ended
//! and the manager decides what comes next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blockferry_proto::api::block_stream_publish_service_client::BlockStreamPublishServiceClient;
use blockferry_proto::api::publish_stream_request::{EndStream, Request};
use blockferry_proto::api::publish_stream_response::Response;
use blockferry_proto::api::{BlockEnd, BlockItemSet};
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamRequest, PublishStreamResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::BlockNodeConfig;
use super::context::{ConnectionState, Ctx, Stop};
use super::packer::{TooLarge, pack};
use crate::buffer::Block;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The node sent `EndOfStream`.
    EndOfStream {
        /// Its code.
        code: EndOfStreamCode,
        /// Its block number (the last block the node holds).
        block: u64,
    },
    /// The node asked for a block we no longer hold (`EndStream TOO_FAR_BEHIND` sent).
    TooFarBehind(u64),
    /// The node asked for a block not produced yet (`EndStream ERROR` sent).
    FutureBlock(u64),
    /// An item exceeds the node's hard limit (`EndStream ERROR` sent).
    TooLarge(u64, TooLarge),
    /// The stream could not be opened or failed (transport error, status, closed by the node).
    Failed(String),
    /// A pipeline operation (open, send, close) passed its deadline.
    Timeout(&'static str),
    /// Sent blocks went unacknowledged past the latency bound.
    Stalled(u64),
    /// Closed gracefully to switch to a node of higher priority.
    Switched,
    /// Closed gracefully at the periodic stream reset.
    Reset,
    /// The publisher shut down (no graceful steps).
    Shutdown,
}

impl Ended {
    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Ended::EndOfStream { .. } => "end_of_stream",
            Ended::TooFarBehind(_) => "too_far_behind",
            Ended::FutureBlock(_) => "future_block",
            Ended::TooLarge(..) => "item_too_large",
            Ended::Failed(_) => "failed",
            Ended::Timeout(_) => "timeout",
            Ended::Stalled(_) => "stalled",
            Ended::Switched => "switched",
            Ended::Reset => "reset",
            Ended::Shutdown => "shutdown",
        }
    }
}

/// What a connection did.
#[derive(Debug)]
pub struct Outcome {
    /// Why it ended.
    pub ended: Ended,
    /// Whether the node acknowledged anything (a healthy stream resets the backoff).
    pub acknowledged: bool,
}

/// The block being sent: its items packed into requests.
struct Cursor {
    block: Arc<Block>,
    requests: Vec<std::ops::Range<usize>>,
    next: usize,
}

/// The worker's state on one stream.
struct Worker<'a> {
    ctx: &'a Ctx,
    node: &'a BlockNodeConfig,
    tx: mpsc::Sender<PublishStreamRequest>,
    /// The next block to send.
    current: u64,
    cursor: Option<Cursor>,
    /// Blocks whose header went out and that await an acknowledgement.
    sent_at: BTreeMap<u64, Instant>,
    acknowledged: bool,
    /// Our `EndStream` went out: end our side and let it reach the node.
    ended_stream: bool,
}

/// Open a stream to `node` and stream blocks from `start` until something
/// ends it.
pub(super) async fn run(ctx: &Ctx, node: &BlockNodeConfig, start: u64, mut stop: watch::Receiver<Stop>) -> Outcome {
    let name = node.name();
    ctx.set_state(&name, ConnectionState::Uninitialized, None);
    let pipeline = ctx.pipeline_timeout();
    let (tx, mut responses) = match timeout(pipeline, open(node)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return closed(ctx, &name, Ended::Failed(e), false),
        Err(_) => return closed(ctx, &name, Ended::Timeout("opening the stream"), false),
    };
    ctx.count("connections_opened_total", &name);
    ctx.set_state(&name, ConnectionState::Ready, None);
    ctx.set_state(&name, ConnectionState::Active, Some(start));
    tracing::info!(node = %name, block = start, "streaming to block node");

    let mut w = Worker {
        ctx,
        node,
        tx,
        current: start,
        cursor: None,
        sent_at: BTreeMap::new(),
        acknowledged: false,
        ended_stream: false,
    };
    let mut latest = ctx.buffer.subscribe_latest();
    let reset_at = Instant::now() + Duration::from_millis(ctx.config.stream_reset_period_ms);
    let bound = Duration::from_millis(ctx.config.ack_latency_bound_ms);
    // Set while a request waits for room in the stream.
    let mut send_deadline: Option<Instant> = None;
    let ended = loop {
        let work = w.ready_to_send().await;
        // The deadline runs only while a request waits to be sent.
        if !work {
            send_deadline = None;
        } else if send_deadline.is_none() {
            send_deadline = Some(Instant::now() + pipeline);
        }
        let stall_at = w.sent_at.values().min().map(|t| *t + bound);
        tokio::select! {
            biased;
            _ = stop.changed() => {
                let why = *stop.borrow();
                match why {
                    Stop::Shutdown => break Ended::Shutdown,
                    Stop::Switch => break w.close_gracefully(&mut responses, Ended::Switched).await,
                    Stop::None => continue,
                }
            }
            message = responses.message() => {
                if let Some(ended) = w.on_response(message).await {
                    break ended;
                }
            }
            permit = w.tx.clone().reserve_owned(), if work => match permit {
                Ok(permit) => {
                    send_deadline = None;
                    if let Err(ended) = w.send_next(permit) {
                        let _ = w.send_end_stream(EndStreamCode::Error).await;
                        break ended;
                    }
                }
                Err(_) => break w.after_request_stream_closed(&mut responses).await,
            },
            _ = latest.changed() => {}
            _ = sleep_until(send_deadline.unwrap_or(reset_at)), if send_deadline.is_some() => {
                break Ended::Timeout("sending a request");
            }
            _ = sleep_until(stall_at.unwrap_or(reset_at)), if stall_at.is_some() => {
                let block = w.sent_at.keys().next().copied().unwrap_or(w.current);
                break Ended::Stalled(block);
            }
            _ = sleep_until(reset_at) => break w.close_gracefully(&mut responses, Ended::Reset).await,
        }
    };
    if w.ended_stream && !matches!(ended, Ended::Switched | Ended::Reset) {
        w.end_our_side(&mut responses).await;
    }
    let acknowledged = w.acknowledged;
    closed(ctx, &name, ended, acknowledged)
}

fn closed(ctx: &Ctx, name: &str, ended: Ended, acknowledged: bool) -> Outcome {
    ctx.set_state(name, ConnectionState::Closed, None);
    ctx.count("connections_closed_total", &format!("{name},{}", ended.label()));
    match &ended {
        Ended::Switched | Ended::Reset | Ended::Shutdown => {
            tracing::info!(node = %name, reason = ended.label(), "block node connection closed")
        }
        Ended::TooLarge(block, e) => tracing::error!(node = %name, block, "cannot stream the block: {e}"),
        other => tracing::warn!(node = %name, reason = ?other, "block node connection closed"),
    }
    Outcome { ended, acknowledged }
}

/// The node's side of the stream. The call is under way from the moment the
/// stream is opened: requests flow before the node's response headers arrive
/// (a gRPC server may send its headers only with its first response, and a
/// publisher that waited for them would wait forever).
struct Responses {
    /// The call, until the node's response headers arrive.
    call: Option<tokio::task::JoinHandle<Result<Streaming<PublishStreamResponse>, tonic::Status>>>,
    stream: Option<Streaming<PublishStreamResponse>>,
}

impl Responses {
    /// The next response (cancel-safe: an unfinished wait for the headers is
    /// resumed by the next call).
    async fn message(&mut self) -> Result<Option<PublishStreamResponse>, tonic::Status> {
        if let Some(call) = &mut self.call {
            let opened = call.await.unwrap_or_else(|e| Err(tonic::Status::internal(format!("the call failed: {e}"))));
            self.call = None;
            self.stream = Some(opened?);
        }
        match &mut self.stream {
            Some(stream) => stream.message().await,
            None => Ok(None),
        }
    }
}

impl Drop for Responses {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.abort();
        }
    }
}

/// Connect and start the bidirectional stream, without waiting for the
/// node's response headers.
async fn open(node: &BlockNodeConfig) -> Result<(mpsc::Sender<PublishStreamRequest>, Responses), String> {
    let uri = format!("http://{}:{}", node.address, node.port);
    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("{uri} is not a usable address: {e}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {uri}: {}", error_chain(&e)))?;
    let mut client = BlockStreamPublishServiceClient::new(channel)
        .max_encoding_message_size(node.hard_limit_bytes)
        .max_decoding_message_size(16 * 1024 * 1024);
    // One request in flight ahead of the HTTP/2 stream: its flow control is the backpressure.
    let (tx, rx) = mpsc::channel(1);
    let call = tokio::spawn(async move {
        client
            .publish_block_stream(ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| tonic::Status::new(s.code(), format!("{uri} refused the stream: {}", s.message())))
    });
    Ok((tx, Responses { call: Some(call), stream: None }))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

impl Worker<'_> {
    /// Whether a request can be sent now (loading the next block if it is available).
    async fn ready_to_send(&mut self) -> bool {
        if self.cursor.is_some() {
            return true;
        }
        let Some(latest) = *self.ctx.buffer.subscribe_latest().borrow() else { return false };
        if self.current > latest {
            return false;
        }
        match self.ctx.block(self.current).await {
            Some(block) => {
                match pack(&block.items, self.node.soft_limit_bytes, self.node.hard_limit_bytes) {
                    Ok(requests) => self.cursor = Some(Cursor { block, requests, next: 0 }),
                    // Reported when the send is attempted.
                    Err(_) => self.cursor = Some(Cursor { block, requests: Vec::new(), next: 0 }),
                }
                true
            }
            None => {
                // Gone from memory and disk (retention): go on with the oldest we still hold.
                let next = self.ctx.oldest_available(self.current).await.unwrap_or(latest);
                tracing::warn!(node = %self.node.name(), from = self.current, to = next, "blocks no longer held are skipped");
                self.current = next.max(self.current + 1);
                false
            }
        }
    }

    /// Send the next request of the current block (or its `BlockEnd`).
    fn send_next(&mut self, permit: mpsc::OwnedPermit<PublishStreamRequest>) -> Result<(), Ended> {
        let cursor = self.cursor.as_mut().expect("a cursor when there is work");
        let number = cursor.block.number;
        if cursor.requests.is_empty() && !cursor.block.items.is_empty() {
            let e = pack(&cursor.block.items, self.node.soft_limit_bytes, self.node.hard_limit_bytes)
                .expect_err("an unpackable block");
            self.ctx.count("item_too_large_total", &self.node.name());
            return Err(Ended::TooLarge(number, e));
        }
        if cursor.next == 0 {
            self.sent_at.insert(number, Instant::now());
            self.ctx.set_streaming(number);
        }
        if let Some(range) = cursor.requests.get(cursor.next).cloned() {
            cursor.next += 1;
            let items = cursor.block.items[range].to_vec();
            permit
                .send(PublishStreamRequest { request: Some(Request::BlockItems(BlockItemSet { block_items: items })) });
        } else {
            permit.send(PublishStreamRequest { request: Some(Request::EndOfBlock(BlockEnd { block_number: number })) });
            self.cursor = None;
            self.current = number + 1;
        }
        Ok(())
    }

    /// Handle one response; `Some` when it ends the stream.
    async fn on_response(&mut self, message: Result<Option<PublishStreamResponse>, tonic::Status>) -> Option<Ended> {
        let name = self.node.name();
        let response = match message {
            Ok(Some(PublishStreamResponse { response: Some(r) })) => r,
            Ok(Some(PublishStreamResponse { response: None })) => {
                self.ctx.count("responses_total", &format!("{name},empty"));
                return None;
            }
            Ok(None) => return Some(Ended::Failed("the block node closed the stream".into())),
            Err(status) => {
                return Some(Ended::Failed(format!("stream error: {:?} {}", status.code(), status.message())));
            }
        };
        match response {
            Response::Acknowledgement(ack) => {
                self.ctx.count("responses_total", &format!("{name},acknowledgement"));
                self.on_ack(ack.block_number);
                None
            }
            Response::SkipBlock(skip) => {
                self.ctx.count("responses_total", &format!("{name},skip_block"));
                let n = skip.block_number;
                self.sent_at.remove(&n);
                if self.cursor.as_ref().is_some_and(|c| c.block.number == n) || self.current == n {
                    tracing::debug!(node = %name, block = n, "block node skips the block");
                    self.cursor = None;
                    self.current = n + 1;
                }
                None
            }
            Response::ResendBlock(resend) => {
                self.ctx.count("responses_total", &format!("{name},resend_block"));
                let n = resend.block_number;
                if self.ctx.block(n).await.is_some() {
                    tracing::info!(node = %name, block = n, "block node asks to resend from block {n}");
                    self.rewind(n);
                    None
                } else {
                    let _ = self.send_end_stream(EndStreamCode::TooFarBehind).await;
                    Some(Ended::TooFarBehind(n))
                }
            }
            Response::NodeBehindPublisher(behind) => {
                self.ctx.count("responses_total", &format!("{name},behind_publisher"));
                let wanted = behind.block_number.wrapping_add(1);
                let latest = self.ctx.buffer.state().latest.or(self.ctx.store_latest().await);
                if latest.is_none_or(|l| wanted > l) {
                    let _ = self.send_end_stream(EndStreamCode::Error).await;
                    Some(Ended::FutureBlock(wanted))
                } else if self.ctx.block(wanted).await.is_some() {
                    tracing::info!(node = %name, block = wanted, "block node is behind: streaming from block {wanted}");
                    self.rewind(wanted);
                    None
                } else {
                    let _ = self.send_end_stream(EndStreamCode::TooFarBehind).await;
                    Some(Ended::TooFarBehind(wanted))
                }
            }
            Response::EndStream(end) => {
                let code = EndOfStreamCode::try_from(end.status).unwrap_or(EndOfStreamCode::Unknown);
                self.ctx
                    .count("responses_total", &format!("{name},end_of_stream_{}", code.as_str_name().to_lowercase()));
                Some(Ended::EndOfStream { code, block: end.block_number })
            }
        }
    }

    fn on_ack(&mut self, number: u64) {
        self.acknowledged = true;
        self.ctx.buffer.acknowledge(number);
        let acked: Vec<u64> = self.sent_at.range(..=number).map(|(n, _)| *n).collect();
        for n in acked {
            if let Some(sent) = self.sent_at.remove(&n) {
                self.ctx.observe_ack_latency(sent.elapsed());
            }
        }
    }

    fn rewind(&mut self, number: u64) {
        self.cursor = None;
        self.current = number;
        self.sent_at.retain(|n, _| *n < number);
    }

    /// Send our `EndStream` with the range of blocks we hold.
    async fn send_end_stream(&mut self, code: EndStreamCode) -> Result<(), ()> {
        let (earliest, latest) = self.ctx.held_range().await;
        let request = PublishStreamRequest {
            request: Some(Request::EndStream(EndStream {
                end_code: code as i32,
                earliest_block_number: earliest,
                latest_block_number: latest,
            })),
        };
        self.ctx.count("end_streams_sent_total", &format!("{},{}", self.node.name(), code.as_str_name()));
        match timeout(self.ctx.pipeline_timeout(), self.tx.send(request)).await {
            Ok(Ok(())) => {
                self.ended_stream = true;
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// The request stream closed under us. The node may have ended the
    /// stream with a response still on its way (an `EndOfStream` sent just
    /// before it closed, which the request side can see closed first): read
    /// what is left, bounded by the pipeline timeout, before calling it a
    /// failure, so that the node's own reason decides the failover.
    async fn after_request_stream_closed(&mut self, responses: &mut Responses) -> Ended {
        let deadline = Instant::now() + self.ctx.pipeline_timeout();
        loop {
            match tokio::time::timeout_at(deadline, responses.message()).await {
                Ok(message) => {
                    if let Some(ended) = self.on_response(message).await {
                        return ended;
                    }
                }
                Err(_) => return Ended::Failed("the request stream closed".into()),
            }
        }
    }

    /// End our side of the stream and wait (bounded) for the node to end
    /// its side, handling acknowledgements that still arrive: what we sent,
    /// our `EndStream` included, reaches the node before the connection
    /// closes. `false` if the node did not end its side in time.
    async fn end_our_side(&mut self, responses: &mut Responses) -> bool {
        let (closed_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed_tx));
        let deadline = Instant::now() + self.ctx.pipeline_timeout();
        loop {
            match tokio::time::timeout_at(deadline, responses.message()).await {
                Ok(Ok(Some(PublishStreamResponse { response: Some(Response::Acknowledgement(a)) }))) => {
                    self.on_ack(a.block_number)
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Finish the block in flight, send `EndStream RESET`, end our side and
    /// wait (bounded) for the node to end its side, so the `EndStream`
    /// reaches it before the connection closes.
    async fn close_gracefully(&mut self, responses: &mut Responses, why: Ended) -> Ended {
        let name = self.node.name();
        self.ctx.set_state(&name, ConnectionState::Closing, None);
        let pipeline = self.ctx.pipeline_timeout();
        while self.cursor.is_some() {
            let permit = match timeout(pipeline, self.tx.clone().reserve_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Ended::Timeout("finishing the block in flight"),
            };
            if let Err(ended) = self.send_next(permit) {
                return ended;
            }
        }
        if self.send_end_stream(EndStreamCode::Reset).await.is_err() {
            return Ended::Timeout("sending EndStream");
        }
        if self.end_our_side(responses).await { why } else { Ended::Timeout("closing the stream") }
    }
}
