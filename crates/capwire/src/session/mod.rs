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
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use capwire_proto::{
    codec, Call, CallResult, Cancel, CapDescriptor, Code, Codec, Frame, Goaway, Hello, HelloLimits,
    Outcome, Payload, Ping, Pong, Reason, Release, Revoked, Status, Target, BOOTSTRAP_CAP,
    PROTOCOL_VERSION, RUNTIME_CAP,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
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
    /// Capabilities exported to the peer at once. Default 1024
    /// (`max_caps_per_connection`).
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
    /// How long `close` lets running calls finish. Default 5 s.
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
}

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

    /// Closes gracefully: tells the peer (`goaway`), lets running calls finish
    /// for up to the configured grace period, fails what is left with
    /// `unavailable`, and closes the transport.
    pub async fn close(&self) {
        let grace = self.shared.config.close_grace;
        let status = Status::unavailable("the session is closing");
        {
            let mut st = self.shared.lock();
            if st.ended.is_some() {
                return;
            }
            st.draining.get_or_insert(status.clone());
        }
        let goaway = Goaway {
            status: Status::new(Code::Ok, "closing"),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        let _ = self.shared.send(Frame::Goaway(goaway)).await;
        let deadline = Instant::now() + grace;
        while self.shared.lock().answers.len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5).min(grace)).await;
        }
        self.shared
            .shutdown(Status::unavailable("the session was closed"));
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

/// Sends `cancel` if the caller stops waiting before the answer arrived.
struct QuestionGuard {
    shared: Arc<Shared>,
    id: u64,
    armed: bool,
}

impl Drop for QuestionGuard {
    fn drop(&mut self) {
        if self.armed && self.shared.lock().questions.remove(self.id).is_some() {
            self.shared
                .send_nowait(Frame::Cancel(Cancel { id: self.id }));
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

    fn encode(&self, frame: &Frame) -> Result<Bytes, Status> {
        codec::encode(frame, self.codec)
            .map(Bytes::from)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode {}: {e}", frame.op())))
    }

    fn count_out(&self, bytes: &Bytes) {
        self.counters
            .frames_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    async fn send(&self, frame: Frame) -> Result<(), Status> {
        let bytes = self.encode(&frame)?;
        self.count_out(&bytes);
        self.sender.send(bytes).await.map_err(|e| match e {
            TransportError::Framing(fe) => Status::limit(
                Reason::MAX_FRAME_BYTES,
                self.sender.max_frame_bytes() as u64,
            )
            .with_details(serde_json::json!({ "error": fe.to_string() })),
            other => Status::unavailable(format!("cannot send: {other}")),
        })
    }

    /// Sends from code that cannot wait (drops, the reader). Frames sent this
    /// way may overtake queued ones only when the queue is full; every such
    /// frame (release, cancel, pong, an error answer) is order-independent.
    fn send_nowait(self: &Arc<Self>, frame: Frame) {
        let Ok(bytes) = self.encode(&frame) else {
            return;
        };
        self.count_out(&bytes);
        match self.sender.try_send(bytes) {
            Ok(None) | Err(_) => {}
            Ok(Some(bytes)) => {
                let sender = self.sender.clone();
                tokio::spawn(async move {
                    let _ = sender.send(bytes).await;
                });
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
    /// local objects.
    fn describe_caps(
        self: &Arc<Self>,
        st: &mut State,
        caps: &[Capability],
    ) -> Result<Vec<CapDescriptor>, Status> {
        let max = self.config.limits.max_exports;
        caps.iter()
            .map(|cap| match &cap.kind {
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
            })
            .collect()
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
                    None if st.revoked_exports.contains(id) => {
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
            armed: true,
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
            caps,
            parent: scope.as_ref().map(|s| s.answer),
            deadline_ms,
            keep: false,
            stream: None,
        });
        let span = tracing::debug_span!("call", cap, method, id);
        let outcome = async {
            self.send(frame).await?;
            let parent = scope.map(|s| s.cancel);
            tokio::select! {
                r = reply => {
                    guard.armed = false;
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
        drop(guard);
        let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
        self.counters.call_done(code);
        self.emit(Event::Call {
            direction: Direction::Outgoing,
            cap,
            method: method.to_owned(),
            id,
            duration: started.elapsed(),
            outcome: code,
        });
        outcome
    }

    /// Handles one decoded frame. An `Err` is a connection-fatal violation.
    fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Status> {
        match frame {
            Frame::Hello(_) => Err(Status::protocol_violation("a second hello")),
            Frame::Call(call) => {
                self.handle_call(call);
                Ok(())
            }
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
                self.lock()
                    .draining
                    .get_or_insert(Status::unavailable(format!(
                        "the peer is closing the connection: {status}"
                    )));
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
                    self.counters
                        .last_rtt
                        .store(us + 1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tx.send(rtt);
                }
                Ok(())
            }
            Frame::Item(_) | Frame::End(_) | Frame::StreamError(_) | Frame::Credit(_) => {
                Err(Status::new(
                    Code::Unimplemented,
                    "streams are not supported by this peer yet",
                ))
            }
            other => Err(Status::protocol_violation(format!(
                "unexpected `{}` frame",
                other.op()
            ))),
        }
    }

    fn handle_result(self: &Arc<Self>, result: CallResult) {
        let mut st = self.lock();
        // A result for a question we stopped waiting on (cancelled, timed out) is dropped.
        let Some(question) = st.questions.remove(result.id) else {
            return;
        };
        let outcome = match result.outcome {
            Outcome::Ok { value, caps } => self.resolve_caps(&mut st, caps).map(|caps| Value {
                payload: value,
                caps,
            }),
            Outcome::Err(status) => Err(status),
        };
        drop(st);
        let _ = question.reply.send(outcome);
    }

    fn handle_revoked(self: &Arc<Self>, caps: Vec<u64>) {
        let failed = {
            let mut st = self.lock();
            for id in &caps {
                st.revoked_imports.insert(*id);
                st.imports.remove(*id);
            }
            st.questions.take_for_caps(&caps)
        };
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

    fn handle_call(self: &Arc<Self>, call: Call) {
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
                return self.reject(
                    id,
                    Status::new(
                        Code::Unimplemented,
                        "promise pipelining is not supported by this peer yet",
                    ),
                )
            }
        };
        let limits = &self.config.limits;
        if args.exceeds_depth(limits.max_depth) {
            return self.reject(
                id,
                Status::limit(Reason::MAX_VALUE_DEPTH, limits.max_depth as u64),
            );
        }
        let started = Instant::now();
        let deadline = deadline_ms.map(|ms| started + Duration::from_millis(ms));
        let (object, cancel, args) = {
            let mut st = self.lock();
            if let Some(s) = &st.draining {
                let status = Status::unavailable(s.message.clone());
                drop(st);
                return self.reject(id, status);
            }
            if st.answers.contains(id) {
                drop(st);
                // Reusing a live question id would cross two calls' answers.
                return self.reject(
                    id,
                    Status::protocol_violation(format!("question {id} is already running")),
                );
            }
            if st.answers.len() >= limits.max_in_flight_in {
                drop(st);
                return self.reject(
                    id,
                    Status::limit(Reason::MAX_CONCURRENT_CALLS, limits.max_in_flight_in as u64),
                );
            }
            let object: Option<Arc<dyn Object>> = match cap {
                BOOTSTRAP_CAP => None,
                RUNTIME_CAP => Some(self.runtime.clone()),
                _ => match st.exports.get(cap) {
                    Some(e) => Some(e.object.clone()),
                    None => {
                        let status = if st.revoked_exports.contains(cap) {
                            Status::revoked(format!("capability {cap}"))
                        } else {
                            Status::new(Code::NotFound, format!("capability {cap} is not exported"))
                        };
                        drop(st);
                        return self.reject(id, status);
                    }
                },
            };
            let caps = match self.resolve_caps(&mut st, caps) {
                Ok(caps) => caps,
                Err(status) => {
                    drop(st);
                    return self.reject(id, status);
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
                    None => shared.run_bootstrap(&method, args).await,
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
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            _ = sleep_until(stop_at) => {
                cancel.cancel();
                Some(Err(Status::new(Code::DeadlineExceeded, format!("`{method}` ran past its deadline"))))
            }
            r = run => Some(r),
        }
    }

    async fn run_bootstrap(
        self: &Arc<Self>,
        method: &str,
        args: Value,
    ) -> Option<Result<Value, Status>> {
        if method != "bootstrap" {
            return Some(Err(Status::new(
                Code::Unimplemented,
                format!("the bootstrap object has no method `{method}`"),
            )));
        }
        let outcome = self.bootstrap(args).await;
        Some(outcome)
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
        let (outcome, encoded) = {
            let mut st = self.lock();
            let Some(answer) = st.answers.remove(id) else {
                return;
            };
            let result = match result {
                Some(r) => r,
                None => Err(answer
                    .stopped
                    .unwrap_or_else(|| Status::new(Code::Cancelled, "the call was cancelled"))),
            };
            if st.ended.is_some() {
                return;
            }
            let encoded = match &result {
                Ok(value) => self.describe_result(&mut st, value),
                Err(status) => Err(status.clone()),
            };
            (
                result.as_ref().map_or_else(|s| s.code, |_| Code::Ok),
                encoded,
            )
        };
        let outcome_frame = match encoded {
            Ok((value, caps)) => Outcome::Ok { value, caps },
            Err(status) => Outcome::Err(status),
        };
        let code = match &outcome_frame {
            Outcome::Ok { .. } => outcome,
            Outcome::Err(s) => s.code,
        };
        if let Err(status) = self
            .send(Frame::Result(CallResult {
                id,
                outcome: outcome_frame,
            }))
            .await
        {
            // Typically a result over the frame limit: tell the caller instead.
            self.send_nowait(Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            }));
        }
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

    /// Ends the session: pending questions fail with `status`, running
    /// handlers are stopped, the tables are cleared and the transport closed.
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
        for q in questions {
            let _ = q.reply.send(Err(status.clone()));
        }
        self.sender.close_now(CloseReason::normal());
        self.closed.cancel();
        self.emit(Event::Closed { status });
    }

    /// Tells the peer why the connection ends, then ends it.
    async fn fail(self: &Arc<Self>, status: Status) {
        tracing::warn!(%status, "closing the connection");
        self.emit(Event::Error {
            status: status.clone(),
        });
        let _ = self
            .send(Frame::Goaway(Goaway {
                status: status.clone(),
                grace_ms: 0,
            }))
            .await;
        self.shutdown(status);
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
        if let Ok(bytes) = self.encode(&Frame::Revoked(Revoked { caps: ids.clone() })) {
            self.count_out(&bytes);
            let sender = self.sender.clone();
            tokio::spawn(async move {
                let _ = sender.send(bytes).await;
            });
        }
        self.emit(Event::Revoke {
            direction: Direction::Outgoing,
            caps: ids,
        });
    }
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
        shared
            .counters
            .frames_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared
            .counters
            .bytes_in
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
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
    };
    shared.shutdown(end);
}
