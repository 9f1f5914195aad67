//! The Session: one connection, either side, over any transport.
//!
//! A session owns the four tables of DESIGN.md §3 — exports, imports,
//! questions, answers — and a reader task that turns incoming frames into
//! table operations. Locks are held only for table lookups, never across
//! `.await` or I/O; handlers run as their own tasks.

mod answers;
mod exports;
mod imports;
mod questions;
mod runtime;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use capwire_proto::{
    codec, Call, CallResult, Cancel, CapDescriptor, Code, Codec, Frame, Goaway, Hello, HelloLimits,
    Outcome, Payload, Ping, Pong, Reason, Release, Revoked, Status, Target, BOOTSTRAP_CAP,
    PROTOCOL_VERSION, RUNTIME_CAP,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attestation::Attestation;
use crate::capability::{CapKind, Capability, RemoteCap};
use crate::events::{Counters, Direction, Event, Stats};
use crate::object::{CallContext, Object};
use crate::policy::{self, BootstrapRequest, Policy};
use crate::registry::{Registry, RevocationSink};
use crate::transport::{CloseReason, FrameReceiver, FrameSender, Transport, TransportError};
use crate::value::Value;

use answers::Answers;
use exports::Exports;
use imports::{Imports, RevokedIds};
use questions::Questions;

/// Per-connection limits. Each one exceeded answers `resource_exhausted`
/// with a reason naming the limit.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Capabilities exported to the peer at once, revoked ones the peer has
    /// not released yet included. Default 1024 (`max_caps_per_connection`).
    pub max_exports: usize,
    /// Calls from the peer running at once. Default 1024 (`max_concurrent_calls`).
    pub max_in_flight_in: usize,
    /// Calls to the peer awaiting an answer at once. Default 1024 (`max_concurrent_calls`).
    pub max_in_flight_out: usize,
    /// Deepest nesting of a received value. Default 64 (`max_value_depth`).
    pub max_depth: usize,
    /// Revoked ids remembered to fail later calls without a round trip. Default 4096.
    pub max_revoked_remembered: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_exports: 1024,
            max_in_flight_in: 1024,
            max_in_flight_out: 1024,
            max_depth: 64,
            max_revoked_remembered: 4096,
        }
    }
}

/// How a session behaves. Every field has a documented default.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The codec this side sends. Default MessagePack.
    pub codec: Codec,
    /// Limits. See [`Limits`].
    pub limits: Limits,
    /// A name sent in `hello`, for the peer's logs.
    pub peer_name: Option<String>,
    /// Decides each bootstrap. Default: allow all.
    pub policy: Option<Arc<dyn Policy>>,
    /// Extra time the callee gives a call past its deadline before stopping
    /// it, so the caller's own timeout fires first. Default 500 ms.
    pub deadline_grace: Duration,
    /// How long `close` lets calls in flight finish, both the peer's and this
    /// side's own. Default 5 s.
    pub close_grace: Duration,
    /// Events buffered per subscriber before the oldest are dropped. Default 1024.
    pub event_buffer: usize,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            codec: Codec::Msgpack,
            limits: Limits::default(),
            peer_name: None,
            policy: None,
            deadline_grace: Duration::from_millis(500),
            close_grace: Duration::from_secs(5),
            event_buffer: 1024,
        }
    }
}

impl SessionConfig {
    /// Sets the codec this side sends.
    pub fn codec(mut self, codec: Codec) -> SessionConfig {
        self.codec = codec;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> SessionConfig {
        self.limits = limits;
        self
    }

    /// Sets the bootstrap policy.
    pub fn policy(mut self, policy: Arc<dyn Policy>) -> SessionConfig {
        self.policy = Some(policy);
        self
    }
}

tokio::task_local! {
    static SCOPE: CallScope;
}

/// The call a handler task is running, inherited by the calls it makes.
#[derive(Clone)]
pub(crate) struct CallScope {
    pub(crate) cancel: CancellationToken,
    pub(crate) deadline: Option<Instant>,
    pub(crate) answer: u64,
}

pub(crate) fn current_scope() -> Option<CallScope> {
    SCOPE.try_with(Clone::clone).ok()
}

struct State {
    exports: Exports,
    imports: Imports,
    questions: Questions,
    answers: Answers,
    /// Ids the peer revoked (imports) and ids we revoked (exports).
    revoked_imports: RevokedIds,
    revoked_exports: RevokedIds,
    /// Set once the session has ended; new calls fail with it.
    ended: Option<Status>,
    /// Set when either side sent goaway: no new calls are started.
    draining: Option<Status>,
    /// The status of the peer's goaway, which the end of the session reports.
    peer_goaway: Option<Status>,
    pings: HashMap<u64, (Instant, oneshot::Sender<Duration>)>,
    next_ping: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    sender: FrameSender,
    codec: Codec,
    config: SessionConfig,
    registry: Registry,
    attestation: Arc<Attestation>,
    events: broadcast::Sender<Event>,
    counters: Counters,
    closed: CancellationToken,
    runtime: Arc<dyn Object>,
    /// Dropped import handles, processed by the release task.
    releases: mpsc::UnboundedSender<(u64, u64)>,
    /// Largest frame the peer announced it accepts; unlimited until its hello.
    peer_max_frame: AtomicUsize,
    /// Frames waiting for room in the transport queue (see `send_nowait`).
    overflow: Arc<Overflow>,
    /// Notified whenever a question or an answer leaves its table.
    settled: Notify,
}

/// Frames sent from code that cannot wait, which found the transport queue
/// full: each waits in a task of its own. The reader stops reading while more
/// than [`MAX_OVERFLOW`] wait, so a peer that keeps sending without reading
/// what it is sent slows down instead of making this side buffer without bound.
#[derive(Default)]
struct Overflow {
    waiting: AtomicUsize,
    drained: Notify,
}

/// Overflowing frames the reader tolerates before it stops reading.
const MAX_OVERFLOW: usize = 64;

/// Longest `goaway` message sent: decoder errors may quote the peer's input.
const MAX_GOAWAY_MESSAGE: usize = 256;

/// One connection's capability session. Cheap to clone; the connection
/// stays open while the peer keeps it open, even with no handle left here.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("attestation", &self.shared.attestation)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct BootstrapArgs {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

impl Session {
    /// Starts a session over `transport`, serving `registry` to the peer.
    /// Sends `hello` at once and starts the reader task.
    pub fn new(transport: Transport, registry: Registry, config: SessionConfig) -> Session {
        let Transport {
            sender,
            receiver,
            attestation,
        } = transport;
        let (events, _) = broadcast::channel(config.event_buffer.max(1));
        let limits = config.limits.clone();
        let (releases, mut released) = mpsc::unbounded_channel();
        let shared = Arc::new_cyclic(|me: &Weak<Shared>| Shared {
            state: Mutex::new(State {
                exports: Exports::default(),
                imports: Imports::default(),
                questions: Questions::default(),
                answers: Answers::default(),
                revoked_imports: RevokedIds::new(limits.max_revoked_remembered),
                revoked_exports: RevokedIds::new(limits.max_revoked_remembered),
                ended: None,
                draining: None,
                peer_goaway: None,
                pings: HashMap::new(),
                next_ping: 0,
            }),
            codec: config.codec,
            runtime: runtime::runtime_object(me.clone()),
            config,
            registry: registry.clone(),
            attestation: Arc::new(attestation),
            events,
            counters: Counters::default(),
            closed: CancellationToken::new(),
            sender,
            releases,
            peer_max_frame: AtomicUsize::new(usize::MAX),
            overflow: Arc::default(),
            settled: Notify::new(),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some((id, serial)) = released.recv().await {
                match weak.upgrade() {
                    Some(shared) => shared.drop_import(id, serial),
                    None => return,
                }
            }
        });
        let sink: Weak<dyn RevocationSink> = Arc::downgrade(&shared) as Weak<dyn RevocationSink>;
        registry.subscribe(sink);
        let hello = Hello {
            limits: HelloLimits {
                max_frame_bytes: u32::try_from(shared.sender.max_frame_bytes()).ok(),
                max_caps: u32::try_from(limits.max_exports).ok(),
                max_in_flight: u32::try_from(limits.max_in_flight_in).ok(),
                max_depth: u32::try_from(limits.max_depth).ok(),
            },
            peer: shared.config.peer_name.clone(),
            ..Hello::new()
        };
        shared.send_nowait(Frame::Hello(hello));
        // The session sends `goaway` before closing on a framing violation.
        let mut receiver = receiver;
        receiver.close_on_framing_error(false);
        tokio::spawn(read_loop(shared.clone(), receiver));
        Session { shared }
    }

    /// Asks the peer for the capability served as `name`, optionally at an
    /// exact `version`.
    pub async fn bootstrap(&self, name: &str, version: Option<&str>) -> Result<Capability, Status> {
        let args = Value::new(&serde_json::json!({ "name": name, "version": version }))?;
        let value = self.main().call("bootstrap", args).await?;
        value.cap(0)
    }

    /// The peer's bootstrap object (capability 0).
    fn main(&self) -> Capability {
        self.shared.remote_handle(BOOTSTRAP_CAP)
    }

    /// The peer's runtime capability (capability 1): `ping`, `names`, `stats`.
    pub fn runtime(&self) -> Capability {
        self.shared.remote_handle(RUNTIME_CAP)
    }

    /// Sends a ping and waits for the pong; the round trip also shows in [`stats`](Self::stats).
    pub async fn ping(&self) -> Result<Duration, Status> {
        let (nonce, rx) = {
            let mut st = self.shared.lock();
            if let Some(s) = &st.ended {
                return Err(s.clone());
            }
            st.next_ping += 1;
            let (tx, rx) = oneshot::channel();
            let nonce = st.next_ping;
            st.pings.insert(nonce, (Instant::now(), tx));
            (nonce, rx)
        };
        self.shared.send(Frame::Ping(Ping { nonce })).await?;
        rx.await
            .map_err(|_| Status::unavailable("the connection closed before the pong"))
    }

    /// Counters and table sizes.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Subscribes to this session's events.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// What the transport knows about the peer.
    pub fn attestation(&self) -> &Attestation {
        &self.shared.attestation
    }

    /// Closes gracefully: tells the peer (`goaway`), stops making calls, lets
    /// the calls in flight both ways finish for up to the configured grace
    /// period, fails what is left with `unavailable`, and closes the transport.
    pub async fn close(&self) {
        let shared = &self.shared;
        let grace = shared.config.close_grace;
        {
            let mut st = shared.lock();
            if st.ended.is_some() {
                return;
            }
            st.draining
                .get_or_insert(Status::unavailable("the session is closing"));
        }
        let deadline = Instant::now() + grace;
        let goaway = Goaway {
            status: Status::new(Code::Ok, "closing"),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        // Bounded like the rest: a peer that does not read cannot hold the close.
        let _ = tokio::time::timeout_at(deadline, shared.send(Frame::Goaway(goaway))).await;
        loop {
            let settled = shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let st = shared.lock();
                if st.ended.is_some() || (st.answers.len() == 0 && st.questions.len() == 0) {
                    break;
                }
            }
            tokio::select! {
                _ = settled => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.closed.cancelled() => break,
            }
        }
        shared.shutdown(Status::unavailable("the session was closed"));
    }

    /// Resolves when the session has ended, with the reason.
    pub async fn closed(&self) -> Status {
        self.shared.closed.cancelled().await;
        self.shared
            .lock()
            .ended
            .clone()
            .unwrap_or_else(|| Status::unavailable("closed"))
    }
}

/// The caller's end of one question: sends `cancel` if the caller stops
/// waiting before the answer arrived, and records the outcome exactly once
/// (a dropped call future counts as `cancelled`).
struct QuestionGuard {
    shared: Arc<Shared>,
    id: u64,
    cap: u64,
    method: String,
    started: Instant,
    /// The question is in the table and the peer may be running it.
    pending: bool,
    /// The outcome is in the counters and was emitted.
    recorded: bool,
}

impl QuestionGuard {
    fn record(&mut self, outcome: Code) {
        self.recorded = true;
        self.shared.counters.call_done(outcome);
        self.shared.emit(Event::Call {
            direction: Direction::Outgoing,
            cap: self.cap,
            method: std::mem::take(&mut self.method),
            id: self.id,
            duration: self.started.elapsed(),
            outcome,
        });
    }
}

impl Drop for QuestionGuard {
    fn drop(&mut self) {
        if self.pending && self.shared.lock().questions.remove(self.id).is_some() {
            self.shared
                .send_nowait(Frame::Cancel(Cancel { id: self.id }));
            self.shared.settled.notify_waiters();
        }
        if !self.recorded {
            self.record(Code::Cancelled);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and never leave a table half-changed, so a
        // panic elsewhere while the lock was held does not poison the session.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        let st = self.lock();
        stats.exports = st.exports.len();
        stats.imports = st.imports.len();
        stats.questions = st.questions.len();
        stats.answers = st.answers.len();
        stats
    }

    fn emit(&self, event: Event) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    /// The largest frame this side may send: its own limit, or the peer's
    /// announced one if smaller ([S2]).
    fn frame_limit(&self) -> usize {
        self.sender
            .max_frame_bytes()
            .min(self.peer_max_frame.load(Ordering::Relaxed))
    }

    /// Encodes `frame`, refusing one over the frame limit: it is never sent.
    fn encode(&self, frame: &Frame) -> Result<Bytes, Status> {
        let bytes = codec::encode(frame, self.codec)
            .map(Bytes::from)
            .map_err(|e| {
                Status::new(Code::Internal, format!("cannot encode {}: {e}", frame.op()))
            })?;
        let limit = self.frame_limit();
        if bytes.len() > limit {
            return Err(Status::limit(Reason::MAX_FRAME_BYTES, limit as u64)
                .with_details(serde_json::json!({ "limit": limit, "frame_bytes": bytes.len() })));
        }
        Ok(bytes)
    }

    fn count_out(&self, len: usize) {
        self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    async fn send(&self, frame: Frame) -> Result<(), Status> {
        let bytes = self.encode(&frame)?;
        let len = bytes.len();
        self.sender.send(bytes).await.map_err(|e| match e {
            // `encode` checked the size already; kept for a transport that disagrees.
            TransportError::Framing(fe) => {
                Status::limit(Reason::MAX_FRAME_BYTES, self.frame_limit() as u64)
                    .with_details(serde_json::json!({ "error": fe.to_string() }))
            }
            other => Status::unavailable(format!("cannot send: {other}")),
        })?;
        self.count_out(len);
        Ok(())
    }

    /// Sends from code that cannot wait (drops, the reader). Frames sent this
    /// way may overtake queued ones only when the queue is full; every such
    /// frame (release, cancel, pong, revoked, an error answer) is
    /// order-independent. A frame that cannot be sent at all is dropped.
    fn send_nowait(&self, frame: Frame) {
        let bytes = match self.encode(&frame) {
            Ok(bytes) => bytes,
            Err(status) => {
                tracing::warn!(op = frame.op(), %status, "dropping a frame that cannot be sent");
                return;
            }
        };
        let len = bytes.len();
        match self.sender.try_send(bytes) {
            Ok(None) => self.count_out(len),
            Err(_) => {}
            Ok(Some(bytes)) => {
                // Revocations can come from a thread outside the runtime.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::warn!(
                        op = frame.op(),
                        "queue full outside the runtime; frame dropped"
                    );
                    return;
                };
                self.count_out(len);
                let sender = self.sender.clone();
                let overflow = self.overflow.clone();
                overflow.waiting.fetch_add(1, Ordering::AcqRel);
                runtime.spawn(async move {
                    let _ = sender.send(bytes).await;
                    overflow.waiting.fetch_sub(1, Ordering::AcqRel);
                    overflow.drained.notify_waiters();
                });
            }
        }
    }

    /// Waits while too many frames overflowed the transport queue (see
    /// [`Overflow`]); the reader calls it between frames.
    async fn backpressure(&self) {
        loop {
            let drained = self.overflow.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.overflow.waiting.load(Ordering::Acquire) <= MAX_OVERFLOW {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return,
            }
        }
    }

    fn remote_handle(self: &Arc<Self>, id: u64) -> Capability {
        let me = Arc::downgrade(self);
        let handle = self.lock().imports.introduce(id, |serial| {
            Arc::new(RemoteCap {
                session: me,
                id,
                serial,
            })
        });
        Capability {
            kind: CapKind::Remote(handle),
        }
    }

    pub(crate) fn queue_release(&self, id: u64, serial: u64) {
        let _ = self.releases.send((id, serial));
    }

    fn drop_import(self: &Arc<Self>, id: u64, serial: u64) {
        let released = {
            let mut st = self.lock();
            let n = st.imports.dropped(id, serial);
            if st.ended.is_some() || id == BOOTSTRAP_CAP || id == RUNTIME_CAP {
                return;
            }
            n
        };
        if let Some(n) = released {
            self.send_nowait(Frame::Release(Release { cap: id, n }));
        }
    }

    /// Turns the capabilities of an outgoing value into descriptors, exporting
    /// local objects. All or nothing: if one cannot be exported (the export
    /// limit), the introductions counted for the others are taken back.
    fn describe_caps(
        self: &Arc<Self>,
        st: &mut State,
        caps: &[Capability],
    ) -> Result<Vec<CapDescriptor>, Status> {
        let mut described = Vec::with_capacity(caps.len());
        for cap in caps {
            match self.describe_cap(st, cap) {
                Ok(d) => described.push(d),
                Err(status) => {
                    st.exports.unsend(&described);
                    return Err(status);
                }
            }
        }
        Ok(described)
    }

    fn describe_cap(
        self: &Arc<Self>,
        st: &mut State,
        cap: &Capability,
    ) -> Result<CapDescriptor, Status> {
        let max = self.config.limits.max_exports;
        match &cap.kind {
            CapKind::Local(object) => st
                .exports
                .export(object, None, max)
                .map(CapDescriptor::Export),
            CapKind::Served { object, generation } => st
                .exports
                .export(object, Some(*generation), max)
                .map(CapDescriptor::Export),
            CapKind::Remote(r) if std::ptr::eq(r.session.as_ptr(), Arc::as_ptr(self)) => {
                Ok(CapDescriptor::Import(r.id))
            }
            CapKind::Remote(_) => {
                let forward: Arc<dyn Object> = Arc::new(cap.clone());
                st.exports
                    .export(&forward, None, max)
                    .map(CapDescriptor::Export)
            }
        }
    }

    /// Turns the descriptors of an incoming value into capabilities.
    fn resolve_caps(
        self: &Arc<Self>,
        st: &mut State,
        descriptors: Vec<CapDescriptor>,
    ) -> Result<Vec<Capability>, Status> {
        let me = Arc::downgrade(self);
        descriptors
            .into_iter()
            .map(|d| match d {
                CapDescriptor::Export(id) if id == BOOTSTRAP_CAP || id == RUNTIME_CAP => {
                    Err(Status::protocol_violation(format!(
                        "capability {id} is reserved and cannot be introduced"
                    )))
                }
                CapDescriptor::Export(id) => {
                    let me = me.clone();
                    let handle = st.imports.introduce(id, |serial| {
                        Arc::new(RemoteCap {
                            session: me,
                            id,
                            serial,
                        })
                    });
                    Ok(Capability {
                        kind: CapKind::Remote(handle),
                    })
                }
                CapDescriptor::Import(id) => match st.exports.get(id) {
                    Some(e) => Ok(Capability::from_arc(e.object.clone())),
                    None if st.exports.is_revoked(id) || st.revoked_exports.contains(id) => {
                        Err(Status::revoked(format!("capability {id}")))
                    }
                    None => Err(Status::new(
                        Code::NotFound,
                        format!("capability {id} is not exported"),
                    )),
                },
                CapDescriptor::Answer { .. } => Err(Status::new(
                    Code::Unimplemented,
                    "promised answers as arguments are not supported yet",
                )),
            })
            .collect()
    }

    /// Makes a call on the peer's capability and waits for its answer.
    pub(crate) async fn call(
        self: &Arc<Self>,
        remote: &Arc<RemoteCap>,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        scope: Option<CallScope>,
    ) -> Result<Value, Status> {
        let started = Instant::now();
        let cap = remote.id;
        let payload = args
            .payload
            .transcode(self.codec)
            .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        let (id, reply, caps) = {
            let mut st = self.lock();
            if let Some(s) = st.ended.as_ref().or(st.draining.as_ref()) {
                return Err(Status::unavailable(format!(
                    "cannot call `{method}`: {}",
                    s.message
                )));
            }
            if st.revoked_imports.contains(cap) {
                return Err(Status::revoked(format!("capability {cap}")));
            }
            let max = self.config.limits.max_in_flight_out;
            if st.questions.len() >= max {
                return Err(Status::limit(Reason::MAX_CONCURRENT_CALLS, max as u64));
            }
            let caps = self.describe_caps(&mut st, &args.caps)?;
            let (id, reply) = st.questions.insert(cap);
            (id, reply, caps)
        };
        let mut guard = QuestionGuard {
            shared: self.clone(),
            id,
            cap,
            method: method.to_owned(),
            started,
            pending: true,
            recorded: false,
        };
        let deadline_ms = deadline.map(|d| {
            let left = d.saturating_duration_since(started);
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let frame = Frame::Call(Call {
            id,
            target: Target::Cap(cap),
            method: method.to_owned(),
            args: payload,
            caps: caps.clone(),
            parent: scope.as_ref().map(|s| s.answer),
            deadline_ms,
            keep: false,
            stream: None,
        });
        let span = tracing::debug_span!("call", cap, method, id);
        let outcome = async {
            if let Err(status) = self.send(frame).await {
                // Never sent (too big, or the connection is gone): there is
                // nothing to cancel, and the introductions never left.
                let mut st = self.lock();
                st.questions.remove(id);
                st.exports.unsend(&caps);
                drop(st);
                guard.pending = false;
                self.settled.notify_waiters();
                return Err(status);
            }
            let parent = scope.map(|s| s.cancel);
            tokio::select! {
                r = reply => {
                    guard.pending = false;
                    r.unwrap_or_else(|_| Err(Status::unavailable("the connection closed")))
                }
                _ = sleep_until(deadline) => Err(Status::new(
                    Code::DeadlineExceeded,
                    format!("`{method}` did not answer before its deadline"),
                )),
                _ = cancelled(parent) => Err(Status::new(Code::Cancelled, "the parent call was cancelled")),
            }
        }
        .instrument(span)
        .await;
        guard.record(outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok));
        // Still pending after a deadline or a cancelled parent: this sends `cancel`.
        drop(guard);
        outcome
    }

    /// Handles one decoded frame. An `Err` is a connection-fatal violation.
    fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Status> {
        match frame {
            Frame::Hello(_) => Err(Status::protocol_violation("a second hello")),
            Frame::Call(call) => self.handle_call(call),
            Frame::Result(result) => {
                self.handle_result(result);
                Ok(())
            }
            Frame::Cancel(Cancel { id }) => {
                self.lock().answers.stop(
                    id,
                    Status::new(Code::Cancelled, "the caller cancelled the call"),
                );
                Ok(())
            }
            Frame::Finish(_) => Ok(()),
            Frame::Release(Release { cap, n }) => self.lock().exports.release(cap, n),
            Frame::Revoked(Revoked { caps }) => {
                self.handle_revoked(caps);
                Ok(())
            }
            Frame::Goaway(Goaway { status, .. }) => {
                tracing::debug!(%status, "peer sent goaway");
                let mut st = self.lock();
                st.draining.get_or_insert(Status::unavailable(format!(
                    "the peer is closing the connection: {status}"
                )));
                st.peer_goaway.get_or_insert(status);
                Ok(())
            }
            Frame::Ping(Ping { nonce }) => {
                self.send_nowait(Frame::Pong(Pong { nonce }));
                Ok(())
            }
            Frame::Pong(Pong { nonce }) => {
                if let Some((sent, tx)) = self.lock().pings.remove(&nonce) {
                    let rtt = sent.elapsed();
                    let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
                    self.counters.last_rtt.store(us + 1, Ordering::Relaxed);
                    let _ = tx.send(rtt);
                }
                Ok(())
            }
            // This side never makes stream calls, so no id is a stream
            // question ([S20]); credit for an unknown stream is ignored.
            Frame::Credit(_) => Ok(()),
            other @ (Frame::Item(_) | Frame::End(_) | Frame::StreamError(_)) => {
                Err(Status::protocol_violation(format!(
                    "`{}` for a question that is not a stream",
                    other.op()
                )))
            }
            other => Err(Status::protocol_violation(format!(
                "unexpected `{}` frame",
                other.op()
            ))),
        }
    }

    fn handle_result(self: &Arc<Self>, result: CallResult) {
        let max_depth = self.config.limits.max_depth;
        let mut st = self.lock();
        // A result for a question we stopped waiting on (cancelled, timed out) is dropped.
        let Some(question) = st.questions.remove(result.id) else {
            return;
        };
        let outcome = match result.outcome {
            // The caps are imported even when the value is refused: dropping
            // them then releases the introductions the peer counted.
            Outcome::Ok { value, caps } => self.resolve_caps(&mut st, caps).and_then(|caps| {
                if value.exceeds_depth(max_depth) {
                    return Err(Status::limit(Reason::MAX_VALUE_DEPTH, max_depth as u64));
                }
                Ok(Value {
                    payload: value,
                    caps,
                })
            }),
            Outcome::Err(status) => Err(status),
        };
        drop(st);
        self.settled.notify_waiters();
        let _ = question.reply.send(outcome);
    }

    fn handle_revoked(self: &Arc<Self>, mut caps: Vec<u64>) {
        // Ids 0 and 1 cannot be revoked.
        caps.retain(|id| *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP);
        let (failed, releases) = {
            let mut st = self.lock();
            let mut releases = Vec::new();
            for id in &caps {
                st.revoked_imports.insert(*id);
                // Hand back every introduction now ([S23]): the exporter keeps
                // the revoked entry until its count reaches 0. The live handle,
                // when dropped, finds no entry and releases nothing more.
                if let Some(n) = st.imports.remove(*id) {
                    releases.push(Release { cap: *id, n });
                }
            }
            (st.questions.take_for_caps(&caps), releases)
        };
        for release in releases {
            self.send_nowait(Frame::Release(release));
        }
        if !failed.is_empty() {
            self.settled.notify_waiters();
        }
        for q in failed {
            let _ = q
                .reply
                .send(Err(Status::revoked(format!("capability {}", q.cap))));
        }
        self.emit(Event::Revoke {
            direction: Direction::Incoming,
            caps,
        });
    }

    /// Answers a call with an error at once, without running anything.
    fn reject(self: &Arc<Self>, id: u64, status: Status) {
        self.counters.call_done(status.code);
        self.send_nowait(Frame::Result(CallResult {
            id,
            outcome: Outcome::Err(status),
        }));
    }

    /// Starts answering a call. An `Err` is a connection-fatal violation;
    /// everything else answers the call.
    fn handle_call(self: &Arc<Self>, call: Call) -> Result<(), Status> {
        let Call {
            id,
            target,
            method,
            args,
            caps,
            deadline_ms,
            ..
        } = call;
        let cap = match target {
            Target::Cap(cap) => cap,
            Target::Answer { .. } => {
                self.reject(
                    id,
                    Status::new(
                        Code::Unimplemented,
                        "promise pipelining is not supported by this peer yet",
                    ),
                );
                return Ok(());
            }
        };
        let limits = &self.config.limits;
        if args.exceeds_depth(limits.max_depth) {
            self.reject(
                id,
                Status::limit(Reason::MAX_VALUE_DEPTH, limits.max_depth as u64),
            );
            return Ok(());
        }
        let started = Instant::now();
        let deadline = deadline_ms.map(|ms| started + Duration::from_millis(ms));
        let (object, cancel, args) = {
            let mut st = self.lock();
            if st.answers.contains(id) {
                // Reusing a live question id ([S12]); answering it would cross
                // two calls' answers, so the connection ends instead.
                return Err(Status::protocol_violation(format!(
                    "call {id} reuses the id of a call still running"
                )));
            }
            if let Some(s) = &st.draining {
                let status = Status::unavailable(s.message.clone());
                drop(st);
                self.reject(id, status);
                return Ok(());
            }
            if st.answers.len() >= limits.max_in_flight_in {
                drop(st);
                self.reject(
                    id,
                    Status::limit(Reason::MAX_CONCURRENT_CALLS, limits.max_in_flight_in as u64),
                );
                return Ok(());
            }
            let object: Option<Arc<dyn Object>> = match cap {
                BOOTSTRAP_CAP => None,
                RUNTIME_CAP => Some(self.runtime.clone()),
                _ => match st.exports.get(cap) {
                    Some(e) => Some(e.object.clone()),
                    None => {
                        let status = if st.exports.is_revoked(cap)
                            || st.revoked_exports.contains(cap)
                        {
                            Status::revoked(format!("capability {cap}"))
                        } else {
                            Status::new(Code::NotFound, format!("capability {cap} is not exported"))
                        };
                        drop(st);
                        self.reject(id, status);
                        return Ok(());
                    }
                },
            };
            let caps = match self.resolve_caps(&mut st, caps) {
                Ok(caps) => caps,
                Err(status) => {
                    drop(st);
                    self.reject(id, status);
                    return Ok(());
                }
            };
            let cancel = st.answers.insert(id, cap);
            (
                object,
                cancel,
                Value {
                    payload: args,
                    caps,
                },
            )
        };
        let shared = self.clone();
        let span = tracing::debug_span!("answer", cap, method = %method, id);
        tokio::spawn(
            async move {
                let result = match object {
                    None => shared.run_bootstrap(&method, args, deadline, cancel).await,
                    Some(object) => {
                        shared
                            .run_handler(object, id, &method, args, deadline, cancel)
                            .await
                    }
                };
                shared
                    .finish_answer(id, cap, &method, started, result)
                    .await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Runs a handler with its cancellation, deadline and call scope.
    /// `None` means it was stopped; the answer entry says why.
    async fn run_handler(
        self: &Arc<Self>,
        object: Arc<dyn Object>,
        id: u64,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> Option<Result<Value, Status>> {
        let idempotent = object.is_idempotent(method);
        let ctx = CallContext {
            method: method.into(),
            call_id: Some(id),
            deadline,
            cancel: cancel.clone(),
            attestation: self.attestation.clone(),
        };
        let scope = CallScope {
            cancel: cancel.clone(),
            deadline,
            answer: id,
        };
        let run = SCOPE.scope(scope, object.call(method, args, ctx));
        let stop_at = if idempotent {
            None
        } else {
            deadline.map(|d| d + self.config.deadline_grace)
        };
        supervise(run, method, stop_at, &cancel).await
    }

    async fn run_bootstrap(
        self: &Arc<Self>,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> Option<Result<Value, Status>> {
        if method != "bootstrap" {
            return Some(Err(Status::new(
                Code::Unimplemented,
                format!("the bootstrap object has no method `{method}`"),
            )));
        }
        // The policy is application code: it is stopped like a handler.
        let stop_at = deadline.map(|d| d + self.config.deadline_grace);
        supervise(self.bootstrap(args), method, stop_at, &cancel).await
    }

    async fn bootstrap(self: &Arc<Self>, args: Value) -> Result<Value, Status> {
        let BootstrapArgs { name, version } = args.decode()?;
        let result = async {
            let served = self
                .registry
                .lookup(&name)
                .ok_or_else(|| Status::new(Code::NotFound, format!("`{name}` is not served")))?;
            if let Some(v) = &version {
                if *v != served.version {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        format!("`{name}` is served at version {}, not {v}", served.version),
                    )
                    .with_reason(Reason::VERSION_MISMATCH));
                }
            }
            if let Some(policy) = &self.config.policy {
                let request = BootstrapRequest {
                    attestation: self.attestation.clone(),
                    name: name.clone(),
                    version: version.clone(),
                };
                policy::check(policy.as_ref(), request).await?;
            }
            Ok(served)
        }
        .await;
        self.emit(Event::Bootstrap {
            name: name.clone(),
            outcome: result.as_ref().map_or_else(|s| s.code, |_| Code::Ok),
        });
        let served = result?;
        // Exported with its registry generation, so unserving revokes it here too.
        Ok(Value::capability(Capability {
            kind: CapKind::Served {
                object: served.object,
                generation: served.generation,
            },
        }))
    }

    async fn finish_answer(
        self: &Arc<Self>,
        id: u64,
        cap: u64,
        method: &str,
        started: Instant,
        result: Option<Result<Value, Status>>,
    ) {
        let (outcome, sent_caps, mut code) = {
            let mut st = self.lock();
            let Some(stopped) = st.answers.stopped(id) else {
                return;
            };
            let result = match result {
                Some(r) => r,
                None => Err(stopped
                    .unwrap_or_else(|| Status::new(Code::Cancelled, "the call was cancelled"))),
            };
            if st.ended.is_some() {
                st.answers.remove(id);
                return;
            }
            match result.and_then(|value| self.describe_result(&mut st, &value)) {
                Ok((value, caps)) => (
                    Outcome::Ok {
                        value,
                        caps: caps.clone(),
                    },
                    caps,
                    Code::Ok,
                ),
                Err(status) => {
                    let code = status.code;
                    (Outcome::Err(status), Vec::new(), code)
                }
            }
        };
        if let Err(status) = self.send(Frame::Result(CallResult { id, outcome })).await {
            // Typically a result over a frame limit ([S2]): the caller gets
            // that error instead, and the introductions it carried are taken back.
            self.lock().exports.unsend(&sent_caps);
            code = status.code;
            self.send_nowait(Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            }));
        }
        // Only now: `close` waits for this entry, so the result goes out first.
        self.lock().answers.remove(id);
        self.settled.notify_waiters();
        self.counters.call_done(code);
        self.emit(Event::Call {
            direction: Direction::Incoming,
            cap,
            method: method.to_owned(),
            id,
            duration: started.elapsed(),
            outcome: code,
        });
    }

    fn describe_result(
        self: &Arc<Self>,
        st: &mut State,
        value: &Value,
    ) -> Result<(Payload, Vec<CapDescriptor>), Status> {
        let payload = value
            .payload
            .transcode(self.codec)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the result: {e}")))?;
        Ok((payload, self.describe_caps(st, &value.caps)?))
    }

    /// Ends the session: pending questions fail with `unavailable` (§7.1),
    /// running handlers are stopped, the tables are cleared and the transport
    /// closed. `status` is what [`Session::closed`] reports.
    fn shutdown(self: &Arc<Self>, status: Status) {
        let questions = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            st.ended = Some(status.clone());
            st.answers.stop_all(&status);
            st.exports.clear();
            st.imports.clear();
            st.pings.clear();
            st.questions.drain()
        };
        let failed = if status.code == Code::Unavailable {
            status.clone()
        } else {
            Status::unavailable(format!("the connection closed: {status}"))
        };
        for q in questions {
            let _ = q.reply.send(Err(failed.clone()));
        }
        // Queued behind everything already sent (a goaway first of all); a
        // task, so that a full queue cannot lose the close.
        let sender = self.sender.clone();
        let reason = close_reason(&status);
        tokio::spawn(async move {
            let _ = sender.close(reason).await;
        });
        self.closed.cancel();
        self.settled.notify_waiters();
        self.emit(Event::Closed { status });
    }

    /// Tells the peer why the connection ends (`goaway`, grace 0), then ends it.
    async fn fail(self: &Arc<Self>, status: Status) {
        tracing::warn!(%status, "closing the connection");
        self.emit(Event::Error {
            status: status.clone(),
        });
        let mut told = status.clone();
        if told.message.len() > MAX_GOAWAY_MESSAGE {
            let mut end = MAX_GOAWAY_MESSAGE;
            while !told.message.is_char_boundary(end) {
                end -= 1;
            }
            told.message.truncate(end);
        }
        let goaway = Frame::Goaway(Goaway {
            status: told,
            grace_ms: 0,
        });
        // A peer that does not read cannot keep the session from ending.
        let _ = tokio::time::timeout(self.config.close_grace, self.send(goaway)).await;
        self.shutdown(status);
    }
}

/// The transport close that goes with a session's end: WebSocket peers see
/// 1002 or 1009 for the errors of §7; the `goaway` before it says the rest.
fn close_reason(status: &Status) -> CloseReason {
    match &status.reason {
        Some(r) if *r == Reason::PROTOCOL_VIOLATION => {
            CloseReason::new(CloseReason::PROTOCOL_ERROR, "protocol violation")
        }
        Some(r) if *r == Reason::MAX_FRAME_BYTES => {
            CloseReason::new(CloseReason::TOO_BIG, "frame too large")
        }
        _ => CloseReason::normal(),
    }
}

impl RevocationSink for Shared {
    fn revoke_generation(&self, generation: u64) {
        let ids = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            let ids = st.exports.revoke_generation(generation);
            for id in &ids {
                st.revoked_exports.insert(*id);
            }
            st.answers
                .stop_for_caps(&ids, &Status::revoked("the capability"));
            ids
        };
        if ids.is_empty() {
            return;
        }
        self.send_nowait(Frame::Revoked(Revoked { caps: ids.clone() }));
        self.emit(Event::Revoke {
            direction: Direction::Outgoing,
            caps: ids,
        });
    }
}

/// Runs an answer's future until it ends, is cancelled, or passes `stop_at`.
/// `None` means it was cancelled; the answer entry says why.
async fn supervise(
    run: impl std::future::Future<Output = Result<Value, Status>>,
    method: &str,
    stop_at: Option<Instant>,
    cancel: &CancellationToken,
) -> Option<Result<Value, Status>> {
    tokio::pin!(run);
    // `run` outlives the select so that its token is cancelled before it is
    // dropped: a handler (and the calls it made) being torn down by its
    // deadline sees `ctx.is_cancelled()` like one stopped by a cancel.
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = sleep_until(stop_at) => Some(Err(Status::new(
            Code::DeadlineExceeded,
            format!("`{method}` ran past its deadline"),
        ))),
        r = &mut run => return Some(r),
    };
    cancel.cancel();
    outcome
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn cancelled(token: Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

fn transport_status(error: TransportError, max_frame_bytes: usize) -> Status {
    match error {
        TransportError::Framing(capwire_proto::FramingError::TooLarge { .. }) => {
            Status::limit(Reason::MAX_FRAME_BYTES, max_frame_bytes as u64)
        }
        TransportError::ClosedByPeer(reason) => Status::unavailable(format!(
            "the peer closed the connection: {} {}",
            reason.code, reason.message
        )),
        other => Status::unavailable(format!("the connection failed: {other}")),
    }
}

async fn read_loop(shared: Arc<Shared>, mut receiver: FrameReceiver) {
    let mut got_hello = false;
    let end = loop {
        let next = tokio::select! {
            r = receiver.recv() => r,
            _ = shared.closed.cancelled() => return,
        };
        let bytes = match next {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break Status::unavailable("the peer closed the connection"),
            Err(e) => {
                let status = transport_status(e, shared.sender.max_frame_bytes());
                if status.code == Code::ResourceExhausted {
                    shared.fail(status).await;
                    return;
                }
                break status;
            }
        };
        shared.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let frame = match codec::decode(&bytes) {
            Ok((frame, _)) => frame,
            Err(e) => {
                shared.fail(Status::protocol_violation(e.to_string())).await;
                return;
            }
        };
        if !got_hello {
            match frame {
                Frame::Hello(h) if h.v == PROTOCOL_VERSION => {
                    got_hello = true;
                    if let Some(max) = h.limits.max_frame_bytes {
                        let max = usize::try_from(max).unwrap_or(usize::MAX);
                        shared.peer_max_frame.store(max, Ordering::Relaxed);
                    }
                    continue;
                }
                Frame::Hello(h) => {
                    let status = Status::new(
                        Code::FailedPrecondition,
                        format!("protocol version {} is not supported; this peer speaks {PROTOCOL_VERSION}", h.v),
                    )
                    .with_reason(Reason::VERSION_MISMATCH);
                    shared.fail(status).await;
                    return;
                }
                other => {
                    let status =
                        Status::protocol_violation(format!("`{}` frame before hello", other.op()));
                    shared.fail(status).await;
                    return;
                }
            }
        }
        if let Err(status) = shared.handle(frame) {
            shared.fail(status).await;
            return;
        }
        shared.backpressure().await;
    };
    // A connection the peer announced it would close ends with its reason.
    let goaway = shared.lock().peer_goaway.clone();
    let end = match goaway {
        Some(g) if end.code == Code::Unavailable => {
            Status::unavailable(format!("the peer closed the connection: {g}"))
        }
        _ => end,
    };
    shared.shutdown(end);
}
