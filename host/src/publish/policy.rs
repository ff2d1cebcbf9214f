//! What to do after a block node ends a stream (the consensus node's failover tables), the
//! exponential backoff with jitter, and the `EndOfStream` rate limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use blockferry_proto::EndOfStreamCode;

use super::PublishConfig;

/// Where a new stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// At the newest block.
    Latest,
    /// At this block.
    At(u64),
}

/// How a node is retried after its stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Switch to another node now; retry this one after the fixed delay.
    SwitchFixed,
    /// Retry this node after the next exponential backoff step.
    SameNodeBackoff,
}

/// The consensus node's EndOfStream table: how to retry and where to restart.
pub fn on_end_of_stream(code: EndOfStreamCode, block_number: u64) -> (Retry, Restart) {
    use EndOfStreamCode::*;
    match code {
        Success | Error | PersistenceFailed | Unknown => (Retry::SwitchFixed, Restart::Latest),
        Timeout | DuplicateBlock | BadBlockProof | InvalidRequest => {
            // A node that knows no block reports -1 (`u64::MAX`): the next is block 0.
            (Retry::SameNodeBackoff, Restart::At(block_number.wrapping_add(1)))
        }
    }
}

/// Exponential backoff: from the initial delay, ×2 per step, capped; each
/// delay jittered to `delay/2 + rand(0, delay/2)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: initial }
    }

    /// From the config's `initial_backoff_ms` and `max_backoff_ms`.
    pub fn from_config(config: &PublishConfig) -> Self {
        Self::new(Duration::from_millis(config.initial_backoff_ms), Duration::from_millis(config.max_backoff_ms))
    }

    /// The next delay (jittered), and double the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(delay)
    }

    /// Start again from the initial delay (after a healthy stream).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `delay/2 + rand(0, delay/2)`.
pub fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Counts `EndOfStream`s of one node within a sliding time frame.
#[derive(Debug, Clone)]
pub struct EndOfStreamLimit {
    max: usize,
    frame: Duration,
    seen: VecDeque<Instant>,
}

impl EndOfStreamLimit {
    /// More than `max` within `frame` is too many.
    pub fn new(max: u32, frame: Duration) -> Self {
        Self { max: max as usize, frame, seen: VecDeque::new() }
    }

    /// Record one at `now`; whether the limit is now exceeded.
    pub fn record(&mut self, now: Instant) -> bool {
        while self.seen.front().is_some_and(|t| now.saturating_duration_since(*t) > self.frame) {
            self.seen.pop_front();
        }
        self.seen.push_back(now);
        self.seen.len() > self.max
    }

    /// Forget what was seen (after the node's schedule delay).
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndOfStreamCode::*;

    #[test]
    fn the_end_of_stream_table() {
        for code in [Success, Error, PersistenceFailed, Unknown] {
            assert_eq!(on_end_of_stream(code, 41), (Retry::SwitchFixed, Restart::Latest), "{code:?}");
        }
        for code in [Timeout, DuplicateBlock, BadBlockProof, InvalidRequest] {
            assert_eq!(on_end_of_stream(code, 41), (Retry::SameNodeBackoff, Restart::At(42)), "{code:?}");
            // A node that knows no block (-1) gets block 0 next.
            let unknown = blockferry_proto::UNKNOWN_BLOCK_NUMBER;
            assert_eq!(on_end_of_stream(code, unknown), (Retry::SameNodeBackoff, Restart::At(0)), "{code:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let expected = [1, 2, 4, 8, 10, 10];
        for want in expected {
            let want = Duration::from_secs(want);
            let got = b.next_delay();
            assert!(got >= want / 2 && got <= want, "{got:?} not in [{:?}, {want:?}]", want / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn rate_limit_counts_within_the_frame_only() {
        let mut limit = EndOfStreamLimit::new(2, Duration::from_secs(30));
        let t = Instant::now();
        assert!(!limit.record(t));
        assert!(!limit.record(t + Duration::from_secs(1)));
        assert!(limit.record(t + Duration::from_secs(2)), "a third within 30 s exceeds 2");
        // Much later the old ones have left the frame.
        assert!(!limit.record(t + Duration::from_secs(100)));
    }
}
