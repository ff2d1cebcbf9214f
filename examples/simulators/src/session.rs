//! A raw publish stream: send any request (even a malformed one) and read the
//! responses one by one. For tests; [`publish`](crate::publish) is the
//! consensus node.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;

use blockferry_proto::api::block_stream_publish_service_client::BlockStreamPublishServiceClient;
use blockferry_proto::api::publish_stream_request::{EndStream, Request};
use blockferry_proto::api::{BlockEnd, BlockItemSet};
use blockferry_proto::{EndStreamCode, PublishStreamRequest, PublishStreamResponse};

use crate::error::{PublishError, Result, chain};

/// Largest message the simulator encodes or decodes: far above any real
/// limit, so the simulator itself never limits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long [`Session::close`] waits for the server to end its side.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests queued ahead of the HTTP/2 stream (which has its own flow control).
const REQUEST_QUEUE: usize = 4;

/// One `publishBlockStream` call.
pub struct Session {
    requests: Option<mpsc::Sender<PublishStreamRequest>>,
    responses: Streaming<PublishStreamResponse>,
}

impl Session {
    /// Open a publish stream to `endpoint` (`http://host:port`, or just `host:port`).
    ///
    /// A server that refuses the call with a gRPC status (a second publisher,
    /// say) makes this fail with [`PublishError::Status`] carrying its message.
    pub async fn connect(endpoint: &str) -> Result<Session> {
        let (requests, responses) = open(endpoint).await?;
        Ok(Session { requests: Some(requests), responses })
    }

    /// Send one request as it is.
    pub async fn send(&self, request: PublishStreamRequest) -> Result<()> {
        let requests = self.requests.as_ref().ok_or(PublishError::SendClosed)?;
        requests.send(request).await.map_err(|_| PublishError::SendClosed)
    }

    /// Send a `BlockItemSet` of `items` (serialized `BlockItem`s, sent byte for byte).
    pub async fn send_items(&self, items: Vec<Bytes>) -> Result<()> {
        self.send(items_request(items)).await
    }

    /// Send `BlockEnd { block_number: number }`.
    pub async fn send_block_end(&self, number: u64) -> Result<()> {
        self.send(block_end_request(number)).await
    }

    /// Send `EndStream { code, earliest, latest }`.
    pub async fn send_end_stream(&self, code: EndStreamCode, earliest: u64, latest: u64) -> Result<()> {
        self.send(end_stream_request(code, earliest, latest)).await
    }

    /// The next response; `None` once the server has ended the stream.
    ///
    /// Fails with [`PublishError::Status`] if the server ended the call with
    /// an error status, or [`PublishError::ResponseTimeout`] after `timeout`.
    pub async fn next_response(&mut self, timeout: Duration) -> Result<Option<PublishStreamResponse>> {
        match tokio::time::timeout(timeout, self.responses.message()).await {
            Err(_) => Err(PublishError::ResponseTimeout(timeout)),
            Ok(result) => Ok(result?),
        }
    }

    /// End the request side (the server sees the end of the stream) and keep
    /// reading responses with [`next_response`](Self::next_response).
    pub fn close_send(&mut self) {
        self.requests = None;
    }

    /// End the request side and read what the server still says until it
    /// ends the call (at most [`CLOSE_GRACE`]), so it sees a clean end of
    /// stream rather than a cancelled call. Returns those responses.
    pub async fn close(mut self) -> Result<Vec<PublishStreamResponse>> {
        self.close_send();
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_response(left).await? {
                Some(response) => rest.push(response),
                None => return Ok(rest),
            }
        }
    }
}

/// Connect and start the call: the request sender and the response stream.
pub(crate) async fn open(
    endpoint: &str,
) -> Result<(mpsc::Sender<PublishStreamRequest>, Streaming<PublishStreamResponse>)> {
    let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let bad = |reason: String| PublishError::BadEndpoint { endpoint: endpoint.to_string(), reason };
    let channel = Endpoint::from_shared(uri)
        .map_err(|e| bad(chain(&e)))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| PublishError::Connect { endpoint: endpoint.to_string(), detail: chain(&e) })?;
    let mut client = BlockStreamPublishServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
    let responses = client.publish_block_stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok((requests, responses))
}

/// A request carrying `items`.
pub(crate) fn items_request(items: Vec<Bytes>) -> PublishStreamRequest {
    PublishStreamRequest { request: Some(Request::BlockItems(BlockItemSet { block_items: items })) }
}

/// A `BlockEnd` request.
pub(crate) fn block_end_request(number: u64) -> PublishStreamRequest {
    PublishStreamRequest { request: Some(Request::EndOfBlock(BlockEnd { block_number: number })) }
}

/// An `EndStream` request.
pub(crate) fn end_stream_request(code: EndStreamCode, earliest: u64, latest: u64) -> PublishStreamRequest {
    PublishStreamRequest {
        request: Some(Request::EndStream(EndStream {
            end_code: code as i32,
            earliest_block_number: earliest,
            latest_block_number: latest,
        })),
    }
}
