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
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use serde_json::{json, Value as Json};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::attestation::TransportKind;
use crate::capability::{CapKind, Capability};
use crate::transport::{CloseReason, FrameSender, Transport};
use crate::value::Value;

use messages::read_loop;
use stub::PeerStub;

/// The WebSocket close code capnweb uses after `abort`.
pub const ABORT_CLOSE_CODE: u16 = 3000;

/// Entries the export table may hold (push results not yet released, and
/// capabilities we introduced): a peer that never releases cannot make it
/// grow without bound. Past it, a push aborts the session and a result that
/// would export one more capability is rejected.
pub const MAX_EXPORTS: usize = 4096;

/// `pull`s and `stream` messages of the peer's that may be unanswered at
/// once (each holds a task, and a stream write its chunk): past it the
/// session aborts, as a native session refuses calls past
/// `max_concurrent_calls`.
pub const MAX_IN_FLIGHT: usize = 16 * 1024;

/// Messages waiting for room in the transport queue before the reader
/// stops reading (a peer that sends without reading cannot make us buffer
/// without bound).
const MAX_BACKLOG: usize = 64;

/// How long one HTTP batch may take to answer its pulls.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Outcome = Shared<BoxFuture<'static, Result<Value, Status>>>;

enum Export {
    /// A capability: the main object, or one we introduced (`["export", -n]`).
    Cap { cap: Capability, refs: u64 },
    /// The result of a `push`, settling or settled.
    Promise { outcome: Outcome, refs: u64 },
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
    exports: HashMap<i64, Export>,
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
    /// Files what the peer's next `push` or `pipe` made under the next
    /// positive id, within [`MAX_EXPORTS`].
    fn import_next(&mut self, entry: Export) -> Result<i64, Status> {
        if self.exports.len() >= MAX_EXPORTS {
            return Err(Status::limit(
                capwire_proto::Reason::MAX_CAPS_PER_CONNECTION,
                MAX_EXPORTS as u64,
            ));
        }
        self.pushed += 1;
        self.exports.insert(self.pushed, entry);
        Ok(self.pushed)
    }
}

struct Inner {
    state: Mutex<State>,
    /// Held from taking one of our ids until the message that uses it is
    /// queued: the peer numbers our messages in the order they arrive.
    numbering: tokio::sync::Mutex<()>,
    sender: FrameSender,
    closed: CancellationToken,
    /// One HTTP batch: when the input ends, answer what was pulled, then close.
    batch: bool,
    /// `pull`s not answered yet.
    pulls: AtomicUsize,
    /// `pull`s and `stream` messages not answered yet (see [`MAX_IN_FLIGHT`]).
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
    /// Runs capnweb over `transport`, offering `main` as export 0. The
    /// peer's own main object is [`CapnwebSession::peer_main`].
    pub fn new(transport: Transport, main: Capability) -> CapnwebSession {
        let Transport {
            sender,
            receiver,
            attestation,
        } = transport;
        let mut exports = HashMap::new();
        exports.insert(0, Export::Cap { cap: main, refs: 1 });
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                exports,
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
            exports: st.exports.len(),
            imports: st.stubs.keys().filter(|id| **id != 0).count(),
        }
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
    /// or refuses it past [`MAX_IN_FLIGHT`] (the session aborts).
    fn take_in_flight(&self) -> Result<(), Status> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::limit(
                capwire_proto::Reason::MAX_CONCURRENT_CALLS,
                MAX_IN_FLIGHT as u64,
            ));
        }
        Ok(())
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
            st.exports.clear();
            std::mem::take(&mut st.waiting)
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
            if st.exports.len() >= MAX_EXPORTS {
                return Err(Status::limit(
                    capwire_proto::Reason::MAX_CAPS_PER_CONNECTION,
                    MAX_EXPORTS as u64,
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
