//! A deterministic gate between two real sessions.
//!
//! Session A and session B each run over their own in-memory transport; the
//! test holds the far end of both. Every frame either session sends stops at
//! the gate, and nothing crosses until the test says so: [`Gate::forward`]
//! (or [`Gate::a_to_b`], [`Gate::b_to_a`]) delivers the next frame of one
//! direction and returns it decoded. Each direction keeps its order, as a
//! real connection does; what the test chooses is which direction moves next,
//! which is exactly what decides the races of the protocol (two frames
//! crossing on the wire).
//!
//! The gate can also act as the peer itself: [`Gate::inject`] sends a crafted
//! frame to one session as if the other had sent it, and
//! [`Gate::drop_frame`] takes a frame out without delivering it (for the
//! answers to injected calls).
//!
//! With `#[tokio::test(flavor = "current_thread", start_paused = true)]`,
//! [`idle`] runs every task until nothing is left to do, so after
//! [`Gate::settle`] both sessions have processed everything delivered to
//! them and the frames they sent in answer are held here.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use capwire::proto::{codec, Codec, Frame};
use capwire::transport::{memory_pair, CloseReason, Transport, TransportConfig, TransportError};
use capwire::{Capability, Registry, Session, SessionConfig};
use futures_util::FutureExt;

use super::within;

/// A direction across the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Frames session A sent, on their way to B.
    AtoB,
    /// Frames session B sent, on their way to A.
    BtoA,
}

impl Dir {
    /// The end the frames of this direction are read from.
    fn source(self) -> usize {
        match self {
            Dir::AtoB => 0,
            Dir::BtoA => 1,
        }
    }

    /// The end the frames of this direction are delivered through.
    fn dest(self) -> usize {
        1 - self.source()
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::AtoB => "A→B",
            Dir::BtoA => "B→A",
        })
    }
}

/// What a session sent that has not crossed yet.
enum Held {
    Frame(Bytes),
    /// The session closed its transport, with this reason.
    Closed(CloseReason),
}

/// The far end of one session's transport.
struct End {
    /// `receiver` hears the session; `sender` speaks to it.
    far: Transport,
    held: VecDeque<Held>,
    /// The session closed its side: nothing more will be read.
    closed: bool,
}

impl End {
    fn push(&mut self, next: Result<Option<Bytes>, TransportError>) {
        let held = match next {
            Ok(Some(bytes)) => Held::Frame(bytes),
            Ok(None) => Held::Closed(CloseReason::normal()),
            Err(TransportError::ClosedByPeer(reason)) => Held::Closed(reason),
            Err(e) => Held::Closed(CloseReason::new(CloseReason::INTERNAL_ERROR, e.to_string())),
        };
        if matches!(held, Held::Closed(_)) {
            self.closed = true;
        }
        self.held.push_back(held);
    }
}

/// Decodes a frame a session sent.
pub fn decode(bytes: &Bytes) -> Frame {
    codec::decode(bytes)
        .expect("a session sent a frame that decodes")
        .0
}

/// Asserts that `frame` is an `op` frame.
#[track_caller]
pub fn expect_op(frame: &Frame, op: &str) {
    assert_eq!(frame.op(), op, "expected a `{op}` frame, got {frame:?}");
}

/// Runs every task until none is left to run. Under a paused clock
/// (`start_paused`), the 1 ms sleep ends only once the runtime is idle.
pub async fn idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Two sessions whose frames cross only when the test says so.
pub struct Gate {
    /// Session A (by convention the client).
    pub a: Session,
    /// Session B (by convention the server).
    pub b: Session,
    /// `ends[0]` hears A and speaks to A; `ends[1]` hears and speaks to B.
    ends: [End; 2],
    /// Every frame that crossed or was injected or dropped, in order.
    log: Vec<String>,
}

impl Gate {
    /// A and B with their registries and settings; both `hello`s have crossed.
    pub async fn new(
        registry_a: Registry,
        config_a: SessionConfig,
        registry_b: Registry,
        config_b: SessionConfig,
    ) -> Gate {
        let tc = TransportConfig::default();
        let (a_near, a_far) = memory_pair(&tc);
        let (b_near, b_far) = memory_pair(&tc);
        let a = Session::new(a_near, registry_a, config_a);
        let b = Session::new(b_near, registry_b, config_b);
        let end = |far| End {
            far,
            held: VecDeque::new(),
            closed: false,
        };
        let mut gate = Gate {
            a,
            b,
            ends: [end(a_far), end(b_far)],
            log: Vec::new(),
        };
        gate.expect(Dir::AtoB, "hello").await;
        gate.expect(Dir::BtoA, "hello").await;
        gate
    }

    /// A client A with nothing to serve, and B serving `registry`.
    pub async fn serving(registry: Registry) -> Gate {
        Gate::new(
            Registry::new(),
            SessionConfig::default(),
            registry,
            SessionConfig::default(),
        )
        .await
    }

    /// A bootstraps `name` from B; the call and its result cross.
    pub async fn bootstrap(&mut self, name: &str) -> Capability {
        let boot = tokio::spawn({
            let a = self.a.clone();
            let name = name.to_owned();
            async move { a.bootstrap(&name, None).await }
        });
        self.expect(Dir::AtoB, "call").await;
        self.expect(Dir::BtoA, "result").await;
        within(Duration::from_secs(5), "the bootstrap", boot)
            .await
            .expect("the bootstrap task")
            .expect("bootstrap")
    }

    /// Reads what both sessions have sent so far, without waiting.
    fn gather(&mut self) {
        for end in &mut self.ends {
            while !end.closed {
                match end.far.receiver.recv().now_or_never() {
                    Some(next) => end.push(next),
                    None => break,
                }
            }
        }
    }

    /// Waits (up to 5 s of the test's clock) until `dir` holds a frame.
    async fn wait(&mut self, dir: Dir) {
        self.gather();
        let end = &mut self.ends[dir.source()];
        if end.held.is_empty() {
            assert!(
                !end.closed,
                "{dir}: the sender closed its transport; nothing more will come"
            );
            let what = format!("a frame {dir}");
            let next = within(Duration::from_secs(5), &what, end.far.receiver.recv()).await;
            end.push(next);
        }
    }

    /// Lets every task run, then reads what the sessions sent meanwhile.
    pub async fn settle(&mut self) {
        idle().await;
        self.gather();
    }

    /// The next frame of `dir`, decoded, left where it is (held): waits
    /// for it if the session has not sent it yet.
    pub async fn hold(&mut self, dir: Dir) -> Frame {
        self.wait(dir).await;
        match self.ends[dir.source()].held.front() {
            Some(Held::Frame(bytes)) => decode(bytes),
            Some(Held::Closed(reason)) => panic!("{dir}: the transport was closed: {reason:?}"),
            None => unreachable!("waited for a frame"),
        }
    }

    /// Every frame held in `dir` now (after a `settle`, all that was sent).
    pub fn held(&mut self, dir: Dir) -> Vec<Frame> {
        self.gather();
        self.ends[dir.source()]
            .held
            .iter()
            .filter_map(|h| match h {
                Held::Frame(bytes) => Some(decode(bytes)),
                Held::Closed(_) => None,
            })
            .collect()
    }

    /// The ops of the frames held in `dir`; a closed transport shows as `close`.
    pub fn held_ops(&mut self, dir: Dir) -> Vec<&'static str> {
        self.gather();
        self.ends[dir.source()]
            .held
            .iter()
            .map(|h| match h {
                Held::Frame(bytes) => decode(bytes).op(),
                Held::Closed(_) => "close",
            })
            .collect()
    }

    /// Delivers the next frame of `dir` and returns it, decoded.
    pub async fn forward(&mut self, dir: Dir) -> Frame {
        self.wait(dir).await;
        let bytes = match self.ends[dir.source()].held.pop_front() {
            Some(Held::Frame(bytes)) => bytes,
            Some(Held::Closed(reason)) => {
                panic!("{dir}: expected a frame, the transport was closed: {reason:?}")
            }
            None => unreachable!("waited for a frame"),
        };
        let frame = decode(&bytes);
        self.log.push(format!("{dir} {}", short(&frame)));
        self.ends[dir.dest()]
            .far
            .sender
            .send(bytes)
            .await
            .expect("the receiving session's transport is open");
        frame
    }

    /// Delivers the next frame A sent to B.
    pub async fn a_to_b(&mut self) -> Frame {
        self.forward(Dir::AtoB).await
    }

    /// Delivers the next frame B sent to A.
    pub async fn b_to_a(&mut self) -> Frame {
        self.forward(Dir::BtoA).await
    }

    /// Delivers the next frame of `dir`, which must be an `op` frame.
    pub async fn expect(&mut self, dir: Dir, op: &str) -> Frame {
        let frame = self.forward(dir).await;
        assert_eq!(
            frame.op(),
            op,
            "{dir}: expected `{op}`, got {frame:?}\ntrace:\n{}",
            self.trace()
        );
        frame
    }

    /// Takes the next frame of `dir` out without delivering it.
    pub async fn drop_frame(&mut self, dir: Dir) -> Frame {
        self.wait(dir).await;
        match self.ends[dir.source()].held.pop_front() {
            Some(Held::Frame(bytes)) => {
                let frame = decode(&bytes);
                self.log.push(format!("{dir} dropped {}", short(&frame)));
                frame
            }
            Some(Held::Closed(reason)) => panic!("{dir}: the transport was closed: {reason:?}"),
            None => unreachable!("waited for a frame"),
        }
    }

    /// Takes the next frame of `dir` out without delivering it; it must be
    /// an `op` frame.
    pub async fn drop_expect(&mut self, dir: Dir, op: &str) -> Frame {
        let frame = self.drop_frame(dir).await;
        expect_op(&frame, op);
        frame
    }

    /// Sends `frame` to the receiver of `dir` as if its peer had sent it
    /// (`AtoB`: to B, in A's name), behind everything delivered before.
    pub async fn inject(&mut self, dir: Dir, frame: Frame) {
        self.log.push(format!("{dir} injected {}", short(&frame)));
        let bytes = codec::encode_bytes(&frame, Codec::Json).expect("encode");
        self.ends[dir.dest()]
            .far
            .sender
            .send(bytes)
            .await
            .expect("the receiving session's transport is open");
    }

    /// The next thing of `dir` must be the sender's close: closes the
    /// receiver's transport the same way. Returns the reason.
    pub async fn forward_close(&mut self, dir: Dir) -> CloseReason {
        self.wait(dir).await;
        let reason = match self.ends[dir.source()].held.pop_front() {
            Some(Held::Closed(reason)) => reason,
            Some(Held::Frame(bytes)) => panic!(
                "{dir}: expected the close, got {:?}\ntrace:\n{}",
                decode(&bytes),
                self.trace()
            ),
            None => unreachable!("waited"),
        };
        self.log.push(format!("{dir} close {reason:?}"));
        let _ = self.ends[dir.dest()].far.sender.close(reason.clone()).await;
        reason
    }

    /// Lets everything through, both ways, until both sessions are quiet;
    /// returns what crossed, in the order it crossed.
    pub async fn flush_all(&mut self) -> Vec<(Dir, Frame)> {
        let mut crossed = Vec::new();
        for _ in 0..1000 {
            self.settle().await;
            let mut moved = false;
            for dir in [Dir::AtoB, Dir::BtoA] {
                while let Some(front) = self.ends[dir.source()].held.front() {
                    moved = true;
                    if matches!(front, Held::Closed(_)) {
                        self.forward_close(dir).await;
                    } else {
                        let frame = self.forward(dir).await;
                        crossed.push((dir, frame));
                    }
                }
            }
            if !moved {
                return crossed;
            }
        }
        panic!("the sessions never went quiet\ntrace:\n{}", self.trace());
    }

    /// Lets every task run; then nothing may be held in either direction.
    pub async fn assert_quiet(&mut self) {
        self.settle().await;
        let (ab, ba) = (self.held_ops(Dir::AtoB), self.held_ops(Dir::BtoA));
        assert!(
            ab.is_empty() && ba.is_empty(),
            "expected no frames, A→B holds {ab:?}, B→A holds {ba:?}\ntrace:\n{}",
            self.trace()
        );
    }

    /// What crossed so far, one frame a line.
    pub fn trace(&self) -> String {
        self.log.join("\n")
    }
}

/// A frame's Debug text, cut for traces.
fn short(frame: &Frame) -> String {
    let mut s = format!("{frame:?}");
    if s.len() > 240 {
        let mut end = 240;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
