//! What can go wrong talking to a block node (blockferry's ingest).

use std::time::Duration;

/// A failed session or publish run.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The endpoint is not a URI tonic can connect to.
    #[error("{endpoint:?} is not a usable endpoint ({reason}); use e.g. http://127.0.0.1:40840")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// No connection could be made.
    #[error(
        "cannot connect to {endpoint}: {detail}; check that blockferry is running with ingest listening on that \
         address (ingest.listen)"
    )]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The transport error and its causes.
        detail: String,
    },
    /// The server answered (or ended the call) with a gRPC error status.
    #[error("the block node answered gRPC status {code:?}: {message}")]
    Status {
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// Blocks stayed unacknowledged for too long.
    #[error(
        "no progress for {waited:?} while waiting for acknowledgements (last acknowledged block: {})",
        block_or_none(last_acknowledged)
    )]
    AckTimeout {
        /// The highest block acknowledged, if any.
        last_acknowledged: Option<u64>,
        /// How long nothing happened.
        waited: Duration,
    },
    /// [`Session::next_response`](crate::Session::next_response) waited in vain.
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    /// The block node ended the stream before acknowledging every block, without `EndOfStream`.
    #[error(
        "the block node ended the stream without EndOfStream before acknowledging every block (last acknowledged \
         block: {})",
        block_or_none(acknowledged_up_to)
    )]
    StreamEnded {
        /// The highest block acknowledged, if any.
        acknowledged_up_to: Option<u64>,
    },
    /// A request could not be queued: the call is over (or the session was closed).
    #[error("cannot send: the request stream is closed (the server ended the call, or the session was closed)")]
    SendClosed,
}

impl From<tonic::Status> for PublishError {
    fn from(status: tonic::Status) -> Self {
        PublishError::Status { code: status.code(), message: status.message().to_string() }
    }
}

/// A `Result` whose error is [`PublishError`].
pub type Result<T, E = PublishError> = std::result::Result<T, E>;

fn block_or_none(block: &Option<u64>) -> String {
    block.map_or_else(|| "none".to_string(), |n| n.to_string())
}

/// An error and its sources, as one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
