//! Scripting a [`BlockNode`](super::BlockNode): rules of a trigger and an action.

use std::time::Duration;

use blockferry_proto::PublishStreamResponse;

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// When the header of block `n` arrives.
    OnHeader(u64),
    /// When `BlockEnd(n)` arrives.
    OnBlockEnd(u64),
    /// As soon as a stream opens (before any request is read).
    OnStreamStart,
}

impl Trigger {
    /// A rule: `action` on this trigger, firing once.
    pub fn then(self, action: Action) -> Rule {
        Rule::new(self, action)
    }
}

/// What the node does when a rule fires.
///
/// The responses of every rule that fires on the same trigger go out in the
/// order the rules were added, before a terminal action ([`Stall`](Self::Stall),
/// [`Drop`](Self::Drop), [`DropWith`](Self::DropWith), [`Disconnect`](Self::Disconnect),
/// [`Kill`](Self::Kill)); a terminal action also suppresses the block's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this response. At `OnBlockEnd` it replaces the acknowledgement; at
    /// `OnHeader` it replaces the answer to a block the node already has or a
    /// gap (see [`BlockNode::set_latest`](super::BlockNode::set_latest)). After an
    /// `EndOfStream` the node ends the stream (completes the call with status OK).
    Respond(PublishStreamResponse),
    /// Do not acknowledge this block (at `OnStreamStart`: no block of the stream).
    WithholdAck,
    /// Send this block's answer after the delay, reading on meanwhile; later
    /// answers of the stream queue behind it (at `OnStreamStart`: every answer
    /// of the stream is delayed so).
    Delay(Duration),
    /// Stop reading the stream and stop answering; the call and its TCP
    /// connection stay open (until [`BlockNode::resume`](super::BlockNode::resume)).
    Stall,
    /// End the call with status `UNAVAILABLE` (at `OnStreamStart`: refuse it).
    Drop,
    /// End the call with this status code (at `OnStreamStart`: refuse it).
    DropWith(tonic::Code),
    /// Close this stream's TCP connection (no gRPC status); the node keeps serving.
    Disconnect,
    /// Crash the node: [`BlockNode::kill`](super::BlockNode::kill).
    Kill,
}

impl Action {
    /// Whether the action ends (or freezes) the stream.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self, Action::Stall | Action::Drop | Action::DropWith(_) | Action::Disconnect | Action::Kill)
    }
}

/// A trigger and an action; fires once unless [`always`](Self::always).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// When it fires.
    pub trigger: Trigger,
    /// What it does.
    pub action: Action,
    /// Fire every time, not once.
    pub always: bool,
    /// Only on this stream (streams are numbered from 1 as they open).
    pub stream: Option<u64>,
}

impl Rule {
    /// `action` on `trigger`, once, on any stream.
    pub fn new(trigger: Trigger, action: Action) -> Rule {
        Rule { trigger, action, always: false, stream: None }
    }

    /// Fire every time the trigger happens.
    pub fn always(mut self) -> Rule {
        self.always = true;
        self
    }

    /// Fire only on stream `stream` (the `stream`-th opened, from 1).
    pub fn on_stream(mut self, stream: u64) -> Rule {
        self.stream = Some(stream);
        self
    }
}
