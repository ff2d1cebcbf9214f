//! One retried operation of a storage service, written once for every
//! provider: the provider builds the request and says what the answers it
//! expects mean; everything else (transport errors, the service's error
//! responses, giving up, logging the retries) goes through here.
//!
//! A provider implements [`Service`] for its opened bucket's configuration:
//! how it names objects in messages, its retry [`Policy`], which endpoint
//! settings the egress allow-list checks, and how it judges an error response
//! ([`Service::judge`]). Each operation is then `service.call(op, key, build,
//! accept)`, an [`Operation`], run with [`Operation::run`] (or several at once
//! with [`crate::retry::run`]).
//!
//! What a transport error means is decided in one place,
//! [`transport_failure`], for every provider.

use std::time::Duration;

use crate::http::{HttpError, Request, Response};
use crate::retry::{self, Call, Policy, Verdict};
use crate::{Level, UploadError};

/// What an operation makes of a response.
pub enum Accept<T> {
    /// The operation is over.
    Done(Result<T, UploadError>),
    /// Not an answer the operation expects: the service judges it as an error
    /// response ([`Service::judge`]).
    Other(Response),
    /// An answer that calls for sending the request again (under the policy), for this reason.
    Retry(String),
}

/// What a failed attempt calls for.
pub enum Failure {
    /// Another attempt under the policy; `why` names the failure, `retry_after`
    /// is the server's `Retry-After`, if it sent one.
    Retry {
        /// The failure, for logs and the final error.
        why: String,
        /// The server's wish, if any.
        retry_after: Option<Duration>,
    },
    /// No more attempts: the operation fails with this error.
    Fail(UploadError),
}

/// A storage service as its operations see it.
pub trait Service {
    /// Per-operation state of [`Service::judge`] (e.g. whether a refused
    /// access token was already replaced once); `()` when there is none.
    type State: Default;

    /// How messages name the object `key` (`s3://bucket/key`); `key` empty
    /// names the bucket.
    fn location(&self, key: &str) -> String;

    /// The retry policy of the bucket's operations.
    fn policy(&self) -> &Policy;

    /// The authorities the bucket's requests go to and the settings that
    /// name them (e.g. ``"`endpoint` and `addressing`"``), for the error of a
    /// request the host's egress allow-list refused.
    fn endpoints(&self) -> (String, &'static str);

    /// Judges an error response (one the operation did not expect) of the
    /// operation `target` (`Op location`): retry, or fail with which error.
    fn judge(&self, target: &str, response: Response, state: &mut Self::State) -> Failure;

    /// A retried operation named `op` on `key` (the full key; empty for the
    /// bucket itself): `build` makes each attempt's request (it is given the
    /// number of attempts that failed so far), `accept` reads the answers the
    /// operation expects.
    fn call<'a, T>(
        &'a self,
        op: &'static str,
        key: &'a str,
        build: impl FnMut(u32) -> Result<Request, UploadError> + 'a,
        accept: impl FnMut(Response) -> Accept<T> + 'a,
    ) -> Operation<'a, Self, T>
    where
        Self: Sized,
    {
        Operation {
            service: self,
            op,
            key,
            build: Box::new(build),
            accept: Box::new(accept),
            failures: 0,
            last_failure: None,
            state: Self::State::default(),
        }
    }
}

/// What a transport error means for the operation `target`: the one place
/// where [`HttpError`]s are classified, for every provider.
pub fn transport_failure(service: &impl Service, target: &str, error: HttpError) -> Failure {
    match error {
        HttpError::Transport(e) => {
            Failure::Retry { why: format!("{target}: connection error: {e}"), retry_after: None }
        }
        HttpError::Denied => {
            let (endpoints, settings) = service.endpoints();
            Failure::Fail(UploadError::Permanent(format!(
                "{target}: the endpoint {endpoints} is not permitted: the host's egress allow-list refused the \
                 request; the host allows the authorities of the URLs in the bucket's settings (and \
                 `allow_hosts`), so check {settings}"
            )))
        }
        HttpError::Invalid(e) => Failure::Fail(UploadError::Permanent(format!("{target}: invalid request: {e}"))),
        HttpError::Interrupted(e) => {
            Failure::Fail(UploadError::Transient(format!("{target}: the object's body broke off {e}; retry later")))
        }
    }
}

/// The server's `Retry-After` of `response`, if it sent one.
pub fn retry_after(response: &Response) -> Option<Duration> {
    response.header("retry-after").and_then(|v| retry::parse_retry_after(v, crate::unix_now()))
}

/// One retried operation of service `S` with result `T` (see [`Service::call`]).
pub struct Operation<'a, S: Service, T> {
    service: &'a S,
    op: &'static str,
    key: &'a str,
    build: Box<dyn FnMut(u32) -> Result<Request, UploadError> + 'a>,
    accept: Box<dyn FnMut(Response) -> Accept<T> + 'a>,
    /// Attempts that failed so far.
    failures: u32,
    /// Why the last one failed.
    last_failure: Option<String>,
    state: S::State,
}

impl<S: Service, T> Operation<'_, S, T> {
    /// `Op location`, as messages name the operation.
    pub fn target(&self) -> String {
        format!("{} {}", self.op, self.service.location(self.key))
    }

    /// Runs the operation to its end under the service's policy.
    pub fn run(&mut self) -> Result<T, UploadError> {
        let policy = *self.service.policy();
        retry::run_one(self, &policy)
    }

    /// How many attempts failed so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Why the last failed attempt failed, if one did (taken out).
    pub fn take_last_failure(&mut self) -> Option<String> {
        self.last_failure.take()
    }
}

impl<S: Service, T> Call for Operation<'_, S, T> {
    type Output = T;
    type Error = UploadError;

    fn request(&mut self) -> Result<Request, UploadError> {
        (self.build)(self.failures)
    }

    fn verdict(&mut self, result: Result<Response, HttpError>) -> Verdict<T, UploadError> {
        let failure = match result {
            Err(e) => transport_failure(self.service, &self.target(), e),
            Ok(response) => match (self.accept)(response) {
                Accept::Done(result) => return Verdict::Done(result),
                Accept::Retry(why) => Failure::Retry { why: format!("{}: {why}", self.target()), retry_after: None },
                Accept::Other(response) => self.service.judge(&self.target(), response, &mut self.state),
            },
        };
        match failure {
            Failure::Fail(e) => Verdict::Done(Err(e)),
            Failure::Retry { why, retry_after } => {
                self.failures += 1;
                self.last_failure = Some(why.clone());
                Verdict::Retry { why, retry_after }
            }
        }
    }

    fn gave_up(&mut self, why: String, attempts: u32, elapsed: Duration) -> UploadError {
        let p = self.service.policy();
        UploadError::Transient(format!(
            "{}: gave up after {attempts} attempt(s) in {:.1} s (retry_max_attempts = {}, \
             retry_max_elapsed_ms = {}); last failure: {why}",
            self.target(),
            elapsed.as_secs_f64(),
            p.max_attempts,
            p.max_elapsed.as_millis()
        ))
    }

    fn retrying(&mut self, attempt: u32, why: &str, delay: Duration) {
        crate::log(Level::Debug, &format!("attempt {attempt} failed ({why}); retrying in {} ms", delay.as_millis()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Body, Timeouts};

    /// A service whose `judge` retries 503s and counts its calls in its state.
    struct Fake {
        policy: Policy,
    }

    impl Service for Fake {
        type State = u32;

        fn location(&self, key: &str) -> String {
            format!("fake://b/{key}")
        }

        fn policy(&self) -> &Policy {
            &self.policy
        }

        fn endpoints(&self) -> (String, &'static str) {
            ("fake.example:443".into(), "`endpoint`")
        }

        fn judge(&self, target: &str, response: Response, judged: &mut u32) -> Failure {
            *judged += 1;
            let why = format!("{target}: HTTP {} (judged {judged} times)", response.status);
            if response.status == 503 {
                Failure::Retry { why, retry_after: retry_after(&response) }
            } else {
                Failure::Fail(UploadError::Permanent(why))
            }
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            streamed: None,
        }
    }

    fn request(failures: u32) -> Request {
        Request {
            method: wasip2::http::types::Method::Get,
            https: true,
            authority: "fake.example".into(),
            path_and_query: format!("/{failures}"),
            headers: Vec::new(),
            body: Body::Empty,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                between_bytes: Duration::from_secs(1),
            },
            sink: None,
        }
    }

    fn permanent(verdict: Verdict<u8, UploadError>) -> String {
        match verdict {
            Verdict::Done(Err(UploadError::Permanent(why))) => why,
            _ => panic!("expected a permanent error"),
        }
    }

    #[test]
    fn transport_errors_are_classified_once_for_every_provider() {
        let fake = Fake { policy: Policy::default() };
        let mut op = fake.call("Get", "k", |n| Ok(request(n)), |_| Accept::Done(Ok(1u8)));
        assert_eq!(op.target(), "Get fake://b/k");
        match op.verdict(Err(HttpError::Transport("reset".into()))) {
            Verdict::Retry { why, retry_after: None } => assert_eq!(why, "Get fake://b/k: connection error: reset"),
            _ => panic!("a connection error is retried"),
        }
        assert_eq!(op.failures(), 1);
        assert_eq!(op.request().unwrap().path_and_query, "/1", "build is told how many attempts failed");
        let denied = permanent(op.verdict(Err(HttpError::Denied)));
        for needle in ["Get fake://b/k", "fake.example:443 is not permitted", "egress allow-list", "check `endpoint`"] {
            assert!(denied.contains(needle), "{needle:?} missing from {denied}");
        }
        assert!(permanent(op.verdict(Err(HttpError::Invalid("bad header".into())))).contains("invalid request"));
        match op.verdict(Err(HttpError::Interrupted("at byte 7".into()))) {
            Verdict::Done(Err(UploadError::Transient(why))) => assert!(why.contains("broke off"), "{why}"),
            _ => panic!("a body that broke off is transient, not retried within the call"),
        }
        assert_eq!(op.failures(), 1, "only retried failures count");
        assert_eq!(op.take_last_failure().as_deref(), Some("Get fake://b/k: connection error: reset"));
    }

    #[test]
    fn expected_answers_end_the_call_and_others_go_to_the_service_s_judge() {
        let fake = Fake { policy: Policy::default() };
        let mut op = fake.call(
            "Put",
            "k",
            |n| Ok(request(n)),
            |r| match r.status {
                200 => Accept::Done(Ok(7u8)),
                409 => Accept::Retry("conflict".into()),
                _ => Accept::Other(r),
            },
        );
        assert!(matches!(op.verdict(Ok(response(200, &[]))), Verdict::Done(Ok(7))));
        match op.verdict(Ok(response(409, &[]))) {
            Verdict::Retry { why, .. } => assert_eq!(why, "Put fake://b/k: conflict"),
            _ => panic!("Accept::Retry retries"),
        }
        match op.verdict(Ok(response(503, &[("retry-after", "3")]))) {
            Verdict::Retry { why, retry_after } => {
                assert_eq!(why, "Put fake://b/k: HTTP 503 (judged 1 times)");
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            _ => panic!("the judge retries a 503"),
        }
        // The judge's state lives as long as the operation.
        assert!(permanent(op.verdict(Ok(response(403, &[])))).ends_with("(judged 2 times)"));
        assert_eq!(op.failures(), 2);
        let gave_up = match op.gave_up("last".into(), 5, Duration::from_millis(1500)) {
            UploadError::Transient(why) => why,
            _ => panic!("giving up is transient"),
        };
        assert!(gave_up.starts_with("Put fake://b/k: gave up after 5 attempt(s) in 1.5 s"), "{gave_up}");
        assert!(gave_up.contains("retry_max_attempts = 5") && gave_up.ends_with("last failure: last"), "{gave_up}");
    }
}
