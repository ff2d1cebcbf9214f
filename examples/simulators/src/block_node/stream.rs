//! The `publishBlockStream` service and one task per stream: it reads the
//! requests, assembles blocks, fires the rules and answers.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use blockferry_proto::api::block_stream_publish_service_server::BlockStreamPublishService;
use blockferry_proto::api::publish_stream_request::Request as Req;
use blockferry_proto::api::publish_stream_response::Response as Resp;
use blockferry_proto::framing::item_frame_len;
use blockferry_proto::item::{ItemKind, header_number};
use blockferry_proto::{EndStreamCode, PublishStreamRequest, PublishStreamResponse};

use super::net::ConnInfo;
use super::{
    Action, EndStreamRecord, Event, RequestKind, RequestRecord, Shared, StreamEnd, Trigger, ack, behind_publisher,
    lock, skip_block,
};

/// What the handle tells a stream.
pub(super) enum Control {
    /// Send this now.
    Respond(PublishStreamResponse),
    /// Read and answer again.
    Resume,
    /// The node was killed.
    Kill,
}

type Out = mpsc::UnboundedSender<Result<PublishStreamResponse, Status>>;

/// The gRPC service.
pub(super) struct Service(pub Arc<Shared>);

#[tonic::async_trait]
impl BlockStreamPublishService for Service {
    type publishBlockStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PublishStreamResponse, Status>> + Send>>;

    async fn publish_block_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::publishBlockStreamStream>, Status> {
        let shared = &self.0;
        let conn = request.extensions().get::<ConnInfo>().copied();
        let (control_tx, control) = mpsc::unbounded_channel();
        let id = shared.open_stream(conn.and_then(|c| c.peer), control_tx);
        let start = shared.fire(Trigger::OnStreamStart, id);
        // Ending the call at its start is refusing it.
        if let Some(action) = start.iter().find(|a| a.is_terminal() && **a != Action::Stall) {
            let (status, end) = match action {
                Action::Kill => {
                    shared.kill();
                    (Status::unavailable("block node simulator: killed"), StreamEnd::Killed)
                }
                Action::Disconnect => {
                    shared.cut(conn.map(|c| c.id));
                    (Status::unavailable("block node simulator: disconnected"), StreamEnd::Disconnected)
                }
                Action::DropWith(code) => (dropped(*code), StreamEnd::Dropped(*code)),
                _ => (dropped(tonic::Code::Unavailable), StreamEnd::Dropped(tonic::Code::Unavailable)),
            };
            shared.close_stream(id, end);
            return Err(status);
        }
        let (out, responses) = mpsc::unbounded_channel();
        let task = StreamTask {
            id,
            shared: shared.clone(),
            conn: conn.map(|c| c.id),
            out,
            control,
            open: None,
            pending: VecDeque::new(),
            stalled: false,
            withhold_all: false,
            delay_all: None,
            queue: VecDeque::new(),
            ending: None,
        };
        tokio::spawn(task.run(request.into_inner(), start));
        let mut responses = UnboundedReceiverStream::new(responses);
        if !shared.late_headers {
            return Ok(Response::new(Box::pin(responses)));
        }
        // Send the response headers only with the first response, as
        // grpc-python's server does by default: a publisher that waits for
        // the headers before its first request never gets them.
        use tokio_stream::StreamExt;
        let first = responses.next().await;
        Ok(Response::new(Box::pin(tokio_stream::iter(first).chain(responses))))
    }
}

fn dropped(code: tonic::Code) -> Status {
    Status::new(code, "block node simulator: stream dropped (scripted)")
}

/// The block being received.
struct OpenBlock {
    number: u64,
    items: Vec<Bytes>,
    /// The node already has it, or it lies beyond a gap: not kept, not acknowledged.
    refused: bool,
    /// A rule at its header withheld its acknowledgement.
    withhold: bool,
    /// A rule at its header delayed its acknowledgement.
    delay: Option<Duration>,
}

/// One stream.
struct StreamTask {
    id: u64,
    shared: Arc<Shared>,
    conn: Option<u64>,
    out: Out,
    control: mpsc::UnboundedReceiver<Control>,
    open: Option<OpenBlock>,
    /// Items read but not yet processed (the stream stalled in the middle of a request).
    pending: VecDeque<Bytes>,
    stalled: bool,
    /// Acknowledge nothing on this stream.
    withhold_all: bool,
    /// Delay every answer of this stream.
    delay_all: Option<Duration>,
    /// Answers waiting for their time, in order.
    queue: VecDeque<(Instant, PublishStreamResponse)>,
    /// The publisher is done; end once the queue is empty.
    ending: Option<StreamEnd>,
}

/// Where rules fired.
#[derive(Clone, Copy, PartialEq)]
enum Point {
    Start,
    Header,
    BlockEnd,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<PublishStreamRequest>, start: Vec<Action>) {
        let kills = self.shared.kills.load(Ordering::SeqCst);
        let mut end = match self.apply(Point::Start, start, Vec::new(), None) {
            ControlFlow::Break(end) => end,
            ControlFlow::Continue(()) => self.serve(&mut inbound).await,
        };
        // A call that broke because the node was killed was killed.
        if matches!(end, StreamEnd::Cancelled | StreamEnd::RequestFailed { .. })
            && self.shared.kills.load(Ordering::SeqCst) != kills
        {
            end = StreamEnd::Killed;
        }
        if let Some(open) = self.open.take() {
            let stream = self.id;
            self.shared.update(|r| r.events.push(Event::BlockAbandoned { stream, number: open.number }));
        }
        self.shared.close_stream(self.id, end);
    }

    async fn serve(&mut self, inbound: &mut Streaming<PublishStreamRequest>) -> StreamEnd {
        loop {
            if !self.stalled && !self.pending.is_empty() {
                if let ControlFlow::Break(end) = self.process_pending() {
                    return end;
                }
                continue;
            }
            if !self.stalled
                && self.queue.is_empty()
                && let Some(end) = self.ending.take()
            {
                return end;
            }
            let due = if self.stalled { None } else { self.queue.front().map(|(at, _)| *at) };
            let read = !self.stalled && self.ending.is_none();
            let flow = tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Respond(response)) => self.send(response),
                    Some(Control::Resume) => {
                        self.stalled = false;
                        ControlFlow::Continue(())
                    }
                    Some(Control::Kill) | None => ControlFlow::Break(StreamEnd::Killed),
                },
                () = self.out.closed() => ControlFlow::Break(StreamEnd::Cancelled),
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    match self.queue.pop_front() {
                        Some((_, response)) => self.send(response),
                        None => ControlFlow::Continue(()),
                    }
                }
                message = inbound.message(), if read => match message {
                    Ok(Some(request)) => self.on_request(request),
                    Ok(None) => {
                        self.ending = Some(StreamEnd::PublisherClosed);
                        ControlFlow::Continue(())
                    }
                    Err(status) => {
                        let end = StreamEnd::RequestFailed { code: status.code(), message: status.message().into() };
                        let _ = self.out.send(Err(status));
                        ControlFlow::Break(end)
                    }
                },
            };
            if let ControlFlow::Break(end) = flow {
                return end;
            }
        }
    }

    fn record_request(&self, encoded_len: usize, kind: RequestKind) {
        let stream = self.id;
        self.shared.update(|r| r.requests.push(RequestRecord { stream, encoded_len, kind }));
    }

    fn on_request(&mut self, request: PublishStreamRequest) -> ControlFlow<StreamEnd> {
        let encoded_len = request.encoded_len();
        match request.request {
            Some(Req::BlockItems(set)) => {
                let item_lens = set.block_items.iter().map(Bytes::len).collect();
                self.record_request(encoded_len, RequestKind::Items { count: set.block_items.len(), item_lens });
                self.pending.extend(set.block_items);
                self.process_pending()
            }
            Some(Req::EndOfBlock(end)) => {
                self.record_request(encoded_len, RequestKind::BlockEnd(end.block_number));
                self.on_block_end(end.block_number)
            }
            Some(Req::EndStream(end)) => {
                let code = EndStreamCode::try_from(end.end_code).unwrap_or(EndStreamCode::Unknown);
                let (earliest, latest) = (end.earliest_block_number, end.latest_block_number);
                let stream = self.id;
                self.shared.update(|r| {
                    r.requests.push(RequestRecord {
                        stream,
                        encoded_len,
                        kind: RequestKind::EndStream { code, earliest, latest },
                    });
                    let end = EndStreamRecord { stream, code, earliest, latest };
                    r.end_streams.push(end);
                    r.events.push(Event::EndStream(end));
                });
                self.ending = Some(StreamEnd::PublisherEndStream);
                ControlFlow::Continue(())
            }
            None => {
                self.record_request(encoded_len, RequestKind::Empty);
                ControlFlow::Continue(())
            }
        }
    }

    /// Take the read items into blocks until done or stalled.
    fn process_pending(&mut self) -> ControlFlow<StreamEnd> {
        let mut stray = 0;
        while !self.stalled {
            let Some(item) = self.pending.pop_front() else { break };
            let header = match ItemKind::of(&item) {
                Ok(ItemKind::BLOCK_HEADER) => header_number(&item).ok(),
                _ => None,
            };
            match (header, &mut self.open) {
                (Some(n), _) => {
                    self.stray(std::mem::take(&mut stray));
                    self.on_header(item, n)?;
                }
                (None, Some(open)) => open.items.push(item),
                (None, None) => stray += 1,
            }
        }
        self.stray(stray);
        ControlFlow::Continue(())
    }

    fn stray(&self, count: usize) {
        if count > 0 {
            let stream = self.id;
            self.shared.update(|r| r.events.push(Event::StrayItems { stream, count }));
        }
    }

    fn on_header(&mut self, item: Bytes, n: u64) -> ControlFlow<StreamEnd> {
        let stream = self.id;
        if let Some(old) = self.open.take() {
            self.shared.update(|r| r.events.push(Event::BlockAbandoned { stream, number: old.number }));
        }
        let actions = self.shared.fire(Trigger::OnHeader(n), stream);
        let latest = lock(&self.shared.record).latest;
        let answer = match latest {
            Some(l) if n <= l => Some(skip_block(n)),
            Some(l) if l.checked_add(1).is_some_and(|next| n > next) => Some(behind_publisher(l)),
            _ => None,
        };
        let refused = answer.is_some();
        self.open = Some(OpenBlock { number: n, items: vec![item], refused, withhold: false, delay: None });
        self.apply(Point::Header, actions, answer.into_iter().collect(), None)
    }

    fn on_block_end(&mut self, n: u64) -> ControlFlow<StreamEnd> {
        let stream = self.id;
        let actions = self.shared.fire(Trigger::OnBlockEnd(n), stream);
        let block = match self.open.take() {
            Some(open) if open.number == n => Some(open),
            other => {
                let open = other.as_ref().map(|o| o.number);
                self.open = other;
                self.shared.update(|r| r.events.push(Event::StrayBlockEnd { stream, number: n, open }));
                None
            }
        };
        let Some(block) = block else { return self.apply(Point::BlockEnd, actions, Vec::new(), None) };
        if block.refused {
            self.shared.update(|r| r.events.push(Event::BlockRefused { stream, number: n }));
            return self.apply(Point::BlockEnd, actions, Vec::new(), block.delay);
        }
        let items = block.items.len();
        let bytes = block.items.iter().map(|i| item_frame_len(i.len())).sum();
        let kept = if self.shared.keep_items { block.items } else { Vec::new() };
        self.shared.update(|r| {
            r.blocks.insert(n, kept);
            r.block_order.push(n);
            r.latest = r.latest.map(|l| l.max(n));
            r.events.push(Event::BlockReceived { stream, number: n, items, bytes });
        });
        let acknowledge = !block.withhold && !self.withhold_all && !self.shared.ack_nothing.load(Ordering::SeqCst);
        let answer = if acknowledge { vec![ack(n)] } else { Vec::new() };
        self.apply(Point::BlockEnd, actions, answer, block.delay)
    }

    /// Carry out the actions of the rules fired at `point`: their responses
    /// (or else the default `answer`), delays, withheld acknowledgements, then
    /// the first terminal action.
    fn apply(
        &mut self,
        point: Point,
        actions: Vec<Action>,
        answer: Vec<PublishStreamResponse>,
        block_delay: Option<Duration>,
    ) -> ControlFlow<StreamEnd> {
        let mut scripted = Vec::new();
        let mut withhold = false;
        let mut delay = None;
        let mut terminal = None;
        for action in actions {
            match action {
                Action::Respond(response) => scripted.push(response),
                Action::WithholdAck => withhold = true,
                Action::Delay(d) => delay = Some(d),
                other if terminal.is_none() => terminal = Some(other),
                _ => {}
            }
        }
        match point {
            Point::Start => {
                self.withhold_all |= withhold;
                self.delay_all = delay.or(self.delay_all);
            }
            Point::Header => {
                if let Some(open) = &mut self.open {
                    open.withhold |= withhold;
                    open.delay = delay.or(open.delay);
                }
            }
            Point::BlockEnd => {}
        }
        let responses = if !scripted.is_empty() {
            scripted
        } else if terminal.is_some() || (withhold && point == Point::BlockEnd) {
            Vec::new()
        } else {
            answer
        };
        let delay = delay.or(block_delay).or(self.delay_all);
        for response in responses {
            self.emit(response, delay)?;
        }
        match terminal {
            None => ControlFlow::Continue(()),
            Some(Action::Stall) => {
                self.stalled = true;
                ControlFlow::Continue(())
            }
            Some(Action::Disconnect) => {
                self.shared.cut(self.conn);
                ControlFlow::Break(StreamEnd::Disconnected)
            }
            Some(Action::Kill) => {
                self.shared.kill();
                ControlFlow::Break(StreamEnd::Killed)
            }
            Some(Action::DropWith(code)) => self.drop_with(code),
            Some(_) => self.drop_with(tonic::Code::Unavailable),
        }
    }

    fn drop_with(&self, code: tonic::Code) -> ControlFlow<StreamEnd> {
        let _ = self.out.send(Err(dropped(code)));
        ControlFlow::Break(StreamEnd::Dropped(code))
    }

    /// Send `response` after `delay` (and after every answer queued before it).
    fn emit(&mut self, response: PublishStreamResponse, delay: Option<Duration>) -> ControlFlow<StreamEnd> {
        if delay.is_none() && self.queue.is_empty() {
            return self.send(response);
        }
        self.queue.push_back((Instant::now() + delay.unwrap_or_default(), response));
        ControlFlow::Continue(())
    }

    /// Send `response` now; an `EndOfStream` ends the stream.
    fn send(&mut self, response: PublishStreamResponse) -> ControlFlow<StreamEnd> {
        let _ = self.out.send(Ok(response));
        let stream = self.id;
        self.shared.update(|r| r.events.push(Event::Responded { stream, response }));
        if matches!(response.response, Some(Resp::EndStream(_))) {
            ControlFlow::Break(StreamEnd::EndOfStream)
        } else {
            ControlFlow::Continue(())
        }
    }
}
