//! The replay ring: every frame a session sends toward its clients, stamped
//! with the session's next sequence number and kept, up to a bound on frames
//! and on bytes, so that a client coming back with the last sequence number
//! it saw receives exactly the frames after it.
//!
//! Sequence numbers start at 1 and have no holes. The ring keeps the frames
//! `first..=head`; a client whose next frame is older than `first` cannot be
//! served a gap without a hole, so it is told so ([`Replay::reset`]) and
//! receives what is left. A ring also has an *epoch*: a client that presents
//! a sequence number from another ring (a relay restarted, a session evicted
//! and recreated) is reset too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// The bound of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingLimits {
    /// Most frames kept.
    pub(crate) frames: usize,
    /// Most bytes kept (a single larger frame is still kept, alone).
    pub(crate) bytes: usize,
}

/// What a client attaching with `last_seq` gets from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replay {
    /// The first sequence number it is sent (`head + 1` when nothing is).
    pub(crate) from: u64,
    /// True when frames it has not seen are no longer kept (or its sequence
    /// number belongs to another ring): it must drop what it shows and
    /// rebuild from what follows.
    pub(crate) reset: bool,
}

/// The frames of one session, plain data (no locks, no clock).
#[derive(Debug)]
pub(crate) struct Ring {
    limits: RingLimits,
    epoch: String,
    /// Sequence number of `frames[0]` (head + 1 while empty).
    first: u64,
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Ring {
    pub(crate) fn new(epoch: String, limits: RingLimits) -> Ring {
        Ring {
            limits,
            epoch,
            first: 1,
            frames: VecDeque::new(),
            bytes: 0,
        }
    }

    /// The ring's epoch: sequence numbers mean something only within it.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last sequence number given out (0 before the first frame).
    pub(crate) fn head(&self) -> u64 {
        self.first + self.frames.len() as u64 - 1
    }

    /// The oldest sequence number still kept (`head + 1` when none is).
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Stamps `frame` (a JSON object) with the next sequence number, keeps
    /// it, and evicts the oldest frames over the bound. Returns the number.
    pub(crate) fn push(&mut self, frame: &[u8]) -> u64 {
        let seq = self.head() + 1;
        let stamped = stamp(frame, seq);
        self.bytes += stamped.len();
        self.frames.push_back(stamped);
        while self.frames.len() > 1
            && (self.frames.len() > self.limits.frames || self.bytes > self.limits.bytes)
        {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.len();
                self.first += 1;
            }
        }
        seq
    }

    /// What a client that last saw `last_seq` of ring `epoch` gets.
    /// `last_seq` 0 (or none) means it saw nothing.
    pub(crate) fn replay(&self, last_seq: u64, epoch: Option<&str>) -> Replay {
        let head = self.head();
        let foreign = epoch.is_some_and(|e| e != self.epoch);
        if foreign || last_seq > head {
            // Numbers from another ring say nothing about this one.
            return Replay {
                from: self.first,
                reset: true,
            };
        }
        if last_seq + 1 < self.first {
            return Replay {
                from: self.first,
                reset: true,
            };
        }
        Replay {
            from: last_seq + 1,
            reset: false,
        }
    }

    /// Up to `max` frames from `from` on, or `None` when `from` is no
    /// longer kept (the caller fell behind the ring).
    pub(crate) fn read(&self, from: u64, max: usize, out: &mut Vec<Bytes>) -> Option<()> {
        if from < self.first {
            return None;
        }
        let start = (from - self.first) as usize;
        out.extend(self.frames.iter().skip(start).take(max).cloned());
        Some(())
    }
}

/// Adds `"_seq":N` as the first member of a JSON object without parsing it.
/// A frame that is not an object is kept as it is (the relay only rings
/// objects).
pub(crate) fn stamp(frame: &[u8], seq: u64) -> Bytes {
    let start = frame.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start.filter(|&i| frame[i] == b'{') else {
        return Bytes::copy_from_slice(frame);
    };
    let rest = &frame[start + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut out = BytesMut::with_capacity(frame.len() + 24);
    out.extend_from_slice(b"{\"_seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    if !empty {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(rest);
    out.freeze()
}

/// A ring shared between the router (which pushes) and the connections'
/// delivery tasks (which read at their own pace).
#[derive(Debug)]
pub(crate) struct SharedRing {
    ring: Mutex<Ring>,
    /// The head, readable without the lock; stored after the frame is in.
    head: AtomicU64,
    /// Wakes readers on every push (the value is the head).
    changed: watch::Sender<u64>,
}

impl SharedRing {
    pub(crate) fn new(ring: Ring) -> SharedRing {
        let head = ring.head();
        SharedRing {
            ring: Mutex::new(ring),
            head: AtomicU64::new(head),
            changed: watch::channel(head).0,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, frame: &[u8]) -> u64 {
        let seq = self.lock().push(frame);
        self.head.store(seq, Ordering::Release);
        self.changed.send_replace(seq);
        seq
    }

    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(frames: usize, bytes: usize) -> Ring {
        Ring::new("e1".into(), RingLimits { frames, bytes })
    }

    fn seqs(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(f).unwrap();
                v["_seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn stamps_are_the_first_member_and_keep_the_rest() {
        assert_eq!(&stamp(br#"{"a":1}"#, 7)[..], br#"{"_seq":7,"a":1}"#);
        assert_eq!(&stamp(b"  { }", 2)[..], br#"{"_seq":2 }"#);
        assert_eq!(&stamp(b"[1]", 2)[..], b"[1]");
        let v: serde_json::Value =
            serde_json::from_slice(&stamp(br#"{"jsonrpc":"2.0","method":"m"}"#, 3)).unwrap();
        assert_eq!(v["_seq"], 3);
        assert_eq!(v["method"], "m");
    }

    /// Every attach point in a ring gets exactly the frames after it: no
    /// duplicate, no hole, until the frames fall out, then a reset.
    #[test]
    fn a_gap_is_exact_until_it_falls_out_then_reset() {
        let mut r = ring(5, 1 << 20);
        assert_eq!(r.head(), 0);
        assert_eq!(
            r.replay(0, None),
            Replay {
                from: 1,
                reset: false
            }
        );
        for i in 1..=8u64 {
            assert_eq!(r.push(format!("{{\"n\":{i}}}").as_bytes()), i);
        }
        assert_eq!((r.first(), r.head(), r.len()), (4, 8, 5));
        // Seen up to 3, 4 is the oldest kept: exact.
        for last in 3..=8 {
            let rep = r.replay(last, Some("e1"));
            assert!(!rep.reset, "{last}");
            let mut out = Vec::new();
            r.read(rep.from, usize::MAX, &mut out).unwrap();
            assert_eq!(seqs(&out), (last + 1..=8).collect::<Vec<_>>());
        }
        // Seen up to 2: frame 3 is gone, so reset and the whole ring.
        for last in [0, 1, 2] {
            let rep = r.replay(last, Some("e1"));
            assert_eq!(
                rep,
                Replay {
                    from: 4,
                    reset: true
                },
                "{last}"
            );
        }
        // A number from another epoch, or beyond the head, is a reset.
        assert!(r.replay(5, Some("other")).reset);
        assert!(r.replay(9, Some("e1")).reset);
        // Reading from before the ring fails instead of skipping.
        assert!(r.read(3, 10, &mut Vec::new()).is_none());
        let mut out = Vec::new();
        r.read(9, 10, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn the_byte_bound_evicts_but_keeps_the_newest_frame() {
        let mut r = ring(100, 64);
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
        r.push(b"{\"a\":1}");
        r.push(big.as_bytes());
        assert_eq!((r.first(), r.head(), r.len()), (2, 2, 1));
        r.push(b"{\"b\":1}");
        assert_eq!((r.first(), r.head()), (3, 3));
        assert!(r.bytes() <= 64);
        for _ in 0..1000 {
            r.push(b"{\"c\":1}");
        }
        assert!(r.bytes() <= 64 && r.len() >= 1);
        assert_eq!(r.head(), 1003);
    }

    #[test]
    fn reads_are_bounded_and_contiguous() {
        let mut r = ring(100, 1 << 20);
        for _ in 0..10 {
            r.push(b"{}");
        }
        let mut out = Vec::new();
        r.read(3, 4, &mut out).unwrap();
        assert_eq!(seqs(&out), vec![3, 4, 5, 6]);
    }
}
