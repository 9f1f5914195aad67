//! The caller's side: questions this side asks (plain, kept, stream), and
//! the `result`, `item` and stream-terminal frames that answer them.

use std::sync::Arc;

use capwire_proto::{Cancel, Code, Frame, PathSeg, Payload, Status, Target};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::capability::{CapKind, Capability};
use crate::events::{Direction, Event};
use crate::promise::{KeptQuestion, MethodName};
use crate::value::Value;

use super::{deadline, CallScope, Meta, RemoteItems, Reply, Shared};
use crate::engine::questions::QuestionKind;
use crate::engine::OutgoingCall;

/// What a call on the wire is addressed to: a capability the peer exported,
/// or the capability at a path of one of this side's kept questions.
#[derive(Clone)]
pub(crate) enum WireTarget {
    Cap(u64),
    Answer(u64, Arc<[PathSeg]>),
}

impl WireTarget {
    /// The capability called, if it is one (revocation applies to it).
    pub(super) fn cap(&self) -> Option<u64> {
        match self {
            WireTarget::Cap(cap) => Some(*cap),
            WireTarget::Answer(..) => None,
        }
    }

    pub(super) fn target(&self) -> Target {
        match self {
            WireTarget::Cap(cap) => Target::Cap(*cap),
            WireTarget::Answer(id, path) => Target::Answer {
                id: *id,
                path: path.to_vec(),
            },
        }
    }
}

impl Shared {
    /// Counts and reports a kept or stream question that ended.
    pub(super) fn record_outgoing(
        &self,
        cap: Option<u64>,
        id: u64,
        meta: Meta,
        outcome: Code,
        stream: bool,
    ) {
        self.counters.call_done(outcome);
        let cap = cap.unwrap_or(u64::MAX);
        let duration = meta.started.elapsed();
        let method = meta.method;
        self.emit_with(|| {
            if stream {
                Event::Stream {
                    direction: Direction::Outgoing,
                    cap,
                    method,
                    id,
                    duration,
                    outcome,
                }
            } else {
                Event::Call {
                    direction: Direction::Outgoing,
                    cap,
                    method,
                    id,
                    duration,
                    outcome,
                }
            }
        });
    }

    /// The consumer of stream `id` took `n` items: the callee may send `n` more.
    pub(crate) fn grant(&self, id: u64, n: u32) {
        if self.lock().questions.grant(id, n) {
            self.send_nowait(Frame::Credit(capwire_proto::Credit { id, n }));
        }
    }

    /// The consumer of stream `id` went away: `cancel`. The question stays
    /// until its terminal frame, so items still in flight are not violations.
    pub(crate) fn cancel_stream(&self, id: u64) {
        if self.lock().questions.close_stream(id) {
            self.send_nowait(Frame::Cancel(Cancel { id }));
        }
    }

    /// Sends the promises among `args` that go to this session first, so
    /// that they can travel as `answer` descriptors (\[S14\]).
    pub(super) async fn send_arg_promises(self: &Arc<Self>, args: &Value) {
        let me = Arc::as_ptr(self) as usize;
        for cap in &args.caps {
            if let CapKind::Promised(core, _) = &cap.kind {
                if core.session() == Some(me) {
                    core.ensure_sent().await;
                }
            }
        }
    }

    /// Registers a question and builds its `call` frame. Nothing is sent yet.
    pub(super) fn prepare(
        self: &Arc<Self>,
        ask: Ask<'_>,
        caps: &[Capability],
        reply: Reply,
    ) -> Result<(u64, Frame), Status> {
        let Ask {
            target,
            method,
            payload,
            deadline,
            parent,
            kind,
        } = ask;
        let call = OutgoingCall {
            target: target.target(),
            method: &method,
            payload,
            caps,
            parent,
            deadline_ms: deadline::to_wire(deadline, Instant::now),
            kind,
        };
        self.lock().call(call, reply)
    }

    /// Sends a prepared call. If it cannot be sent (too big, or the
    /// connection is gone), the question and the introductions it carried
    /// are taken back: there is nothing to cancel.
    ///
    /// A call does not wait for room in the transport queue: the frame goes
    /// behind the others, and the question table's limit
    /// (`max_in_flight_out`) bounds how many can wait there. So a call's
    /// future holds no send state, only its reply.
    pub(super) fn send_question(self: &Arc<Self>, id: u64, frame: Frame) -> Result<(), Status> {
        let result = self.send_queued(&frame);
        if result.is_err() {
            let caps = match &frame {
                Frame::Call(call) => call.caps.as_slice(),
                _ => &[],
            };
            let mut st = self.lock();
            st.questions.remove(id);
            st.unsend(caps);
            drop(st);
            self.notify_settled();
        }
        result
    }

    /// Makes a plain call and waits for its answer (two frames, nothing kept).
    pub(crate) async fn call_plain(self: &Arc<Self>, call: OutCall<'_>) -> Result<Value, Status> {
        if !call.args.caps.is_empty() {
            Box::pin(self.send_arg_promises(&call.args)).await;
        }
        self.start_plain(call, None)?.await
    }

    /// Sends a kept call: its answer stays at the callee, for pipelining,
    /// until the returned question is dropped.
    pub(crate) async fn call_kept(
        self: &Arc<Self>,
        call: OutCall<'_>,
        target_handle: Capability,
    ) -> Result<Arc<KeptQuestion>, Status> {
        if !call.args.caps.is_empty() {
            self.send_arg_promises(&call.args).await;
        }
        let (tx, rx) = watch::channel(None);
        let meta = Meta {
            method: call.method.to_string(),
            started: self.started(),
        };
        let (ask, caps) = call.ask(QuestionKind::Kept);
        let (id, frame) = self.prepare(ask, &caps, Reply::Kept { tx, meta })?;
        let mut deps = caps;
        deps.push(target_handle);
        let kept = Arc::new(KeptQuestion {
            session: Arc::downgrade(self),
            id,
            result: rx,
            _deps: deps,
        });
        self.send_question(id, frame)?;
        Ok(kept)
    }

    /// Sends a stream call granting `window` items up front.
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        call: OutCall<'_>,
        window: Option<u32>,
        mut deps: Vec<Capability>,
    ) -> Result<RemoteItems, Status> {
        let window = window.unwrap_or(self.config.stream_window).max(1);
        self.send_arg_promises(&call.args).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let meta = Meta {
            method: call.method.to_string(),
            started: self.started(),
        };
        let (ask, caps) = call.ask(QuestionKind::stream(window));
        let (id, frame) = self.prepare(ask, &caps, Reply::Stream { tx, meta })?;
        deps.extend(caps);
        let items = RemoteItems::new(self.clone(), id, rx, window, deps);
        self.send_question(id, frame)?;
        Ok(items)
    }
}

/// A call this side is about to put on the wire.
pub(super) struct Ask<'a> {
    pub(super) target: &'a WireTarget,
    pub(super) method: MethodName,
    pub(super) payload: Payload,
    pub(super) deadline: Option<Instant>,
    /// The answer whose handler makes this call (protocol `parent`).
    pub(super) parent: Option<u64>,
    pub(super) kind: QuestionKind,
}

/// A call a handle makes through this session: where it goes, what it
/// carries, and the context it inherits.
pub(crate) struct OutCall<'a> {
    pub(crate) target: &'a WireTarget,
    pub(crate) method: MethodName,
    pub(crate) args: Value,
    pub(crate) deadline: Option<Instant>,
    pub(crate) scope: Option<CallScope>,
}

impl<'a> OutCall<'a> {
    /// The question to ask, and the capabilities of the arguments.
    pub(super) fn ask(self, kind: QuestionKind) -> (Ask<'a>, Vec<Capability>) {
        let Value { payload, caps } = self.args;
        let ask = Ask {
            target: self.target,
            method: self.method,
            payload,
            deadline: self.deadline,
            parent: self.scope.as_ref().map(|s| s.answer),
            kind,
        };
        (ask, caps)
    }
}
