//! The consensus node: streams generated blocks over the publish protocol,
//! follows the block node's answers, and measures acknowledgement latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Streaming;

use blockferry_proto::api::publish_stream_response::{EndOfStream, Response};
use blockferry_proto::framing::{item_frame_len, items_request_len};
use blockferry_proto::item::header_number;
use blockferry_proto::{EndOfStreamCode, EndStreamCode, PublishStreamRequest, PublishStreamResponse};

use crate::blocks::generate_block;
use crate::error::PublishError;
use crate::session::{self, CLOSE_GRACE};

/// What to publish, where, and how a consensus node paces it.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// blockferry's ingest address, `http://host:port` (or `host:port`).
    pub endpoint: String,
    /// The first block's number.
    pub first_block: u64,
    /// How many blocks to publish.
    pub blocks: u64,
    /// Target size of each serialized block (see [`generate_block`]).
    pub block_size: usize,
    /// Block `n`'s `BlockEnd` goes out at start + (n - first) × interval; zero is full speed.
    pub interval: Duration,
    /// Requests are packed up to this many bytes (a single larger item goes alone).
    pub soft_limit: usize,
    /// Stop producing while this many blocks are unacknowledged (a consensus node's buffer).
    pub max_unacked: u64,
    /// Give up after this long without progress.
    pub ack_timeout: Duration,
    /// Stream these blocks (each its items, byte for byte; block
    /// `first_block + i` is `replay[i]`) instead of generated ones.
    pub replay: Option<Arc<Vec<Vec<Bytes>>>>,
}

impl PublisherOptions {
    /// Publish `blocks` blocks of `block_size` bytes from `first_block` to `endpoint`, otherwise the defaults.
    pub fn new(endpoint: impl Into<String>, first_block: u64, blocks: u64, block_size: usize) -> Self {
        Self { endpoint: endpoint.into(), first_block, blocks, block_size, ..Self::default() }
    }

    /// Replay `blocks` (consecutive blocks, each its items as they are to be
    /// sent) to `endpoint`, otherwise the defaults.
    pub fn replay(endpoint: impl Into<String>, blocks: Vec<Vec<Bytes>>) -> Self {
        let first_block =
            blocks.first().and_then(|items| items.first()).and_then(|h| header_number(h).ok()).unwrap_or(0);
        let count = blocks.len() as u64;
        Self {
            endpoint: endpoint.into(),
            first_block,
            blocks: count,
            replay: Some(Arc::new(blocks)),
            ..Self::default()
        }
    }
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:40840".into(),
            first_block: 0,
            blocks: 100,
            block_size: 64 * 1024,
            interval: Duration::ZERO,
            soft_limit: 2_000_000,
            max_unacked: 150,
            ack_timeout: Duration::from_secs(30),
            replay: None,
        }
    }
}

/// What a publish run did and saw.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// The first block of the run.
    pub first_block: u64,
    /// How many blocks the run was to publish.
    pub blocks: u64,
    /// The highest block acknowledged.
    pub acknowledged_up_to: Option<u64>,
    /// Blocks sent whole (with their `BlockEnd`), resent ones included.
    pub blocks_sent: u64,
    /// Block bytes sent (item frames as in a serialized block), resent and skipped ones included.
    pub bytes_sent: u64,
    /// Requests sent (item sets, `BlockEnd`s, `EndStream`).
    pub requests_sent: u64,
    /// From the stream's start to the last acknowledgement (or the end of the run).
    pub elapsed: Duration,
    /// Per acknowledged block (a resent one again), from its `BlockEnd` being sent to its acknowledgement arriving.
    pub latencies: Vec<Duration>,
    /// Time spent not producing because `max_unacked` blocks were unacknowledged.
    pub stalled: Duration,
    /// `SkipBlock` responses.
    pub skipped: u64,
    /// `ResendBlock` responses.
    pub resent: u64,
    /// `BehindPublisher` responses.
    pub behind: u64,
    /// The block node's `EndOfStream`, if it ended the stream.
    pub end_of_stream: Option<EndOfStream>,
    /// Every response, in order.
    pub responses: Vec<PublishStreamResponse>,
}

impl PublishReport {
    /// How many blocks of the run are acknowledged.
    pub fn acknowledged(&self) -> u64 {
        match self.acknowledged_up_to {
            Some(n) if n >= self.first_block => (n - self.first_block + 1).min(self.blocks),
            _ => 0,
        }
    }

    /// Whether every block of the run was acknowledged.
    pub fn complete(&self) -> bool {
        self.acknowledged() == self.blocks
    }

    /// The median acknowledgement latency.
    pub fn p50(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    /// The 99th percentile acknowledgement latency.
    pub fn p99(&self) -> Option<Duration> {
        self.percentile(99.0)
    }

    /// The highest acknowledgement latency.
    pub fn max(&self) -> Option<Duration> {
        self.latencies.iter().max().copied()
    }

    /// The latency below which `p` percent of acknowledgements came (nearest rank).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// Block bytes sent per second (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes_sent as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Blocks acknowledged per second.
    pub fn blocks_per_s(&self) -> f64 {
        self.acknowledged() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The figures, one per line.
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        let mut s = String::new();
        let last = self.acknowledged_up_to.map_or("none".to_string(), |n| n.to_string());
        let _ = writeln!(s, "blocks acknowledged: {}/{} (up to {last})", self.acknowledged(), self.blocks);
        let _ = writeln!(s, "elapsed: {:.3} s", self.elapsed.as_secs_f64());
        let _ = writeln!(
            s,
            "throughput: {:.2} MB/s ({} bytes in {} requests)",
            self.mb_per_s(),
            self.bytes_sent,
            self.requests_sent
        );
        let _ = writeln!(s, "blocks/s: {:.2}", self.blocks_per_s());
        let _ = writeln!(s, "ack latency: p50 {} p99 {} max {}", ms(self.p50()), ms(self.p99()), ms(self.max()));
        let _ = writeln!(s, "stalled (max unacked reached): {:.3} s", self.stalled.as_secs_f64());
        let _ = writeln!(s, "skipped: {} resent: {} behind: {}", self.skipped, self.resent, self.behind);
        if let Some(end) = &self.end_of_stream {
            let code = EndOfStreamCode::try_from(end.status).map_or(end.status.to_string(), |c| c.as_str_name().into());
            let _ = writeln!(s, "EndOfStream: {code} at block {}", end.block_number);
        }
        s
    }
}

/// Publish `opts.blocks` generated blocks to `opts.endpoint` as a consensus
/// node does, following the block node's answers, and report.
///
/// An `EndOfStream` from the block node ends the run with a report carrying
/// it; so does a block node too far behind (`EndStream TOO_FAR_BEHIND`).
pub async fn publish(opts: &PublisherOptions) -> Result<PublishReport, PublishError> {
    let (requests, responses) = session::open(&opts.endpoint).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_responses(responses, events_tx));
    let mut run = Run::new(opts);
    let outcome = run.stream(&requests, &mut events).await;
    let result = match outcome {
        Ok(Finish::Done) => {
            let last = opts.first_block + opts.blocks.saturating_sub(1);
            run.finish_with(&requests, EndStreamCode::Reset, last).await;
            Ok(())
        }
        Ok(Finish::TooFarBehind) => {
            let latest = run.produced.unwrap_or(opts.first_block);
            run.finish_with(&requests, EndStreamCode::TooFarBehind, latest).await;
            Ok(())
        }
        Ok(Finish::EndOfStream) => Ok(()),
        Err(e) => Err(e),
    };
    drop(requests);
    if result.is_ok() {
        run.drain(&mut events).await;
    }
    reader.abort();
    result.map(|()| run.report)
}

enum Event {
    Response(PublishStreamResponse, Instant),
    Failed(tonic::Status),
    Ended,
}

/// Forward responses, stamped on arrival.
async fn read_responses(mut responses: Streaming<PublishStreamResponse>, events: mpsc::UnboundedSender<Event>) {
    loop {
        let event = match responses.message().await {
            Ok(Some(response)) => Event::Response(response, Instant::now()),
            Ok(None) => Event::Ended,
            Err(status) => Event::Failed(status),
        };
        let last = !matches!(event, Event::Response(..));
        if events.send(event).is_err() || last {
            return;
        }
    }
}

enum Finish {
    /// Every block acknowledged.
    Done,
    /// The block node wants a block before the first one this run has.
    TooFarBehind,
    /// The block node ended the stream.
    EndOfStream,
}

/// What to do next.
enum Action {
    /// Send the next request.
    Send,
    /// Wait until the open block's `BlockEnd` is due.
    WaitUntil(Instant),
    /// `max_unacked` blocks are unacknowledged.
    Stalled,
    /// Everything is sent; wait for acknowledgements.
    Idle,
}

/// The block being sent.
struct Current {
    number: u64,
    items: Vec<Bytes>,
    /// The next item to send.
    next_item: usize,
}

struct Run<'a> {
    opts: &'a PublisherOptions,
    start: Instant,
    /// The block being sent, or to start next.
    next: u64,
    current: Option<Current>,
    /// Blocks whose `BlockEnd` was sent, not yet acknowledged: when it was sent.
    pending: BTreeMap<u64, Instant>,
    /// The highest block generated.
    produced: Option<u64>,
    last_progress: Instant,
    stall_since: Option<Instant>,
    report: PublishReport,
}

impl<'a> Run<'a> {
    fn new(opts: &'a PublisherOptions) -> Self {
        let now = Instant::now();
        Self {
            opts,
            start: now,
            next: opts.first_block,
            current: None,
            pending: BTreeMap::new(),
            produced: None,
            last_progress: now,
            stall_since: None,
            report: PublishReport { first_block: opts.first_block, blocks: opts.blocks, ..Default::default() },
        }
    }

    /// The last block of the run (none for an empty run).
    fn last(&self) -> Option<u64> {
        self.opts.blocks.checked_sub(1).map(|n| self.opts.first_block + n)
    }

    fn complete(&self) -> bool {
        match self.last() {
            None => true,
            Some(last) => self.report.acknowledged_up_to.is_some_and(|a| a >= last),
        }
    }

    fn action(&self, now: Instant) -> Action {
        match &self.current {
            None if self.last().is_none_or(|last| self.next > last) => Action::Idle,
            None if self.pending.len() as u64 >= self.opts.max_unacked.max(1) => Action::Stalled,
            None => Action::Send,
            Some(c) if c.next_item < c.items.len() => Action::Send,
            Some(c) => {
                let due = self.due(c.number);
                if due > now { Action::WaitUntil(due) } else { Action::Send }
            }
        }
    }

    /// When block `number`'s `BlockEnd` is due.
    fn due(&self, number: u64) -> Instant {
        let k = u32::try_from(number.saturating_sub(self.opts.first_block)).unwrap_or(u32::MAX);
        let at = self.opts.interval.saturating_mul(k).min(Duration::from_secs(100 * 365 * 86_400));
        self.start + at
    }

    /// Stream until every block is acknowledged or the stream must end.
    async fn stream(
        &mut self,
        requests: &mpsc::Sender<PublishStreamRequest>,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<Finish, PublishError> {
        loop {
            if self.complete() {
                self.close_stall(Instant::now());
                return Ok(Finish::Done);
            }
            let now = Instant::now();
            let action = self.action(now);
            match action {
                Action::Stalled => {
                    self.stall_since.get_or_insert(now);
                }
                _ => self.close_stall(now),
            }
            let send = matches!(action, Action::Send);
            let wait_until = match action {
                Action::WaitUntil(at) => Some(at),
                _ => None,
            };
            // Waiting for a block's slot with nothing unacknowledged is not a lack of progress.
            let watch = !(self.pending.is_empty() && wait_until.is_some());
            let deadline = self.last_progress + self.opts.ack_timeout;
            tokio::select! {
                biased;
                event = events.recv() => {
                    let event = event.unwrap_or(Event::Ended);
                    if let Some(finish) = self.on_event(event)? {
                        self.close_stall(Instant::now());
                        return Ok(finish);
                    }
                }
                permit = requests.reserve(), if send => {
                    let Ok(permit) = permit else {
                        // The call is over: the reader says why.
                        let deadline = Instant::now() + CLOSE_GRACE;
                        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
                            if let Some(finish) = self.on_event(event)? {
                                return Ok(finish);
                            }
                        }
                        return Err(PublishError::SendClosed);
                    };
                    permit.send(self.next_request());
                    self.last_progress = Instant::now();
                }
                _ = tokio::time::sleep_until(wait_until.unwrap_or(now)), if wait_until.is_some() => {}
                _ = tokio::time::sleep_until(deadline), if watch => {
                    return Err(PublishError::AckTimeout {
                        last_acknowledged: self.report.acknowledged_up_to,
                        waited: self.opts.ack_timeout,
                    });
                }
            }
        }
    }

    fn close_stall(&mut self, now: Instant) {
        if let Some(since) = self.stall_since.take() {
            self.report.stalled += now - since;
        }
    }

    /// The next request of the current block (starting the next block if none is open).
    fn next_request(&mut self) -> PublishStreamRequest {
        let current = match &mut self.current {
            Some(current) => current,
            None => {
                let number = self.next;
                self.produced = self.produced.max(Some(number));
                let items = match &self.opts.replay {
                    Some(blocks) => blocks[(number - self.opts.first_block) as usize].clone(),
                    None => generate_block(number, self.opts.block_size),
                };
                self.current.insert(Current { number, items, next_item: 0 })
            }
        };
        self.report.requests_sent += 1;
        if current.next_item == current.items.len() {
            let number = current.number;
            self.current = None;
            self.next = number + 1;
            self.pending.insert(number, Instant::now());
            self.report.blocks_sent += 1;
            return session::block_end_request(number);
        }
        // As many items as fit under the soft limit, counting framing exactly;
        // a single item above it goes alone.
        let start = current.next_item;
        let mut frames = 0;
        for item in &current.items[start..] {
            let frame = item_frame_len(item.len());
            if current.next_item > start && items_request_len(frames + frame) > self.opts.soft_limit {
                break;
            }
            frames += frame;
            current.next_item += 1;
        }
        self.report.bytes_sent += frames as u64;
        session::items_request(current.items[start..current.next_item].to_vec())
    }

    /// Follow one event from the block node; `Some` ends the stream.
    fn on_event(&mut self, event: Event) -> Result<Option<Finish>, PublishError> {
        let (response, at) = match event {
            Event::Response(response, at) => (response, at),
            Event::Failed(status) => return Err(status.into()),
            Event::Ended if self.complete() => return Ok(Some(Finish::Done)),
            Event::Ended => {
                return Err(PublishError::StreamEnded { acknowledged_up_to: self.report.acknowledged_up_to });
            }
        };
        self.last_progress = Instant::now();
        self.report.responses.push(response);
        match response.response {
            Some(Response::Acknowledgement(ack)) => {
                let n = ack.block_number;
                let later = match n.checked_add(1) {
                    Some(above) => self.pending.split_off(&above),
                    None => BTreeMap::new(),
                };
                let acked = std::mem::replace(&mut self.pending, later);
                self.report.latencies.extend(acked.values().map(|sent| at.saturating_duration_since(*sent)));
                self.report.acknowledged_up_to = self.report.acknowledged_up_to.max(Some(n));
                if self.complete() {
                    self.report.elapsed = at.saturating_duration_since(self.start);
                }
            }
            Some(Response::SkipBlock(skip)) => {
                self.report.skipped += 1;
                // Only the block being sent (or about to be) can be skipped.
                if skip.block_number == self.next {
                    self.current = None;
                    self.next += 1;
                }
            }
            Some(Response::ResendBlock(resend)) => {
                self.report.resent += 1;
                let n = resend.block_number;
                if n < self.opts.first_block {
                    return Ok(Some(Finish::TooFarBehind));
                }
                if n <= self.next {
                    self.rewind(n);
                }
            }
            Some(Response::NodeBehindPublisher(behind)) => {
                self.report.behind += 1;
                // u64::MAX (-1 to a Java node) is "no block yet": it wants block 0.
                let wanted = behind.block_number.wrapping_add(1);
                if wanted < self.opts.first_block {
                    return Ok(Some(Finish::TooFarBehind));
                }
                self.rewind(wanted);
            }
            Some(Response::EndStream(end)) => {
                self.report.end_of_stream = Some(end);
                self.report.elapsed = at.saturating_duration_since(self.start);
                return Ok(Some(Finish::EndOfStream));
            }
            None => {}
        }
        Ok(None)
    }

    /// Send from block `n` on.
    fn rewind(&mut self, n: u64) {
        self.current = None;
        self.next = n;
        self.pending.retain(|block, _| *block < n);
    }

    /// Send `EndStream` and end the request side.
    async fn finish_with(&mut self, requests: &mpsc::Sender<PublishStreamRequest>, code: EndStreamCode, latest: u64) {
        if self.report.elapsed.is_zero() {
            self.report.elapsed = self.start.elapsed();
        }
        let end = session::end_stream_request(code, self.opts.first_block, latest);
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, requests.send(end)).await {
            self.report.requests_sent += 1;
        }
    }

    /// With the request side ended, collect what the block node still says
    /// until it ends the call (at most [`CLOSE_GRACE`]).
    async fn drain(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let deadline = Instant::now() + CLOSE_GRACE;
        while let Ok(Some(Event::Response(response, _))) = tokio::time::timeout_at(deadline, events.recv()).await {
            if let Some(Response::EndStream(end)) = &response.response {
                self.report.end_of_stream.get_or_insert(*end);
            }
            self.report.responses.push(response);
        }
    }
}
