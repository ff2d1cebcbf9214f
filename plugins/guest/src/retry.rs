//! The retry policy and a driver that runs many retried calls at once.
//!
//! The policy: after a retryable failure, wait a random time between zero and
//! `min(max_delay, base_delay * 2^(attempt-1))` ("full jitter"), but at least
//! what the server asked with `Retry-After`; give up when `max_attempts`
//! attempts have been made, or when the next wait would take the call past
//! `max_elapsed` since its first attempt. No attempt's time limits reach past
//! `max_elapsed` either (each gets at least [`MIN_ATTEMPT_TIME`]). What is retryable is the caller's
//! choice ([`Call::verdict`]); the provider decides it per protocol.

use std::time::Duration;

use crate::http::{self, Exchange, HttpError, Progress, Request, Response};

/// The shortest time limit an attempt gets, however little of the elapsed budget is left.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_secs(1);

/// How often and how long to retry one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// The backoff's base: the cap of the first wait.
    pub base_delay: Duration,
    /// The largest wait the backoff computes (a `Retry-After` may ask for more).
    pub max_delay: Duration,
    /// No new attempt starts later than this after the first one.
    pub max_elapsed: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(5_000),
            max_elapsed: Duration::from_millis(20_000),
        }
    }
}

impl Policy {
    /// The cap of the wait after failed attempt number `attempt` (1-based):
    /// `min(max_delay, base_delay * 2^(attempt-1))`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait after failed attempt `attempt`: uniform in `[0, cap]` from
    /// `random` (full jitter), raised to `retry_after` when the server asked.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, random: u64) -> Duration {
        let cap = self.backoff_cap(attempt).as_nanos() as u64;
        let jittered = Duration::from_nanos(if cap == 0 { 0 } else { random % (cap + 1) });
        retry_after.map_or(jittered, |asked| jittered.max(asked))
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (`now_unix`
/// is the current time in seconds since the Unix epoch).
pub fn parse_retry_after(value: &str, now_unix: u64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let when = when.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(when.saturating_sub(now_unix)))
}

/// What a call makes of one attempt's result.
pub enum Verdict<T, E> {
    /// The call is over, with this result.
    Done(Result<T, E>),
    /// Worth another attempt; `why` names the failure (it ends up in the
    /// give-up error), `retry_after` is the server's wish, if any.
    Retry {
        /// The failure, for logs and the final error.
        why: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

/// One logical operation (e.g. one part upload) that may take several attempts.
pub trait Call {
    /// The result of a successful call.
    type Output;
    /// The error of a failed call.
    type Error;

    /// Builds the request of a new attempt (fresh body stream, fresh signature).
    fn request(&mut self) -> Result<Request, Self::Error>;

    /// Judges one attempt's response or transport error.
    fn verdict(&mut self, result: Result<Response, HttpError>) -> Verdict<Self::Output, Self::Error>;

    /// The error to return when the policy gives up after `attempts` attempts
    /// over `elapsed`, the last having failed with `why`.
    fn gave_up(&mut self, why: String, attempts: u32, elapsed: Duration) -> Self::Error;

    /// Called before waiting `delay` to retry after attempt `attempt` failed with `why`.
    fn retrying(&mut self, _attempt: u32, _why: &str, _delay: Duration) {}
}

/// Where one call of [`run`] is.
enum State {
    /// Next: start an attempt.
    Ready,
    /// An attempt is in flight.
    Running(Exchange),
    /// Waiting until this monotonic instant (ns) before the next attempt.
    Sleeping(u64),
}

/// One call in flight in [`run`].
struct Slot {
    index: usize,
    attempt: u32,
    started: u64,
    state: State,
}

/// Runs `calls` with at most `in_flight` at once, each retried on its own
/// under `policy`. With `stop_on_error`, the first failed call stops the run:
/// calls in flight are abandoned and those not started are not run (their
/// entries stay `None`).
pub fn run<C: Call>(
    calls: &mut [C],
    in_flight: usize,
    policy: &Policy,
    stop_on_error: bool,
) -> Vec<Option<Result<C::Output, C::Error>>> {
    let mut results: Vec<Option<Result<C::Output, C::Error>>> = calls.iter().map(|_| None).collect();
    let mut slots: Vec<Slot> = Vec::new();
    let mut next = 0;
    let mut stopped = false;
    loop {
        while !stopped && slots.len() < in_flight.max(1) && next < calls.len() {
            slots.push(Slot { index: next, attempt: 0, started: http::now_nanos(), state: State::Ready });
            next += 1;
        }
        if slots.is_empty() {
            return results;
        }
        let mut waits = Vec::new();
        let mut i = 0;
        while i < slots.len() {
            let index = slots[i].index;
            match advance(&mut slots[i], &mut calls[index], policy) {
                Step::Wait(pollable) => {
                    waits.push(pollable);
                    i += 1;
                }
                Step::Finished(result) => {
                    let failed = result.is_err();
                    results[slots[i].index] = Some(result);
                    slots.remove(i);
                    if failed && stop_on_error {
                        stopped = true;
                        // Pollables are children of the exchanges' streams
                        // and futures: drop them first.
                        waits.clear();
                        slots.clear();
                    }
                }
            }
        }
        if !waits.is_empty() && !stopped {
            let refs: Vec<&wasip2::io::poll::Pollable> = waits.iter().collect();
            wasip2::io::poll::poll(&refs);
        }
    }
}

/// Where [`advance`] left a slot.
enum Step<T, E> {
    /// Nothing to do until this pollable is ready.
    Wait(wasip2::io::poll::Pollable),
    /// The call is over.
    Finished(Result<T, E>),
}

/// Advances one slot until it must wait or its call is over.
fn advance<C: Call>(slot: &mut Slot, call: &mut C, policy: &Policy) -> Step<C::Output, C::Error> {
    loop {
        let outcome = match &mut slot.state {
            State::Sleeping(until) => {
                if http::now_nanos() < *until {
                    return Step::Wait(http::ready_at(*until));
                }
                slot.state = State::Ready;
                continue;
            }
            State::Ready => {
                slot.attempt += 1;
                let mut request = match call.request() {
                    Ok(request) => request,
                    Err(e) => return Step::Finished(Err(e)),
                };
                // No attempt outlives the call's elapsed budget (but each gets at least a second).
                let elapsed = Duration::from_nanos(http::now_nanos().saturating_sub(slot.started));
                let left = policy.max_elapsed.saturating_sub(elapsed).max(MIN_ATTEMPT_TIME);
                let t = &mut request.timeouts;
                (t.connect, t.first_byte, t.between_bytes) =
                    (t.connect.min(left), t.first_byte.min(left), t.between_bytes.min(left));
                match Exchange::start(request) {
                    Ok(exchange) => {
                        slot.state = State::Running(exchange);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            State::Running(exchange) => match exchange.step() {
                Progress::Wait(pollable) => return Step::Wait(pollable),
                Progress::Done(result) => result,
            },
        };
        slot.state = State::Ready;
        match call.verdict(outcome) {
            Verdict::Done(result) => return Step::Finished(result),
            Verdict::Retry { why, retry_after } => {
                let now = http::now_nanos();
                let elapsed = Duration::from_nanos(now.saturating_sub(slot.started));
                let delay = policy.delay(slot.attempt, retry_after, wasip2::random::random::get_random_u64());
                if slot.attempt >= policy.max_attempts.max(1) || elapsed + delay > policy.max_elapsed {
                    return Step::Finished(Err(call.gave_up(why, slot.attempt, elapsed)));
                }
                call.retrying(slot.attempt, &why, delay);
                slot.state = State::Sleeping(now + delay.as_nanos() as u64);
            }
        }
    }
}

/// Runs one call to its end under `policy`.
pub fn run_one<C: Call>(call: &mut C, policy: &Policy) -> Result<C::Output, C::Error> {
    run(std::slice::from_mut(call), 1, policy, true).pop().flatten().expect("a single call always ends with a result")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(20),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        let caps: Vec<u128> = (1..=6).map(|a| p.backoff_cap(a).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_cap(200).as_millis(), 1000);
    }

    #[test]
    fn full_jitter_stays_within_the_cap_and_retry_after_wins() {
        let p = policy();
        for random in [0, 1, 12345, u64::MAX, 99_999_999] {
            assert!(p.delay(3, None, random) <= Duration::from_millis(400));
        }
        assert_eq!(p.delay(1, None, 0), Duration::ZERO);
        assert_eq!(p.delay(1, Some(Duration::from_secs(2)), 7), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after(" 3 ", 0), Some(Duration::from_secs(3)));
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
