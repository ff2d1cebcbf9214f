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
