//! Observable events and connection statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use capwire_proto::{Code, Status};
use serde::Serialize;

/// Which side of a call this session was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The peer called us.
    Incoming,
    /// We called the peer.
    Outgoing,
}

/// Something that happened on a session. Subscribers get a bounded buffer:
/// one that falls behind loses the oldest events, and never slows the session.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A bootstrap was answered.
    Bootstrap {
        /// The name asked for.
        name: String,
        /// How it ended.
        outcome: Code,
    },
    /// A call finished.
    Call {
        /// Incoming or outgoing.
        direction: Direction,
        /// The target capability id (`u64::MAX` for a call on a promised answer).
        cap: u64,
        /// The method.
        method: String,
        /// The question id.
        id: u64,
        /// How long it took (zero for a call that began before anyone
        /// subscribed: an unobserved call does not read the clock).
        duration: Duration,
        /// How it ended.
        outcome: Code,
    },
    /// A stream call finished (ended, failed or was cancelled).
    Stream {
        /// Incoming (we streamed to the peer) or outgoing (the peer streamed to us).
        direction: Direction,
        /// The target capability id (`u64::MAX` for a stream on a promised answer).
        cap: u64,
        /// The method.
        method: String,
        /// The question id.
        id: u64,
        /// How long it was open (zero for a stream that began before anyone
        /// subscribed).
        duration: Duration,
        /// How it ended.
        outcome: Code,
    },
    /// Capabilities were revoked (by us, or by the peer).
    Revoke {
        /// The direction: incoming means the peer revoked its exports.
        direction: Direction,
        /// The ids.
        caps: Vec<u64>,
    },
    /// A connection-level error (protocol violation, limit on the connection).
    Error {
        /// What went wrong.
        status: Status,
    },
    /// The session ended.
    Closed {
        /// Why.
        status: Status,
    },
}

/// When an observed call or stream began. The clock is read only while
/// someone subscribes to events, their only consumer: an unobserved call
/// costs no clock reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started(Option<Instant>);

impl Started {
    /// Now, if `observed`.
    pub(crate) fn now_if(observed: bool) -> Started {
        Started(observed.then(Instant::now))
    }

    /// Time since it began; zero when it was not observed.
    pub(crate) fn elapsed(&self) -> Duration {
        self.0.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A snapshot of a session's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Frame bytes received (without framing).
    pub bytes_in: u64,
    /// Frame bytes sent (without framing).
    pub bytes_out: u64,
    /// Finished calls by outcome (both directions), as `(code, count)`, zeros omitted.
    pub calls: Vec<(Code, u64)>,
    /// Live entries in the export table.
    pub exports: usize,
    /// Live entries in the import table.
    pub imports: usize,
    /// Calls we are waiting on.
    pub questions: usize,
    /// Calls the peer is waiting on.
    pub answers: usize,
    /// Round trip of the last ping, in microseconds.
    pub last_rtt_us: Option<u64>,
    /// Stream items sent to the peer.
    pub stream_items_out: u64,
    /// Stream items received from the peer.
    pub stream_items_in: u64,
    /// The most items any one stream to the peer had unacknowledged at once
    /// (sent, not yet paid back by credit): never more than its window.
    pub stream_max_unacked: u64,
    /// Calls and promises waiting for a kept answer to settle.
    pub pipelined_waiting: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) calls: [AtomicU64; 14],
    /// Microseconds + 1; 0 means "no ping yet".
    pub(crate) last_rtt: AtomicU64,
    pub(crate) stream_items_out: AtomicU64,
    pub(crate) stream_items_in: AtomicU64,
    pub(crate) stream_max_unacked: AtomicU64,
}

impl Counters {
    pub(crate) fn call_done(&self, code: Code) {
        if let Some(c) = self.calls.get(usize::from(code.as_u8())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One stream item sent, with the stream's unacknowledged count after it.
    pub(crate) fn stream_item_out(&self, unacked: u64) {
        self.stream_items_out.fetch_add(1, Ordering::Relaxed);
        self.stream_max_unacked
            .fetch_max(unacked, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let calls = Code::ALL
            .into_iter()
            .zip(self.calls.iter())
            .map(|(code, n)| (code, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let rtt = self.last_rtt.load(Ordering::Relaxed);
        Stats {
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            calls,
            last_rtt_us: rtt.checked_sub(1),
            stream_items_out: self.stream_items_out.load(Ordering::Relaxed),
            stream_items_in: self.stream_items_in.load(Ordering::Relaxed),
            stream_max_unacked: self.stream_max_unacked.load(Ordering::Relaxed),
            ..Stats::default()
        }
    }
}
