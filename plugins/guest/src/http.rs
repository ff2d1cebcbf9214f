//! HTTP over raw `wasi:http` (0.2): one [`Exchange`] per request, advanced
//! without blocking so that several can run at once (see
//! [`crate::retry::run`]), or driven to completion with [`send`].
//!
//! A request body is either bytes in guest memory (small XML documents) or a
//! host `input-stream` spliced into the outgoing body's `output-stream`
//! (`output-stream.splice`), so large bodies are copied by the host and never
//! pass through guest memory. The request is handed to the host before the
//! body is written, so bodies of any size stream.
//!
//! A response body is read into guest memory (capped: error documents, XML
//! listings, JSON metadata), or, for a 2xx answer to a request with a
//! [`Request::sink`], spliced into that host `output-stream` (a `block-sink`),
//! so objects read back never pass through guest memory either.

use std::rc::Rc;
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::poll::Pollable;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// At most this many bytes of a response body are kept (S3 answers are small
/// XML documents; anything longer is cut).
const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Bytes written per `output-stream.write` of an in-memory body.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes asked per `output-stream.splice`.
const SPLICE_CHUNK: u64 = 4 << 20;

/// A request body.
pub enum Body {
    /// No body.
    Empty,
    /// Bytes in guest memory.
    Bytes(Vec<u8>),
    /// Exactly `len` bytes of a host stream, spliced into the request body.
    Stream {
        /// The source, positioned at the first byte to send.
        stream: InputStream,
        /// How many bytes to send from it.
        len: u64,
    },
}

impl Body {
    /// Length of the body in bytes (the `content-length` to send).
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Stream { len, .. } => *len,
        }
    }

    /// True when the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-attempt time limits passed to the host (which caps them to what is
/// left of the call's deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// From sending the request (body included) to the response's first byte.
    pub first_byte: Duration,
    /// Between two bytes of the response.
    pub between_bytes: Duration,
}

/// An HTTP request to send.
pub struct Request {
    /// The method.
    pub method: Method,
    /// `https` (true) or `http`.
    pub https: bool,
    /// `host[:port]`, also sent as the `Host` header.
    pub authority: String,
    /// The path with its query, starting with `/`.
    pub path_and_query: String,
    /// Header names (lower-case) and values; `content-length` is added from the body.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
    /// Time limits of this attempt.
    pub timeouts: Timeouts,
    /// Where the body of a 2xx response goes instead of [`Response::body`]:
    /// spliced into this stream (shared by the attempts of one call).
    pub sink: Option<Rc<OutputStream>>,
}

/// A response, with its (small) body read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_RESPONSE_BODY`] bytes of it (empty when it
    /// went to the request's sink).
    pub body: Vec<u8>,
    /// How many bytes of the body were spliced into the request's sink;
    /// `None` when the body is in `body`.
    pub streamed: Option<u64>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why an exchange produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: its authority is not in the bucket's
    /// egress allow-list (or resolves into a denied network).
    Denied,
    /// The connection failed or broke (refused, reset, timed out, DNS);
    /// worth retrying.
    Transport(String),
    /// The request itself is invalid (a header, the URI), or a TLS certificate
    /// was refused (see [`map_error_code`]); not worth retrying.
    Invalid(String),
    /// The response body broke off after some of it was spliced into the
    /// request's sink: not worth retrying within the call (the sink holds
    /// part of a body).
    Interrupted(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied => f.write_str(
                "the host refused the request: the endpoint is not permitted by this bucket's egress allow-list",
            ),
            HttpError::Transport(e) => write!(f, "connection error: {e}"),
            HttpError::Invalid(e) => write!(f, "invalid request: {e}"),
            HttpError::Interrupted(e) => write!(f, "the response body broke off: {e}"),
        }
    }
}

/// Maps a `wasi:http` error code to an [`HttpError`].
pub fn map_error_code(code: &ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpRequestTrailerSize(_)
        | ErrorCode::HttpRequestTrailerSectionSize(_) => HttpError::Invalid(format!("{code:?}")),
        // A TLS certificate the host refused (the server's, or the server
        // refusing this bucket's): no retry fixes it. The host's message names
        // the certificate and the setting that does.
        ErrorCode::TlsCertificateError => HttpError::Invalid("the server's TLS certificate was refused".into()),
        ErrorCode::TlsAlertReceived(alert) => HttpError::Invalid(match &alert.alert_message {
            Some(message) => format!("TLS: {message}"),
            None => format!("{code:?}"),
        }),
        other => HttpError::Transport(format!("{other:?}")),
    }
}

/// What [`Exchange::step`] reached.
pub enum Progress {
    /// The exchange is over.
    Done(Result<Response, HttpError>),
    /// Nothing more can happen until this pollable is ready.
    Wait(Pollable),
}

/// Where the bytes of a body still to send come from.
enum Source {
    Bytes { data: Vec<u8>, pos: usize },
    Stream { input: InputStream, remaining: u64 },
}

/// A body being written. Field order is drop order: the stream goes before its body.
struct Upload {
    out: OutputStream,
    body: OutgoingBody,
    source: Source,
}

/// One request in flight: its body being written, then its response awaited.
pub struct Exchange {
    upload: Option<Upload>,
    /// Set when writing the body failed; reported if the response is an error too.
    upload_error: Option<String>,
    future: FutureIncomingResponse,
    /// Where a 2xx response's body goes.
    sink: Option<Rc<OutputStream>>,
}

impl Exchange {
    /// Hands `request` to the host and starts it; the body is written by [`Exchange::step`].
    pub fn start(request: Request) -> Result<Self, HttpError> {
        let Request { method, https, authority, path_and_query, mut headers, body, timeouts, sink } = request;
        headers.retain(|(k, _)| k != "content-length");
        let len = body.len();
        // Every request but GET and HEAD says its length, `0` included: some
        // servers otherwise read a DELETE's body until the connection closes.
        if len > 0 || !matches!(method, Method::Get | Method::Head) {
            headers.push(("content-length".into(), len.to_string()));
        }
        let entries: Vec<(String, Vec<u8>)> = headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        let fields = Fields::from_list(&entries).map_err(|e| HttpError::Invalid(format!("headers refused: {e:?}")))?;
        let outgoing = OutgoingRequest::new(fields);
        outgoing.set_method(&method).map_err(|()| HttpError::Invalid("method refused".into()))?;
        outgoing
            .set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http }))
            .map_err(|()| HttpError::Invalid("scheme refused".into()))?;
        outgoing
            .set_authority(Some(&authority))
            .map_err(|()| HttpError::Invalid(format!("authority {authority:?} refused")))?;
        outgoing
            .set_path_with_query(Some(&path_and_query))
            .map_err(|()| HttpError::Invalid(format!("path {path_and_query:?} refused")))?;
        let outgoing_body = outgoing.body().map_err(|()| HttpError::Invalid("request body already taken".into()))?;
        let options = RequestOptions::new();
        let nanos = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        // The host may not support some of these; ignoring a refusal keeps its default.
        let _ = options.set_connect_timeout(Some(nanos(timeouts.connect)));
        let _ = options.set_first_byte_timeout(Some(nanos(timeouts.first_byte)));
        let _ = options.set_between_bytes_timeout(Some(nanos(timeouts.between_bytes)));
        let future = outgoing_handler::handle(outgoing, Some(options)).map_err(|code| map_error_code(&code))?;
        let source = match body {
            Body::Empty => None,
            Body::Bytes(data) => Some(Source::Bytes { data, pos: 0 }),
            Body::Stream { stream, len } => Some(Source::Stream { input: stream, remaining: len }),
        };
        let mut exchange = Exchange { upload: None, upload_error: None, future, sink };
        match source {
            None => {
                OutgoingBody::finish(outgoing_body, None).map_err(|e| map_error_code(&e))?;
            }
            Some(source) => {
                let out = outgoing_body
                    .write()
                    .map_err(|()| HttpError::Invalid("request body stream already taken".into()))?;
                exchange.upload = Some(Upload { out, body: outgoing_body, source });
            }
        }
        Ok(exchange)
    }

    /// Advances the exchange as far as it goes without blocking.
    pub fn step(&mut self) -> Progress {
        if let Some(upload) = &mut self.upload {
            match write_some(upload) {
                Ok(Some(pollable)) => {
                    // An early answer (the server refused before reading the
                    // whole body) ends the exchange: stop sending.
                    match self.future.get() {
                        None => return Progress::Wait(pollable),
                        Some(result) => {
                            drop(pollable);
                            self.upload = None;
                            return self.finish(result);
                        }
                    }
                }
                Ok(None) => {
                    let upload = self.upload.take().expect("upload present");
                    let Upload { out, body, .. } = upload;
                    drop(out);
                    if let Err(code) = OutgoingBody::finish(body, None) {
                        self.upload_error = Some(format!("finishing the body: {code:?}"));
                    }
                }
                Err(e) => {
                    // Dropping the body unfinished makes the host abandon the
                    // request; the response future then says why (or holds an
                    // early answer from the server, such as a 403).
                    self.upload = None;
                    self.upload_error = Some(e);
                }
            }
        }
        match self.future.get() {
            None => Progress::Wait(self.future.subscribe()),
            Some(result) => self.finish(result),
        }
    }

    /// Turns the response future's result into the exchange's outcome.
    fn finish(&mut self, result: Result<Result<IncomingResponse, ErrorCode>, ()>) -> Progress {
        match result {
            Err(()) => Progress::Done(Err(HttpError::Invalid("the response was already taken".into()))),
            Ok(Err(code)) => {
                let mut err = map_error_code(&code);
                if let (HttpError::Transport(text), Some(upload)) = (&mut err, &self.upload_error) {
                    text.push_str(&format!(" (while sending the body: {upload})"));
                }
                Progress::Done(Err(err))
            }
            Ok(Ok(incoming)) => {
                let status = incoming.status();
                let headers = {
                    let fields = incoming.headers();
                    fields
                        .entries()
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into()))
                        .collect()
                };
                let mut response = Response { status, headers, body: Vec::new(), streamed: None };
                let body = match incoming.consume() {
                    Ok(body) => body,
                    Err(()) => return Progress::Done(Ok(response)),
                };
                let read = match &self.sink {
                    Some(sink) if (200..300).contains(&status) => {
                        let expected = response.header("content-length").and_then(|v| v.trim().parse().ok());
                        splice_body(body, sink, expected).map(|n| response.streamed = Some(n))
                    }
                    _ => read_body(body).map(|bytes| response.body = bytes),
                };
                Progress::Done(read.map(|()| response))
            }
        }
    }
}

/// Writes as much of the body as the streams allow. `Ok(None)`: all written;
/// `Ok(Some(p))`: wait for `p`; `Err`: writing failed.
fn write_some(upload: &mut Upload) -> Result<Option<Pollable>, String> {
    loop {
        let permit = match upload.out.check_write() {
            Ok(permit) => permit,
            Err(e) => return Err(stream_error(e)),
        };
        match &mut upload.source {
            Source::Bytes { data, pos } => {
                if *pos >= data.len() {
                    return Ok(None);
                }
                if permit == 0 {
                    return Ok(Some(upload.out.subscribe()));
                }
                let n = (data.len() - *pos).min(permit as usize).min(WRITE_CHUNK);
                upload.out.write(&data[*pos..*pos + n]).map_err(stream_error)?;
                *pos += n;
            }
            Source::Stream { input, remaining } => {
                if *remaining == 0 {
                    return Ok(None);
                }
                if permit == 0 {
                    return Ok(Some(upload.out.subscribe()));
                }
                let want = (*remaining).min(permit).min(SPLICE_CHUNK);
                match upload.out.splice(input, want) {
                    Ok(0) => return Ok(Some(input.subscribe())),
                    Ok(n) => *remaining -= n.min(*remaining),
                    Err(StreamError::Closed) => {
                        return Err(format!("the body's source ended with {remaining} bytes still to send"));
                    }
                    Err(e) => return Err(stream_error(e)),
                }
            }
        }
    }
}

/// Reads a response body to its end, keeping at most [`MAX_RESPONSE_BODY`] bytes.
fn read_body(body: IncomingBody) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    {
        let stream = body.stream().map_err(|()| HttpError::Invalid("response body stream already taken".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    let room = MAX_RESPONSE_BODY.saturating_sub(out.len());
                    out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Err(StreamError::Closed) => break,
                Err(e) => {
                    return Err(HttpError::Transport(format!("reading the response body: {}", stream_error(e))));
                }
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(out)
}

/// Splices a response body into `sink` (blocking) and flushes it; returns the
/// bytes written. `expected` is the `content-length`, if sent: a body that ends
/// (or a sink that closes) before it is an error. A failure before the first
/// byte is a [`HttpError::Transport`] (worth retrying), after it an
/// [`HttpError::Interrupted`].
fn splice_body(body: IncomingBody, sink: &OutputStream, expected: Option<u64>) -> Result<u64, HttpError> {
    let mut written = 0u64;
    let mut result = match body.stream() {
        Err(()) => Err("response body stream already taken".to_string()),
        Ok(input) => loop {
            match sink.blocking_splice(&input, SPLICE_CHUNK) {
                Ok(n) => written += n,
                // The body's end (or, ambiguously, a closed sink: the length check tells).
                Err(StreamError::Closed) => break Ok(()),
                Err(e) => break Err(stream_error(e)),
            }
        },
    };
    result = result.and_then(|()| sink.blocking_flush().map_err(|e| format!("flushing the sink: {}", stream_error(e))));
    if let (Ok(()), Some(expected)) = (&result, expected)
        && written != expected
    {
        result = Err(format!("{written} of the {expected} bytes of the body arrived"));
    }
    drop(IncomingBody::finish(body));
    match result {
        Ok(()) => Ok(written),
        Err(e) if written == 0 => Err(HttpError::Transport(format!("reading the response body: {e}"))),
        Err(e) => Err(HttpError::Interrupted(format!("after {written} bytes: {e}"))),
    }
}

/// Renders a stream error.
fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".into(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

/// Sends `request` and waits for its response.
pub fn send(request: Request) -> Result<Response, HttpError> {
    let mut exchange = Exchange::start(request)?;
    loop {
        match exchange.step() {
            Progress::Done(result) => return result,
            Progress::Wait(pollable) => pollable.block(),
        }
    }
}

/// The monotonic clock, in nanoseconds.
pub fn now_nanos() -> u64 {
    wasip2::clocks::monotonic_clock::now()
}

/// A pollable ready at monotonic time `nanos`.
pub fn ready_at(nanos: u64) -> Pollable {
    wasip2::clocks::monotonic_clock::subscribe_instant(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_tls_certificates_are_not_worth_retrying_and_keep_the_host_s_message() {
        let alert = ErrorCode::TlsAlertReceived(wasip2::http::types::TlsAlertReceivedPayload {
            alert_id: Some(48),
            alert_message: Some("put the CA in this bucket's `tls_ca_file`".into()),
        });
        assert_eq!(map_error_code(&alert), HttpError::Invalid("TLS: put the CA in this bucket's `tls_ca_file`".into()));
        assert!(matches!(map_error_code(&ErrorCode::TlsCertificateError), HttpError::Invalid(_)));
        // A TLS protocol error (a broken handshake) stays worth retrying.
        assert!(matches!(map_error_code(&ErrorCode::TlsProtocolError), HttpError::Transport(_)));
    }
}
