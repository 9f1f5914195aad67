//! The capnweb dialect: wire-compatible with npm `capnweb` 0.12 over any
//! transport that carries JSON text frames (WebSocket text messages,
//! newline-delimited stdio).
//!
//! A [`CapnwebSession`] maps capnweb's tables onto capwire objects: its
//! export 0 is a capwire [`Capability`] (the "main" object the peer sees),
//! `push`ed calls are capwire calls on the exported capabilities, their
//! results wait in the export table until `pull`ed, and capabilities the
//! peer exports (functions, `RpcTarget`s) become capwire capabilities whose
//! calls are `push` + `pull` to the peer. `docs/capnweb.md` lists what is
//! supported and how errors map.

mod eval;
mod expr;
mod messages;
mod remap;
mod stub;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value as Json};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::attestation::TransportKind;
use crate::capability::{CapKind, Capability};
use crate::engine::answers::{AnswerKind, Answers};
use crate::engine::{AnswerHost, Limits};
use crate::transport::{CloseReason, FrameSender, Transport};
use crate::value::Value;

use messages::read_loop;
use stub::PeerStub;

/// The WebSocket close code capnweb uses after `abort`.
pub const ABORT_CLOSE_CODE: u16 = 3000;

/// How long one HTTP batch may take to answer its pulls.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The engine's answer table as capnweb uses it: a `push` is a kept answer
/// (numbered by the peer), settled when its expression is evaluated; its
/// `pull`s and the expressions that pipeline on it wait in its queue.
struct Pushes;

impl AnswerHost for Pushes {
    /// Nothing stops an evaluation: a released push still settles (and is
    /// freed then), as capnweb's own server lets it run.
    type Running = ();
    type Value = Value;
    type Waiting = oneshot::Sender<Result<Value, Status>>;
}

enum Export {
    /// A capability: the main object, or one we introduced (`["export", -n]`).
    Cap { cap: Capability, refs: u64 },
    /// A pipe the peer opened (`["pipe"]`): its `stream` writes go into
    /// `sink`; `source` is its readable end until a `["readable", id]`
    /// takes it.
    Pipe {
        sink: Capability,
        source: Option<Capability>,
        refs: u64,
    },
}

/// Items a pipe from the peer buffers before its writes wait for the reader.
const PIPE_WINDOW: usize = 16;

struct State {
    /// Capabilities (ids ≤ 0) and the peer's pipes (positive ids).
    exports: HashMap<i64, Export>,
    /// The peer's pushes (positive ids, numbered with its pipes).
    pushes: Answers<Pushes>,
    /// `push`es received so far: the next one is export `pushed + 1`.
    pushed: i64,
    /// The last negative export id we minted.
    minted: i64,
    /// Our own `push`es: the next one is import `asked + 1`.
    asked: i64,
    /// Our pushes and the peer's exported promises, waiting for `resolve`/`reject`.
    waiting: HashMap<i64, oneshot::Sender<Result<Json, Json>>>,
    /// The peer's capabilities we hold: id -> (handle, introductions).
    stubs: HashMap<i64, (Weak<PeerStub>, u64)>,
    /// The same handles by address, to send them back as `["import", id]`.
    stub_ids: HashMap<usize, i64>,
    /// Stubs on our pushes' results, by address: sent as `["pipeline", id, path]`.
    pipelined: HashMap<usize, (i64, Json)>,
    /// Streams we are pumping into pipes, by the address of the marker
    /// capability that stands for them in a value: sent as `["readable", id]`.
    pipes: HashMap<usize, i64>,
    ended: Option<Status>,
}

impl State {
    /// Entries in the export table, pushes included: what `max_exports` bounds.
    fn export_count(&self) -> usize {
        self.exports.len() + self.pushes.len()
    }

    /// Takes the peer's next positive id, within `max_exports` (a peer that
    /// never releases cannot make the table grow without bound).
    fn next_import(&mut self, limits: &Limits) -> Result<i64, Status> {
        if self.export_count() >= limits.max_exports {
            return Err(Status::limit(
                capwire_proto::Reason::MAX_CAPS_PER_CONNECTION,
                limits.max_exports as u64,
            ));
        }
        self.pushed += 1;
        Ok(self.pushed)
    }

    /// Files the pipe the peer's `["pipe"]` opened under its next id.
    fn import_pipe(&mut self, limits: &Limits, pipe: Export) -> Result<i64, Status> {
        let id = self.next_import(limits)?;
        self.exports.insert(id, pipe);
        Ok(id)
    }

    /// Records the peer's `push` as an answer under its next id.
    fn import_push(&mut self, limits: &Limits) -> Result<i64, Status> {
        let id = self.next_import(limits)?;
        self.pushes
            .insert(push_key(id), None, AnswerKind::Kept, false, ());
        Ok(id)
    }
}

/// A push id as the answer table keys it (push ids are positive).
fn push_key(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(u64::MAX)
}

struct Inner {
    state: Mutex<State>,
    /// Export-table and in-flight bounds (`max_exports`, `max_in_flight_in`).
    limits: Limits,
    /// Held from taking one of our ids until the message that uses it is
    /// queued: the peer numbers our messages in the order they arrive.
    numbering: tokio::sync::Mutex<()>,
    sender: FrameSender,
    closed: CancellationToken,
    /// One HTTP batch: when the input ends, answer what was pulled, then close.
    batch: bool,
    /// `pull`s not answered yet.
    pulls: AtomicUsize,
    /// `pull`s and `stream` messages not answered yet (see `max_in_flight_in`).
    in_flight: AtomicUsize,
    pulled: Notify,
}

/// One capnweb connection, either side. Cheap to clone.
#[derive(Clone)]
pub struct CapnwebSession {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CapnwebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnwebSession").finish_non_exhaustive()
    }
}

/// Counts of the session's tables, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapnwebStats {
    /// Entries in the export table (the main object included).
    pub exports: usize,
    /// The peer's capabilities held here (its main object excluded).
    pub imports: usize,
}

impl CapnwebSession {
    /// Runs capnweb over `transport`, offering `main` as export 0, within
    /// the default [`Limits`]. The peer's own main object is
    /// [`CapnwebSession::peer_main`].
    pub fn new(transport: Transport, main: Capability) -> CapnwebSession {
        CapnwebSession::with_limits(transport, main, Limits::default())
    }

    /// [`CapnwebSession::new`] within `limits`: `max_exports` bounds the
    /// export table (the peer's unreleased pushes and pipes, and the
    /// capabilities introduced to it: past it a push aborts the session and
    /// a result that would export one more is rejected); `max_in_flight_in`
    /// bounds the peer's unanswered `pull`s and `stream` writes (past it the
    /// session aborts, as a native session refuses calls).
    pub fn with_limits(transport: Transport, main: Capability, limits: Limits) -> CapnwebSession {
        let Transport {
            sender,
            receiver,
            attestation,
        } = transport;
        let mut exports = HashMap::new();
        exports.insert(0, Export::Cap { cap: main, refs: 1 });
        let inner = Arc::new(Inner {
            limits,
            state: Mutex::new(State {
                exports,
                pushes: Answers::default(),
                pushed: 0,
                minted: 0,
                asked: 0,
                waiting: HashMap::new(),
                stubs: HashMap::new(),
                stub_ids: HashMap::new(),
                pipelined: HashMap::new(),
                pipes: HashMap::new(),
                ended: None,
            }),
            numbering: tokio::sync::Mutex::new(()),
            sender,
            closed: CancellationToken::new(),
            batch: attestation.transport == TransportKind::HttpBatch,
            pulls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            pulled: Notify::new(),
        });
        tokio::spawn(read_loop(inner.clone(), receiver));
        CapnwebSession { inner }
    }

    /// The peer's main object (its import 0).
    pub fn peer_main(&self) -> Capability {
        self.inner.stub(0)
    }

    /// Table sizes.
    pub fn stats(&self) -> CapnwebStats {
        let st = self.inner.lock();
        CapnwebStats {
            exports: st.export_count(),
            imports: st.stubs.keys().filter(|id| **id != 0).count(),
        }
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves when the session has ended, with the reason.
    pub async fn closed(&self) -> Status {
        self.inner.closed.cancelled().await;
        self.inner
            .lock()
            .ended
            .clone()
            .unwrap_or_else(|| Status::unavailable("closed"))
    }

    /// Ends the session: the transport closes.
    pub async fn close(&self) {
        self.inner
            .end(Status::unavailable("the session was closed"));
        let _ = self.inner.sender.close(CloseReason::normal()).await;
    }
}

/// Why the session aborts: a capnweb `Error` with this message.
fn violation(message: impl Into<String>) -> Status {
    Status::protocol_violation(message)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more `pull` or `stream` message of the peer's in flight,
    /// or refuses it past `max_in_flight_in` (the session aborts).
    fn take_in_flight(&self) -> Result<(), Status> {
        let max = self.limits.max_in_flight_in;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::limit(
                capwire_proto::Reason::MAX_CONCURRENT_CALLS,
                max as u64,
            ));
        }
        Ok(())
    }

    /// The outcome of push `id`, now or when it settles; `None` if `id` is
    /// not a push (never made, or released).
    fn push_outcome(
        &self,
        id: i64,
    ) -> Option<impl std::future::Future<Output = Result<Value, Status>>> {
        let mut st = self.lock();
        let key = push_key(id);
        let rx = match st.pushes.pipeline_target(key) {
            Ok(Some(outcome)) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(outcome.clone());
                rx
            }
            Ok(None) => {
                let (tx, rx) = oneshot::channel();
                st.pushes.enqueue(key, Vec::new(), tx);
                rx
            }
            Err(_) => return None,
        };
        Some(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Status::unavailable(
                    "the session ended before the push settled",
                ))
            })
        })
    }

    /// Push `id` was evaluated: keep its outcome and give it to what waits.
    fn settle_push(&self, id: i64, outcome: Result<Value, Status>) {
        let key = push_key(id);
        let mut batch = self.lock().pushes.settle(key, outcome.clone());
        loop {
            for waiting in batch {
                let _ = waiting.waiting.send(outcome.clone());
            }
            match self.lock().pushes.next_batch(key) {
                Ok(more) => batch = more,
                Err(freed) => return drop(freed),
            }
        }
    }

    /// Replaces the sources in an outgoing value by pipes: `["pipe"]` goes
    /// out now, and the value will carry `["readable", id]`.
    fn outgoing(self: &Arc<Self>, value: Value) -> BoxFuture<'_, Result<Value, Status>> {
        self.outgoing_inner(value).boxed()
    }

    async fn outgoing_inner(self: &Arc<Self>, mut value: Value) -> Result<Value, Status> {
        for i in 0..value.caps.len() {
            // A promise pipelined on one of our pushes goes as its reference.
            if let CapKind::Promised(core, path) = &value.caps[i].kind {
                if core.session().is_none() {
                    if let crate::promise::Sent::Proxied { at, .. } = core.ensure_sent().await {
                        value.caps[i] = at(path);
                        continue;
                    }
                }
            }
            let source = match &value.caps[i].kind {
                CapKind::Local(o) | CapKind::Served { object: o, .. } => {
                    o.type_name() == crate::stream::SOURCE_TYPE
                }
                _ => false,
            };
            if source {
                let items = value.caps[i].call_stream("read", Value::null());
                value.caps[i] = self.readable(items).await?;
            }
        }
        Ok(value)
    }

    fn frame(message: &Json) -> Bytes {
        Bytes::from(message.to_string())
    }

    async fn send(&self, message: Json) -> Result<(), Status> {
        self.sender
            .send(Inner::frame(&message))
            .await
            .map_err(|e| Status::unavailable(format!("cannot send: {e}")))
    }

    /// From code that cannot wait (drops): queued behind what was sent before.
    fn send_now(&self, message: Json) {
        let _ = self.sender.send_now(Inner::frame(&message));
    }

    /// The batch's messages are all in: answer every pull, then close (the
    /// transport writes the HTTP response). A pull that takes longer than
    /// the batch allows is left out.
    async fn finish_batch(&self) {
        let deadline = tokio::time::Instant::now() + BATCH_TIMEOUT;
        loop {
            let pulled = self.pulled.notified();
            tokio::pin!(pulled);
            pulled.as_mut().enable();
            if self.pulls.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, pulled).await.is_err() {
                tracing::warn!("an HTTP batch call did not settle in time");
                break;
            }
        }
        let _ = self.sender.close(CloseReason::normal()).await;
        self.end(Status::unavailable("the HTTP batch is answered"));
    }

    fn end(&self, status: Status) {
        let waiting = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            st.ended = Some(status);
            // Taken out and dropped after the lock: what they hold may be
            // the peer's stubs, whose drop takes the lock. Dropping the
            // pushes' waiters tells them the session ended.
            let exports = std::mem::take(&mut st.exports);
            (exports, st.pushes.clear(), std::mem::take(&mut st.waiting))
        };
        drop(waiting);
        self.closed.cancel();
    }

    /// Sends `abort` and closes with 3000, as capnweb does.
    async fn abort(&self, status: Status) {
        tracing::warn!(%status, "aborting the capnweb session");
        let err = json!(["error", "Error", status.message]);
        let _ = self.send(json!(["abort", err])).await;
        let mut reason = status.message.clone();
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        let _ = self
            .sender
            .close(CloseReason::new(ABORT_CLOSE_CODE, reason))
            .await;
        self.end(status);
    }

    /// The capnweb expression for an outgoing value: our capabilities are
    /// exported under fresh negative ids; the peer's own come back as imports.
    fn encode_value(&self, value: &Value) -> Result<Json, Status> {
        let tree: Json = value.decode()?;
        if expr::too_deep(&tree, expr::MAX_DEPTH, false) {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "the value nests deeper than capnweb's limit of {}",
                    expr::MAX_DEPTH
                ),
            ));
        }
        let mut st = self.lock();
        expr::encode_tree(&tree, &mut |n| {
            let cap = value
                .caps
                .get(n)
                .ok_or_else(|| Status::new(Code::InvalidArgument, format!("no capability {n}")))?;
            if let CapKind::Local(obj) = &cap.kind {
                // The peer's own capability goes back as its id.
                let addr = Arc::as_ptr(obj) as *const () as usize;
                if let Some(id) = st.stub_ids.get(&addr) {
                    return Ok(json!(["import", id]));
                }
                if let Some(id) = st.pipes.get(&addr) {
                    return Ok(json!(["readable", id]));
                }
                if let Some((id, path)) = st.pipelined.get(&addr) {
                    return Ok(json!(["pipeline", id, path]));
                }
            }
            if st.export_count() >= self.limits.max_exports {
                return Err(Status::limit(
                    capwire_proto::Reason::MAX_CAPS_PER_CONNECTION,
                    self.limits.max_exports as u64,
                ));
            }
            st.minted -= 1;
            let id = st.minted;
            st.exports.insert(
                id,
                Export::Cap {
                    cap: cap.clone(),
                    refs: 1,
                },
            );
            // A sink is a WritableStream to the peer: it writes with `stream`.
            let sink = match &cap.kind {
                CapKind::Local(o) | CapKind::Served { object: o, .. } => {
                    o.type_name() == crate::stream::SINK_TYPE
                }
                _ => false,
            };
            Ok(json!([if sink { "writable" } else { "export" }, id]))
        })
    }

    /// Arguments travel as a raw list of expressions.
    fn encode_args(&self, args: &Value) -> Result<Json, Status> {
        match self.encode_value(args)? {
            // `encode_tree` wraps arrays: unwrap the one level.
            Json::Array(mut outer) if outer.len() == 1 && outer[0].is_array() => {
                Ok(outer.remove(0))
            }
            Json::Null => Ok(json!([])),
            other => Ok(json!([other])),
        }
    }
}
