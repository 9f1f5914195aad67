//! The Session: one connection, either side, over any transport.
//!
//! A session owns the four tables of DESIGN.md §3 — exports, imports,
//! questions, answers — and a reader task that turns incoming frames into
//! table operations. Locks are held only for table lookups, never across
//! `.await` or I/O; handlers run as their own tasks.

mod answers;
mod exports;
mod flow;
mod id_map;
mod imports;
mod pipeline;
mod plain;
mod questions;
mod runtime;
mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use capwire_proto::{
    codec, Call, CallResult, Cancel, CapDescriptor, Code, Codec, Finish, Frame, Goaway, Hello,
    HelloLimits, Outcome, PathSeg, Payload, Ping, Pong, Reason, Release, Revoked, Status,
    StreamEnd, StreamError, StreamItem, Target, BOOTSTRAP_CAP, PROTOCOL_VERSION, RUNTIME_CAP,
};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attestation::Attestation;
use crate::capability::{CapKind, Capability, RemoteCap};
use crate::events::{Counters, Direction, Event, Started, Stats};
use crate::object::{CallContext, Object};
use crate::policy::{self, BootstrapRequest, Policy};
use crate::promise::{KeptQuestion, MethodName, Sent};
use crate::registry::{Registry, RevocationSink};
use crate::transport::{CloseReason, FrameReceiver, FrameSender, Transport, TransportError};
use crate::value::Value;

use answers::{AnswerKind, Answers, Pipeline};
use exports::Exports;
use flow::Credit;
use imports::{Imports, RevokedIds};
pub(crate) use pipeline::AnswerRef;
pub(crate) use pipeline::Failing;
use pipeline::{object_of, Queued};
pub(crate) use plain::PlainCall;
use questions::{Meta, Questions, Reply};
pub(crate) use streams::RemoteItems;

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
    /// Stream answers open to the peer at once. Default 256 (`max_open_streams`).
    pub max_open_streams: usize,
    /// Calls and promises from the peer waiting for a kept answer to settle.
    /// Default 1024 (`max_pending_pipelined`).
    pub max_pending_pipelined: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_exports: 1024,
            max_in_flight_in: 1024,
            max_in_flight_out: 1024,
            max_depth: 64,
            max_revoked_remembered: 4096,
            max_open_streams: 256,
            max_pending_pipelined: 1024,
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
    /// Items a stream call grants up front, and the credit batch (half of
    /// it) given back as they are consumed. Default 32.
    pub stream_window: u32,
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
            stream_window: crate::stream::DEFAULT_WINDOW,
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
    /// The peer's method names, shared by the calls that use them.
    method_names: MethodNames,
}

/// The method names the peer calls, kept so that each call's context shares
/// one copy instead of making its own. Bounded in count and length: a peer
/// that sends many names, or long ones, gets a copy per call as before.
#[derive(Default)]
struct MethodNames(Vec<Arc<str>>);

/// Names kept per connection, and the longest name kept.
const MAX_METHOD_NAMES: usize = 64;
const MAX_METHOD_NAME_LEN: usize = 64;

impl MethodNames {
    fn intern(&mut self, name: String) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|n| ***n == *name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        if self.0.len() < MAX_METHOD_NAMES && name.len() <= MAX_METHOD_NAME_LEN {
            self.0.push(name.clone());
        }
        name
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    sender: FrameSender,
    codec: Codec,
    config: SessionConfig,
    registry: Registry,
    attestation: Arc<Attestation>,
    /// Made on the first subscription: its ring of `event_buffer` slots is
    /// allocated up front, which an idle connection nobody watches should
    /// not pay for.
    events: std::sync::OnceLock<broadcast::Sender<Event>>,
    counters: Counters,
    closed: CancellationToken,
    runtime: Arc<dyn Object>,
    /// Dropped handles, processed by the release task.
    releases: mpsc::UnboundedSender<Dropped>,
    /// Largest frame the peer announced it accepts; unlimited until its hello.
    peer_max_frame: AtomicUsize,
    /// Notified whenever a question or an answer leaves its table, while
    /// `settle_waiters` says someone (a `close`) waits for that.
    settled: Notify,
    settle_waiters: AtomicUsize,
    /// Set with `closed`, and cheaper to read: the reader checks it per frame.
    ended: AtomicBool,
}

/// Counts a waiter for [`Shared::notify_settled`] while it lives.
struct SettleWaiter<'a>(&'a Shared);

impl<'a> SettleWaiter<'a> {
    fn new(shared: &'a Shared) -> SettleWaiter<'a> {
        shared.settle_waiters.fetch_add(1, Ordering::SeqCst);
        SettleWaiter(shared)
    }
}

impl Drop for SettleWaiter<'_> {
    fn drop(&mut self) {
        self.0.settle_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handle dropped where the session lock may be held: the release task
/// does the table work and sends the frame.
pub(crate) enum Dropped {
    /// The last handle of an import: `release`.
    Import { id: u64, serial: u64 },
    /// The last handle of a kept question: `finish`.
    Kept(u64),
}

/// Frames waiting for room in the transport queue that the reader tolerates
/// before it stops reading.
const MAX_BACKLOG: usize = 64;

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
                method_names: MethodNames::default(),
            }),
            codec: config.codec,
            runtime: runtime::runtime_object(me.clone()),
            config,
            registry: registry.clone(),
            attestation: Arc::new(attestation),
            events: std::sync::OnceLock::new(),
            counters: Counters::default(),
            closed: CancellationToken::new(),
            sender,
            releases,
            peer_max_frame: AtomicUsize::new(usize::MAX),
            settled: Notify::new(),
            settle_waiters: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(dropped) = released.recv().await {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                match dropped {
                    Dropped::Import { id, serial } => shared.drop_import(id, serial),
                    Dropped::Kept(id) => shared.drop_kept(id),
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
        let size = self.shared.config.event_buffer.max(1);
        self.shared
            .events
            .get_or_init(|| broadcast::channel(size).0)
            .subscribe()
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
        // Counted before the tables are checked: a question or answer that
        // leaves its table after this sees the count and notifies.
        let _waiting = SettleWaiter::new(shared);
        loop {
            let settled = shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let st = shared.lock();
                if st.ended.is_some() || (st.answers.running() == 0 && st.questions.len() == 0) {
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and never leave a table half-changed, so a
        // panic elsewhere while the lock was held does not poison the session.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a `close` waiting for the tables to drain. Called after the
    /// table change, outside the lock; costs nothing while nobody closes.
    fn notify_settled(&self) {
        if self.settle_waiters.load(Ordering::SeqCst) > 0 {
            self.settled.notify_waiters();
        }
    }

    fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        let st = self.lock();
        stats.exports = st.exports.len();
        stats.imports = st.imports.len();
        stats.questions = st.questions.len();
        stats.answers = st.answers.len();
        stats.pipelined_waiting = st.answers.pending_pipelined();
        stats
    }

    fn emit(&self, event: Event) {
        self.emit_with(|| event);
    }

    /// Emits the event `make` builds, building it only if someone listens.
    fn emit_with(&self, make: impl FnOnce() -> Event) {
        if let Some(events) = self.events.get() {
            if events.receiver_count() > 0 {
                let _ = events.send(make());
            }
        }
    }

    /// True while someone subscribes to events.
    fn observed(&self) -> bool {
        self.events.get().is_some_and(|e| e.receiver_count() > 0)
    }

    /// When something observed begins (see [`Started`]).
    fn started(&self) -> Started {
        Started::now_if(self.observed())
    }

    /// The largest frame this side may send: its own limit, or the peer's
    /// announced one if smaller (\[S2\]).
    fn frame_limit(&self) -> usize {
        self.sender
            .max_frame_bytes()
            .min(self.peer_max_frame.load(Ordering::Relaxed))
    }

    /// Encodes `frame`, refusing one over the frame limit: it is never sent.
    fn encode(&self, frame: &Frame) -> Result<Bytes, Status> {
        let bytes = codec::encode_bytes(frame, self.codec).map_err(|e| {
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

    /// Sends a frame, waiting for room in the transport queue. The frame is
    /// encoded at once, so the future holds only its bytes: it lives inside
    /// the futures of every call, and its size is theirs.
    fn send(&self, frame: Frame) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        let encoded = self.encode(&frame);
        drop(frame);
        async move {
            let bytes = encoded?;
            let len = bytes.len();
            self.sender
                .send(bytes)
                .await
                .map_err(|e| self.send_status(e))?;
            self.count_out(len);
            Ok(())
        }
    }

    /// Sends without waiting, like [`Shared::send_nowait`], but tells why a
    /// frame could not be sent. For frames whose number something else
    /// bounds: the reader's own answers (it checks the backlog between
    /// frames, `backpressure`) and calls (the question limit).
    fn send_queued(&self, frame: &Frame) -> Result<(), Status> {
        let bytes = self.encode(frame)?;
        let len = bytes.len();
        self.sender
            .send_now(bytes)
            .map_err(|e| self.send_status(e))?;
        self.count_out(len);
        Ok(())
    }

    fn send_status(&self, error: TransportError) -> Status {
        match error {
            // `encode` checked the size already; kept for a transport that disagrees.
            TransportError::Framing(fe) => {
                Status::limit(Reason::MAX_FRAME_BYTES, self.frame_limit() as u64)
                    .with_details(serde_json::json!({ "error": fe.to_string() }))
            }
            other => Status::unavailable(format!("cannot send: {other}")),
        }
    }

    /// Sends from code that cannot wait (drops, the reader): the frame goes
    /// behind every frame sent before it, into the transport's backlog when
    /// the queue is full (which the reader bounds, see `backpressure`). A
    /// frame that cannot be sent at all is dropped.
    fn send_nowait(&self, frame: Frame) {
        let bytes = match self.encode(&frame) {
            Ok(bytes) => bytes,
            Err(status) => {
                tracing::warn!(op = frame.op(), %status, "dropping a frame that cannot be sent");
                return;
            }
        };
        let len = bytes.len();
        match self.sender.send_now(bytes) {
            Ok(()) => self.count_out(len),
            Err(TransportError::Closed) => {}
            Err(e) => {
                tracing::warn!(op = frame.op(), error = %e, "dropping a frame that cannot be sent")
            }
        }
    }

    /// Waits while more than [`MAX_BACKLOG`] frames wait for room in the
    /// transport queue; the reader calls it between frames, so a peer that
    /// keeps sending without reading what it is sent slows down instead of
    /// making this side buffer without bound.
    async fn backpressure(&self) {
        if self.sender.backlog() <= MAX_BACKLOG {
            return;
        }
        tokio::select! {
            _ = self.sender.backlog_at_most(MAX_BACKLOG) => {}
            _ = self.closed.cancelled() => {}
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

    /// The last handle to import `id` is gone: `release`, now if the
    /// session lock can be taken without waiting, else from the release task.
    pub(crate) fn queue_release(self: &Arc<Self>, id: u64, serial: u64) {
        match self.try_lock_here() {
            Some(st) => self.drop_import_locked(st, id, serial),
            None => {
                let _ = self.releases.send(Dropped::Import { id, serial });
            }
        }
    }

    /// The last handle to kept question `id` is gone: `finish`, now if the
    /// session lock can be taken without waiting, else from the release task.
    pub(crate) fn queue_finish(self: &Arc<Self>, id: u64) {
        match self.try_lock_here() {
            Some(st) => self.drop_kept_locked(st, id),
            None => {
                let _ = self.releases.send(Dropped::Kept(id));
            }
        }
    }

    /// The session lock, if a dropped handle can do its table work here:
    /// taken without waiting (so never when this thread holds it already,
    /// the lock is not reentrant, nor when another thread does), and only
    /// inside a runtime (a frame that has to wait for room in the queue
    /// needs one to be sent). A handle's drop never waits for the lock.
    fn try_lock_here(&self) -> Option<MutexGuard<'_, State>> {
        tokio::runtime::Handle::try_current().ok()?;
        match self.state.try_lock() {
            Ok(st) => Some(st),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The last handle to kept question `id` is gone: the callee may free
    /// the answer (and cancels it if it has not settled).
    fn drop_kept(self: &Arc<Self>, id: u64) {
        self.drop_kept_locked(self.lock(), id);
    }

    /// [`Shared::drop_kept`] with the lock already taken (released here).
    fn drop_kept_locked(self: &Arc<Self>, st: MutexGuard<'_, State>, id: u64) {
        let unsettled = {
            let mut st = st;
            if st.ended.is_some() {
                return;
            }
            st.questions.remove(id)
        };
        if let Some(q) = unsettled {
            if let Reply::Kept { meta, .. } = q.reply {
                self.record_outgoing(q.cap, id, meta, Code::Cancelled, false);
            }
            self.notify_settled();
        }
        self.send_nowait(Frame::Finish(Finish { id }));
    }

    /// Counts and reports a kept or stream question that ended.
    fn record_outgoing(&self, cap: Option<u64>, id: u64, meta: Meta, outcome: Code, stream: bool) {
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
        {
            let mut st = self.lock();
            match st.questions.get_mut(id).map(|q| &mut q.reply) {
                Some(Reply::Stream {
                    tx: Some(_),
                    credit,
                    ..
                }) => *credit = credit.saturating_add(u64::from(n)),
                _ => return,
            }
        }
        self.send_nowait(Frame::Credit(capwire_proto::Credit { id, n }));
    }

    /// The consumer of stream `id` went away: `cancel`. The question stays
    /// until its terminal frame, so items still in flight are not violations.
    pub(crate) fn cancel_stream(&self, id: u64) {
        {
            let mut st = self.lock();
            match st.questions.get_mut(id).map(|q| &mut q.reply) {
                Some(Reply::Stream { tx, .. }) if tx.is_some() => *tx = None,
                _ => return,
            }
        }
        self.send_nowait(Frame::Cancel(Cancel { id }));
    }

    fn drop_import(self: &Arc<Self>, id: u64, serial: u64) {
        self.drop_import_locked(self.lock(), id, serial);
    }

    /// [`Shared::drop_import`] with the lock already taken (released here).
    fn drop_import_locked(self: &Arc<Self>, st: MutexGuard<'_, State>, id: u64, serial: u64) {
        let released = {
            let mut st = st;
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
            CapKind::Promised(core, path) => match core.sent() {
                Some(Sent::Kept(k)) if std::ptr::eq(k.session.as_ptr(), Arc::as_ptr(self)) => {
                    Ok(CapDescriptor::Answer {
                        id: k.id,
                        path: path.to_vec(),
                    })
                }
                _ => self.describe_forward(st, cap),
            },
            CapKind::Answer(answer) => match answer.get() {
                Some(Ok(resolved)) => self.describe_cap(st, &resolved),
                _ => self.describe_forward(st, cap),
            },
            CapKind::Remote(_) => self.describe_forward(st, cap),
        }
    }

    /// Exports a capability hosted elsewhere (another connection, a promise)
    /// as a forwarding object: calls on it are passed on.
    fn describe_forward(
        self: &Arc<Self>,
        st: &mut State,
        cap: &Capability,
    ) -> Result<CapDescriptor, Status> {
        let forward: Arc<dyn Object> = Arc::new(cap.clone());
        st.exports
            .export(&forward, None, self.config.limits.max_exports)
            .map(CapDescriptor::Export)
    }

    /// An outgoing value in this session's codec, with its capabilities described.
    fn describe_value(
        self: &Arc<Self>,
        st: &mut State,
        value: Value,
    ) -> Result<(Payload, Vec<CapDescriptor>), Status> {
        let payload = value
            .payload
            .into_codec(self.codec)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the value: {e}")))?;
        Ok((payload, self.describe_caps(st, &value.caps)?))
    }

    /// Turns the descriptors of an incoming value into capabilities.
    fn resolve_caps(
        self: &Arc<Self>,
        st: &mut State,
        descriptors: Vec<CapDescriptor>,
    ) -> Result<Vec<Capability>, Status> {
        if descriptors.is_empty() {
            return Ok(Vec::new());
        }
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
                CapDescriptor::Answer { id, path } => {
                    match st.answers.pipeline_target(id, &path)? {
                        Some(resolved) => Ok(resolved),
                        None => {
                            let max = self.config.limits.max_pending_pipelined;
                            if st.answers.pending_pipelined() >= max {
                                return Err(Status::limit(
                                    Reason::MAX_PENDING_PIPELINED,
                                    max as u64,
                                ));
                            }
                            let answer = Arc::new(AnswerRef::new(id, me.clone()));
                            st.answers.enqueue(
                                id,
                                Queued::Promise {
                                    path,
                                    answer: answer.clone(),
                                },
                            );
                            Ok(Capability {
                                kind: CapKind::Answer(answer),
                            })
                        }
                    }
                }
            })
            .collect()
    }

    /// Sends the promises among `args` that go to this session first, so
    /// that they can travel as `answer` descriptors (\[S14\]).
    async fn send_arg_promises(self: &Arc<Self>, args: &Value) {
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
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        self: &Arc<Self>,
        target: &WireTarget,
        method: &str,
        (payload, caps): (Payload, &[Capability]),
        deadline: Option<Instant>,
        parent: Option<u64>,
        reply: Reply,
        keep: bool,
        stream: Option<u32>,
    ) -> Result<(u64, Frame), Status> {
        let payload = payload
            .into_codec(self.codec)
            .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        let cap = target.cap();
        let mut st = self.lock();
        if let Some(s) = st.ended.as_ref().or(st.draining.as_ref()) {
            return Err(Status::unavailable(format!(
                "cannot call `{method}`: {}",
                s.message
            )));
        }
        if let Some(cap) = cap {
            if st.revoked_imports.contains(cap) {
                return Err(Status::revoked(format!("capability {cap}")));
            }
        }
        let max = self.config.limits.max_in_flight_out;
        if st.questions.len() >= max {
            return Err(Status::limit(Reason::MAX_CONCURRENT_CALLS, max as u64));
        }
        let caps = self.describe_caps(&mut st, caps)?;
        let id = st.questions.insert(cap, reply);
        drop(st);
        let deadline_ms = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let frame = Frame::Call(Call {
            id,
            target: target.target(),
            method: method.to_owned(),
            args: payload,
            caps,
            parent,
            deadline_ms,
            keep,
            stream,
        });
        Ok((id, frame))
    }

    /// Sends a prepared call. If it cannot be sent (too big, or the
    /// connection is gone), the question and the introductions it carried
    /// are taken back: there is nothing to cancel.
    ///
    /// A call does not wait for room in the transport queue: the frame goes
    /// behind the others, and the question table's limit
    /// (`max_in_flight_out`) bounds how many can wait there. So a call's
    /// future holds no send state, only its reply.
    fn send_question(self: &Arc<Self>, id: u64, frame: Frame) -> Result<(), Status> {
        let result = self.send_queued(&frame);
        if result.is_err() {
            let caps = match &frame {
                Frame::Call(call) => call.caps.as_slice(),
                _ => &[],
            };
            let mut st = self.lock();
            st.questions.remove(id);
            st.exports.unsend(caps);
            drop(st);
            self.notify_settled();
        }
        result
    }

    /// Makes a plain call and waits for its answer (two frames, nothing kept).
    pub(crate) async fn call_plain(
        self: &Arc<Self>,
        target: &WireTarget,
        method: MethodName,
        args: Value,
        deadline: Option<Instant>,
        scope: Option<CallScope>,
    ) -> Result<Value, Status> {
        if !args.caps.is_empty() {
            Box::pin(self.send_arg_promises(&args)).await;
        }
        self.start_plain(target, method, args, deadline, scope, None)?
            .await
    }

    /// Sends a kept call: its answer stays at the callee, for pipelining,
    /// until the returned question is dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_kept(
        self: &Arc<Self>,
        target: &WireTarget,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        scope: Option<CallScope>,
        target_handle: Capability,
    ) -> Result<Arc<KeptQuestion>, Status> {
        if !args.caps.is_empty() {
            self.send_arg_promises(&args).await;
        }
        let (tx, rx) = watch::channel(None);
        let meta = Meta {
            method: method.to_owned(),
            started: self.started(),
        };
        let parent = scope.as_ref().map(|s| s.answer);
        let Value { payload, caps } = args;
        let (id, frame) = self.prepare(
            target,
            method,
            (payload, &caps),
            deadline,
            parent,
            Reply::Kept { tx, meta },
            true,
            None,
        )?;
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        target: &WireTarget,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        scope: Option<CallScope>,
        window: Option<u32>,
        mut deps: Vec<Capability>,
    ) -> Result<RemoteItems, Status> {
        let window = window.unwrap_or(self.config.stream_window).max(1);
        self.send_arg_promises(&args).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let meta = Meta {
            method: method.to_owned(),
            started: self.started(),
        };
        let parent = scope.as_ref().map(|s| s.answer);
        let reply = Reply::Stream {
            tx: Some(tx),
            credit: u64::from(window),
            meta,
        };
        let Value { payload, caps } = args;
        let (id, frame) = self.prepare(
            target,
            method,
            (payload, &caps),
            deadline,
            parent,
            reply,
            false,
            Some(window),
        )?;
        deps.extend(caps);
        let items = RemoteItems::new(self.clone(), id, rx, window, deps);
        self.send_question(id, frame)?;
        Ok(items)
    }

    /// Handles one decoded frame. An `Err` is a connection-fatal violation.
    fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Status> {
        match frame {
            Frame::Hello(_) => Err(Status::protocol_violation("a second hello")),
            Frame::Call(call) => self.handle_call(call),
            Frame::Result(result) => self.handle_result(result),
            Frame::Cancel(Cancel { id }) => {
                let status = Status::new(Code::Cancelled, "the caller cancelled the call");
                let queued = self.lock().answers.stop(id, status.clone());
                if let Some(q) = queued {
                    // It never started: answered here ([S21]).
                    self.reject(id, q.stream, status);
                    self.notify_settled();
                }
                Ok(())
            }
            Frame::Finish(Finish { id }) => {
                let freed = self.lock().answers.finish(id);
                if freed.is_some() {
                    drop(freed);
                    self.notify_settled();
                }
                Ok(())
            }
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
            Frame::Credit(capwire_proto::Credit { id, n }) => {
                // Unknown or ended streams: the credit crossed the terminal frame.
                let credit = self.lock().answers.credit(id);
                if let Some(credit) = credit {
                    credit.grant(n);
                }
                Ok(())
            }
            Frame::Item(item) => self.handle_item(item),
            Frame::End(StreamEnd { id }) => self.handle_stream_end(id, None),
            Frame::StreamError(StreamError { id, err }) => self.handle_stream_end(id, Some(err)),
            other => Err(Status::protocol_violation(format!(
                "unexpected `{}` frame",
                other.op()
            ))),
        }
    }

    fn handle_result(self: &Arc<Self>, result: CallResult) -> Result<(), Status> {
        let max_depth = self.config.limits.max_depth;
        let mut st = self.lock();
        let question = match st.questions.remove(result.id) {
            Some(q) if matches!(q.reply, Reply::Stream { .. }) => {
                // Put back: the session's end fails it with the reason.
                st.questions.restore(result.id, q);
                return Err(Status::protocol_violation(format!(
                    "`result` for question {}, which is a stream",
                    result.id
                )));
            }
            q => q,
        };
        let Some(question) = question else {
            // A result for a question we stopped waiting on (cancelled, timed
            // out, finished) is dropped ([S19]); what it introduced goes back.
            drop(st);
            if let Outcome::Ok { caps, .. } = result.outcome {
                self.release_unwanted(&caps);
            }
            return Ok(());
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
        self.notify_settled();
        let cap = question.cap;
        match question.reply {
            Reply::Kept { tx, meta } => {
                let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
                tx.send_replace(Some(outcome));
                self.record_outgoing(cap, result.id, meta, code, false);
            }
            reply => questions::Question { cap, reply }.settle(outcome),
        }
        Ok(())
    }

    /// Hands back the introductions of a value nobody will receive.
    fn release_unwanted(&self, caps: &[CapDescriptor]) {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for d in caps {
            if let CapDescriptor::Export(id) = d {
                if *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP {
                    *counts.entry(*id).or_default() += 1;
                }
            }
        }
        for (cap, n) in counts {
            self.send_nowait(Frame::Release(Release { cap, n }));
        }
    }

    fn handle_item(self: &Arc<Self>, item: StreamItem) -> Result<(), Status> {
        let StreamItem { id, value, caps } = item;
        let max_depth = self.config.limits.max_depth;
        let mut st = self.lock();
        let tx = match st.questions.get_mut(id).map(|q| &mut q.reply) {
            Some(Reply::Stream { tx, credit, .. }) => {
                if *credit == 0 {
                    return Err(Status::protocol_violation(format!(
                        "`item` for stream {id} beyond the credit granted"
                    )));
                }
                *credit -= 1;
                tx.clone()
            }
            _ => {
                return Err(Status::protocol_violation(format!(
                    "`item` for question {id}, which is not an open stream"
                )))
            }
        };
        let Some(tx) = tx else {
            // Cancelled: discarded, its introductions handed back.
            drop(st);
            self.release_unwanted(&caps);
            return Ok(());
        };
        let item = self.resolve_caps(&mut st, caps).and_then(|caps| {
            if value.exceeds_depth(max_depth) {
                return Err(Status::limit(Reason::MAX_VALUE_DEPTH, max_depth as u64));
            }
            Ok(Value {
                payload: value,
                caps,
            })
        });
        drop(st);
        self.counters
            .stream_items_in
            .fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(item);
        Ok(())
    }

    /// `end` (`err` = `None`) or `stream_error` for stream question `id`.
    fn handle_stream_end(self: &Arc<Self>, id: u64, err: Option<Status>) -> Result<(), Status> {
        let question = {
            let mut st = self.lock();
            match st.questions.is_stream(id) {
                // A cancelled stream stays a question until its terminal
                // frame, so there is no legitimate terminal for other ids.
                None | Some(false) => {
                    return Err(Status::protocol_violation(format!(
                        "stream terminal frame for question {id}, which is not an open stream"
                    )))
                }
                Some(true) => st.questions.remove(id),
            }
        };
        self.notify_settled();
        let Some(question) = question else {
            return Ok(());
        };
        let cap = question.cap;
        if let Reply::Stream { tx, meta, .. } = question.reply {
            let code = err.as_ref().map_or(Code::Ok, |s| s.code);
            if let (Some(tx), Some(err)) = (tx, err) {
                let _ = tx.send(Err(err));
            }
            self.record_outgoing(cap, id, meta, code, true);
        }
        Ok(())
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
            let status = Status::revoked("the capability");
            (st.questions.fail_for_caps(&caps, &status), releases)
        };
        for release in releases {
            self.send_nowait(Frame::Release(release));
        }
        if !failed.is_empty() {
            self.notify_settled();
        }
        for q in failed {
            let what = q.cap.map_or_else(
                || "the capability".to_owned(),
                |c| format!("capability {c}"),
            );
            q.settle(Err(Status::revoked(what)));
        }
        self.emit(Event::Revoke {
            direction: Direction::Incoming,
            caps,
        });
    }

    /// Answers a call with an error at once, without running anything.
    fn reject(self: &Arc<Self>, id: u64, stream: bool, status: Status) {
        self.counters.call_done(status.code);
        self.send_nowait(if stream {
            Frame::StreamError(StreamError { id, err: status })
        } else {
            Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            })
        });
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
            keep,
            stream,
            ..
        } = call;
        let is_stream = stream.is_some();
        let limits = &self.config.limits;
        if args.exceeds_depth(limits.max_depth) {
            let status = Status::limit(Reason::MAX_VALUE_DEPTH, limits.max_depth as u64);
            self.reject(id, is_stream, status);
            return Ok(());
        }
        let started = self.started();
        let deadline = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut st = self.lock();
        if st.answers.contains(id) {
            // Reusing a live question id ([S12]); answering it would cross
            // two calls' answers, so the connection ends instead.
            return Err(Status::protocol_violation(format!(
                "call {id} reuses the id of a call still running"
            )));
        }
        let refused = if let Some(s) = &st.draining {
            Some(Status::unavailable(s.message.clone()))
        } else if st.answers.len() >= limits.max_in_flight_in {
            Some(Status::limit(
                Reason::MAX_CONCURRENT_CALLS,
                limits.max_in_flight_in as u64,
            ))
        } else if is_stream && st.answers.streams() >= limits.max_open_streams {
            Some(Status::limit(
                Reason::MAX_OPEN_STREAMS,
                limits.max_open_streams as u64,
            ))
        } else {
            None
        };
        if let Some(status) = refused {
            drop(st);
            self.reject(id, is_stream, status);
            return Ok(());
        }
        // Where the call goes: an object now, or the queue of an answer.
        let (route, cap) = match target {
            Target::Cap(cap) => {
                let object: Option<Arc<dyn Object>> = match cap {
                    BOOTSTRAP_CAP => None,
                    RUNTIME_CAP => Some(self.runtime.clone()),
                    _ => match st.exports.get(cap) {
                        Some(e) => Some(e.object.clone()),
                        None => {
                            let status =
                                if st.exports.is_revoked(cap) || st.revoked_exports.contains(cap) {
                                    Status::revoked(format!("capability {cap}"))
                                } else {
                                    Status::new(
                                        Code::NotFound,
                                        format!("capability {cap} is not exported"),
                                    )
                                };
                            drop(st);
                            self.reject(id, is_stream, status);
                            return Ok(());
                        }
                    },
                };
                (Route::Now(object), Some(cap))
            }
            Target::Answer { id: answer, path } => {
                match st.answers.pipeline_target(answer, &path) {
                    Ok(Some(resolved)) => (Route::Now(Some(object_of(resolved))), None),
                    Ok(None) if st.answers.pending_pipelined() >= limits.max_pending_pipelined => {
                        drop(st);
                        let max = limits.max_pending_pipelined as u64;
                        self.reject(
                            id,
                            is_stream,
                            Status::limit(Reason::MAX_PENDING_PIPELINED, max),
                        );
                        return Ok(());
                    }
                    Ok(None) => (Route::Queue(answer, path), None),
                    Err(status) => {
                        drop(st);
                        self.reject(id, is_stream, status);
                        return Ok(());
                    }
                }
            }
        };
        let caps = match self.resolve_caps(&mut st, caps) {
            Ok(caps) => caps,
            Err(status) => {
                drop(st);
                self.reject(id, is_stream, status);
                return Ok(());
            }
        };
        let credit = stream.map(|window| Arc::new(Credit::new(window)));
        let kind = match (&credit, keep) {
            (Some(credit), _) => AnswerKind::Stream(credit.clone()),
            (None, true) => AnswerKind::Kept(Pipeline::default()),
            (None, false) => AnswerKind::Plain,
        };
        let queued = matches!(route, Route::Queue(..));
        let (cancel, serial) = st.answers.insert(id, cap, kind, queued);
        let method = st.method_names.intern(method);
        let start = StartAnswer {
            id,
            serial,
            cap,
            method,
            args: Value {
                payload: args,
                caps,
            },
            deadline,
            cancel,
            started,
            credit,
        };
        match route {
            Route::Now(object) => {
                drop(st);
                self.start_answer(start, object);
            }
            Route::Queue(answer, path) => {
                let item = Queued::Call {
                    path,
                    start: Box::new(start),
                };
                st.answers.enqueue(answer, item);
            }
        }
        Ok(())
    }

    /// Runs an answer: inline on this task until its first wait, so that
    /// calls start in the order they arrived (E-order) and a handler that
    /// does not wait is answered without a task switch; then as a task.
    fn start_answer(self: &Arc<Self>, start: StartAnswer, object: Option<Arc<dyn Object>>) {
        match object {
            Some(object) if start.credit.is_none() => self.start_call(start, object),
            object => self.start_other(start, object),
        }
    }

    /// A call on an object: the handler's future is polled once here, in
    /// the call's scope. One that completes is answered on the spot, with no
    /// task, box or timer beyond the handler's own (DESIGN §6); one that
    /// waits becomes a task, supervised for cancellation and its deadline.
    fn start_call(self: &Arc<Self>, start: StartAnswer, object: Arc<dyn Object>) {
        let StartAnswer {
            id,
            cap,
            method,
            args,
            deadline,
            cancel,
            started,
            ..
        } = start;
        let stop_at = if object.is_idempotent(&method) {
            None
        } else {
            deadline.map(|d| d + self.config.deadline_grace)
        };
        // What `supervise` checks before it polls the handler: a call that
        // waited in a pipeline queue may be stopped or past its deadline.
        if cancel.is_cancelled() {
            return self.finish_answer_now(id, cap, &method, started, None);
        }
        if stop_at.is_some_and(|at| Instant::now() >= at) {
            let late = Err(ran_past_deadline(&method));
            cancel.cancel();
            return self.finish_answer_now(id, cap, &method, started, Some(late));
        }
        let (ctx, scope) = self.call_context(id, &method, deadline, &cancel);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let first = SCOPE.sync_scope(scope, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut fut = object.call(&method, args, ctx);
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => Ok(result),
                    Poll::Pending => Err(fut),
                }
            }))
        });
        let fut = match first {
            Ok(Ok(result)) => {
                return self.finish_answer_now(id, cap, &method, started, Some(result))
            }
            Err(_panic) => {
                let result = Err(handler_panicked(&method));
                return self.finish_answer_now(id, cap, &method, started, Some(result));
            }
            Ok(Err(fut)) => fut,
        };
        // It waits: the task polls it again first thing, which registers the
        // task's waker in place of the no-op one of the first poll.
        let scope = CallScope {
            cancel: cancel.clone(),
            deadline,
            answer: id,
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let run = {
                let method = method.clone();
                SCOPE.scope(
                    scope,
                    AssertUnwindSafe(fut)
                        .catch_unwind()
                        .map(move |r| r.unwrap_or_else(|_| Err(handler_panicked(&method)))),
                )
            };
            let result = supervise(run, &method, stop_at, &cancel).await;
            shared
                .finish_answer(id, cap, &method, started, result)
                .await;
        });
    }

    /// Streams, and calls on the bootstrap object (`object` is `None`): the
    /// whole answer as one future, started inline.
    fn start_other(self: &Arc<Self>, start: StartAnswer, object: Option<Arc<dyn Object>>) {
        let shared = self.clone();
        let span =
            tracing::debug_span!("answer", cap = start.cap, method = %start.method, id = start.id);
        let run = async move {
            if let Some(credit) = start.credit.clone() {
                return shared.run_stream(start, object, credit).await;
            }
            let StartAnswer {
                id,
                cap,
                method,
                args,
                deadline,
                cancel,
                started,
                ..
            } = start;
            // `start_answer` sends calls on objects to `start_call`.
            debug_assert!(object.is_none());
            let result = shared.run_bootstrap(&method, args, deadline, cancel).await;
            shared
                .finish_answer(id, cap, &method, started, result)
                .await;
        };
        start_inline(run.instrument(span));
    }

    /// Delivers what waited for a kept answer, in arrival order.
    fn deliver(self: &Arc<Self>, item: Queued, resolved: Result<Capability, Status>) {
        match item {
            Queued::Promise { answer, .. } => answer.resolve(resolved),
            Queued::Call { start, .. } => {
                if !self.lock().answers.dequeue(start.id, start.serial) {
                    // Cancelled while it waited, and answered then.
                    return;
                }
                let object = match resolved {
                    Ok(cap) => object_of(cap),
                    Err(status) => Arc::new(Failing(status)),
                };
                self.start_answer(*start, Some(object));
            }
        }
    }

    /// Kept answer `id` settled: keep its outcome for pipelining and deliver
    /// its queue. Calls that arrive meanwhile queue behind (\[S15\]).
    fn settle(self: &Arc<Self>, id: u64, outcome: Result<Value, Status>) {
        let mut batch = self.lock().answers.settle(id, outcome.clone());
        loop {
            for item in batch {
                let resolved = pipeline::resolve(&outcome, item.path());
                self.deliver(item, resolved);
            }
            let next = self.lock().answers.next_batch(id);
            match next {
                Ok(more) => batch = more,
                Err(freed) => {
                    if freed.is_some() {
                        drop(freed);
                        self.notify_settled();
                    }
                    return;
                }
            }
        }
    }

    /// What the handler of answer `id` is told, and the scope the calls it
    /// makes inherit.
    fn call_context(
        &self,
        id: u64,
        method: &Arc<str>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> (CallContext, CallScope) {
        let ctx = CallContext {
            method: method.clone(),
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
        (ctx, scope)
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

    /// Sends the result of answer `id` and retires it, waiting for room in
    /// the transport queue (a handler task).
    async fn finish_answer(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        result: Option<Result<Value, Status>>,
    ) {
        let Some((frame, answered)) = self.answered(id, result) else {
            return;
        };
        let sent = self.send(frame).await;
        self.retire_answer(id, cap, method, started, answered, sent);
    }

    /// [`Shared::finish_answer`] for an answer computed without waiting: the
    /// result is queued without waiting for room. On the reader, the reader
    /// bounds that backlog between frames; for calls a settling kept answer
    /// delivers from a handler task, `max_pending_pipelined` does.
    fn finish_answer_now(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        result: Option<Result<Value, Status>>,
    ) {
        let Some((frame, answered)) = self.answered(id, result) else {
            return;
        };
        let sent = self.send_queued(&frame);
        self.retire_answer(id, cap, method, started, answered, sent);
    }

    /// The `result` frame for answer `id`, with the capabilities it
    /// introduces; `None` when nothing is to be sent (the session ended, or
    /// the answer is gone).
    fn answered(
        self: &Arc<Self>,
        id: u64,
        result: Option<Result<Value, Status>>,
    ) -> Option<(Frame, Answered)> {
        let mut st = self.lock();
        let stopped = st.answers.stopped(id)?;
        let result =
            match result {
                Some(r) => r,
                None => Err(stopped
                    .unwrap_or_else(|| Status::new(Code::Cancelled, "the call was cancelled"))),
            };
        if st.ended.is_some() {
            st.answers.remove(id);
            return None;
        }
        // A kept answer keeps what the handler returned, for pipelining.
        let mut kept = st.answers.is_kept(id).then(|| result.clone());
        let (outcome, sent_caps, code) =
            match result.and_then(|value| self.describe_value(&mut st, value)) {
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
                    if let Some(k) = kept.as_mut() {
                        *k = Err(status.clone());
                    }
                    (Outcome::Err(status), Vec::new(), code)
                }
            };
        let frame = Frame::Result(CallResult { id, outcome });
        Some((
            frame,
            Answered {
                sent_caps,
                code,
                kept,
            },
        ))
    }

    /// After the result was sent (or could not be): settles a kept answer,
    /// frees a plain one, counts and reports the call.
    fn retire_answer(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        answered: Answered,
        sent: Result<(), Status>,
    ) {
        let Answered {
            sent_caps,
            mut code,
            mut kept,
        } = answered;
        if let Err(status) = sent {
            // Typically a result over a frame limit ([S2]): the caller gets
            // that error instead, and the introductions it carried are taken back.
            self.lock().exports.unsend(&sent_caps);
            code = status.code;
            if let Some(k) = kept.as_mut() {
                *k = Err(status.clone());
            }
            self.send_nowait(Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            }));
        }
        // Only now: `close` waits for this entry, so the result goes out first.
        match kept {
            Some(outcome) => self.settle(id, outcome),
            None => {
                let freed = self.lock().answers.remove(id);
                drop(freed);
            }
        }
        self.notify_settled();
        self.counters.call_done(code);
        self.emit_with(|| Event::Call {
            direction: Direction::Incoming,
            cap: cap.unwrap_or(u64::MAX),
            method: method.to_owned(),
            id,
            duration: started.elapsed(),
            outcome: code,
        });
    }

    /// Ends the session: pending questions fail with `unavailable` (§7.1),
    /// running handlers are stopped, the tables are cleared and the transport
    /// closed. `status` is what [`Session::closed`] reports.
    fn shutdown(self: &Arc<Self>, status: Status) {
        let (questions, answers) = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            st.ended = Some(status.clone());
            st.answers.stop_all(&status);
            // Answer entries hold values (and handles): dropped outside the lock.
            let answers = st.answers.clear();
            st.exports.clear();
            st.imports.clear();
            st.pings.clear();
            (st.questions.drain(), answers)
        };
        let failed = if status.code == Code::Unavailable {
            status.clone()
        } else {
            Status::unavailable(format!("the connection closed: {status}"))
        };
        for q in questions {
            q.settle(Err(failed.clone()));
        }
        drop(answers);
        // Queued behind everything already sent (a goaway first of all); a
        // task, so that a full queue cannot lose the close.
        let sender = self.sender.clone();
        let reason = close_reason(&status);
        tokio::spawn(async move {
            let _ = sender.close(reason).await;
        });
        self.ended.store(true, Ordering::Release);
        self.closed.cancel();
        self.notify_settled();
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

/// What a call on the wire is addressed to: a capability the peer exported,
/// or the capability at a path of one of this side's kept questions.
#[derive(Clone)]
pub(crate) enum WireTarget {
    Cap(u64),
    Answer(u64, Arc<[PathSeg]>),
}

impl WireTarget {
    /// The capability called, if it is one (revocation applies to it).
    fn cap(&self) -> Option<u64> {
        match self {
            WireTarget::Cap(cap) => Some(*cap),
            WireTarget::Answer(..) => None,
        }
    }

    fn target(&self) -> Target {
        match self {
            WireTarget::Cap(cap) => Target::Cap(*cap),
            WireTarget::Answer(id, path) => Target::Answer {
                id: *id,
                path: path.to_vec(),
            },
        }
    }
}

/// Everything needed to start answering a call, now or when the answer it
/// is pipelined on settles.
pub(crate) struct StartAnswer {
    id: u64,
    serial: u64,
    cap: Option<u64>,
    method: Arc<str>,
    args: Value,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    started: Started,
    credit: Option<Arc<Credit>>,
}

/// What to do once an answer's `result` went out (or could not).
struct Answered {
    /// The introductions it carries, taken back if it cannot be sent.
    sent_caps: Vec<CapDescriptor>,
    code: Code,
    /// For a kept answer, the outcome to pipeline on.
    kept: Option<Result<Value, Status>>,
}

/// Where an incoming call goes.
enum Route {
    /// To this object (`None`: the bootstrap object).
    Now(Option<Arc<dyn Object>>),
    /// Into the queue of kept answer `.0`, for the capability at path `.1`.
    Queue(u64, Vec<PathSeg>),
}

/// Polls `fut` once here, and spawns it only if it has to wait.
///
/// Answers start in the order the reader started them, and a handler that
/// completes without waiting is answered on the reader's task (DESIGN §6: no
/// thread hop on the hot path). A future that returns `Pending` must have
/// registered the waker of *this* poll; the spawned task polls it again
/// first thing, which registers its own.
pub(crate) fn start_inline(fut: impl Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    // Handlers run inside `guarded`, which turns their panics into errors;
    // this catches what is left (a bug here), without taking the reader down.
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(fut);
        }
        Err(_) => tracing::error!("an answer panicked outside its handler"),
    }
}

/// Runs application code (a handler or stream opener) in the call's scope:
/// calls it makes belong to this call, and a panic becomes `internal`.
pub(crate) fn guarded<T: Send + 'static>(
    scope: CallScope,
    method: &str,
    make: impl FnOnce() -> BoxFuture<'static, Result<T, Status>>,
) -> impl Future<Output = Result<T, Status>> + Send + 'static {
    let panicked = {
        let method = method.to_owned();
        move || handler_panicked(&method)
    };
    let made = SCOPE.sync_scope(scope.clone(), || {
        std::panic::catch_unwind(AssertUnwindSafe(make))
    });
    let fut = match made {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .map(move |r| r.unwrap_or_else(|_| Err(panicked())))
            .boxed(),
        Err(_) => {
            let status = panicked();
            async move { Err(status) }.boxed()
        }
    };
    SCOPE.scope(scope, fut)
}

/// What a caller hears of a handler stopped by its deadline.
fn ran_past_deadline(method: &str) -> Status {
    Status::new(
        Code::DeadlineExceeded,
        format!("`{method}` ran past its deadline"),
    )
}

/// What a caller hears of a handler that panicked (logged here).
fn handler_panicked(method: &str) -> Status {
    tracing::error!(method = %method, "a handler panicked");
    Status::new(
        Code::Internal,
        format!("the handler of `{method}` panicked"),
    )
}

/// Runs an answer's future until it ends, is cancelled, or passes `stop_at`.
/// `None` means it was cancelled; the answer entry says why.
async fn supervise<T>(
    run: impl Future<Output = Result<T, Status>>,
    method: &str,
    stop_at: Option<Instant>,
    cancel: &CancellationToken,
) -> Option<Result<T, Status>> {
    tokio::pin!(run);
    // `run` outlives the select so that its token is cancelled before it is
    // dropped: a handler (and the calls it made) being torn down by its
    // deadline sees `ctx.is_cancelled()` like one stopped by a cancel.
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = sleep_until(stop_at) => Some(Err(ran_past_deadline(method))),
        r = &mut run => return Some(r),
    };
    cancel.cancel();
    outcome
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn cancelled(token: Option<CancellationToken>) {
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
    // One waiter for the whole loop, polled only when no frame is ready.
    let closed = shared.closed.clone();
    let closed = closed.cancelled();
    tokio::pin!(closed);
    let end = loop {
        let next = tokio::select! {
            biased;
            r = receiver.recv() => r,
            _ = &mut closed => return,
        };
        // A peer that keeps sending cannot keep an ended session working.
        if shared.ended.load(Ordering::Acquire) {
            return;
        }
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
        let frame = match codec::decode_bytes(&bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_shared_within_their_bounds() {
        let mut names = MethodNames::default();
        let a = names.intern("echo".to_owned());
        let b = names.intern("echo".to_owned());
        assert!(Arc::ptr_eq(&a, &b), "a known name is shared");
        let long = "x".repeat(MAX_METHOD_NAME_LEN + 1);
        let l1 = names.intern(long.clone());
        let l2 = names.intern(long.clone());
        assert_eq!(&*l1, long.as_str());
        assert!(!Arc::ptr_eq(&l1, &l2), "a long name is not kept");
        for i in 0..2 * MAX_METHOD_NAMES {
            assert_eq!(&*names.intern(format!("m{i}")), format!("m{i}"));
        }
        assert_eq!(names.0.len(), MAX_METHOD_NAMES, "the table stays bounded");
        let c = names.intern("echo".to_owned());
        assert!(Arc::ptr_eq(&a, &c), "names kept first stay kept");
    }
}
