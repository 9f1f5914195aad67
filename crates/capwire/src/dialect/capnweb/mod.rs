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

mod expr;
mod remap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use capwire_proto::{Code, Status};
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use serde_json::{json, Map, Value as Json};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::attestation::TransportKind;
use crate::capability::{CapKind, Capability};
use crate::object::{CallContext, Object, PipelineAt, Pipelined};
use crate::transport::{CloseReason, FrameReceiver, FrameSender, Transport};
use crate::value::Value;

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

/// A capability the peer exported to us: calls become `push` + `pull`. A
/// `writable` one is the peer's WritableStream, seen here as a capwire sink:
/// `write`, `end` and `abort` become `stream` messages (acknowledged by
/// their `resolve`, with no pull or release).
struct PeerStub {
    inner: Weak<Inner>,
    id: i64,
    /// A stub on one of our pushes: the path inside its result, and the
    /// push it keeps alive.
    on: Option<(Json, Arc<PushRef>)>,
    writable: bool,
}

/// One of our pushes, pipelined on: released when its result and every stub
/// on it are gone.
struct PushRef {
    inner: Weak<Inner>,
    id: i64,
}

impl Drop for PushRef {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().waiting.remove(&self.id);
            inner.send_now(json!(["release", self.id, 1]));
        }
    }
}

impl Drop for PeerStub {
    fn drop(&mut self) {
        if self.on.is_some() {
            if let Some(inner) = self.inner.upgrade() {
                let addr = self as *const PeerStub as usize;
                inner.lock().pipelined.remove(&addr);
            }
            return;
        }
        if self.id == 0 {
            return;
        }
        if let Some(inner) = self.inner.upgrade() {
            let n = {
                let mut st = inner.lock();
                match st.stubs.get(&self.id) {
                    Some((weak, n)) if weak.strong_count() == 0 => {
                        let n = *n;
                        st.stubs.remove(&self.id);
                        st.stub_ids.retain(|_, id| *id != self.id);
                        n
                    }
                    _ => return,
                }
            };
            inner.send_now(json!(["release", self.id, n]));
        }
    }
}

impl PeerStub {
    /// The property path a call of `method` names: a function stub is
    /// called with its own path; `call` names that.
    fn call_path(&self, method: &str) -> Json {
        let mut path = match &self.on {
            Some((Json::Array(p), _)) => p.clone(),
            _ => Vec::new(),
        };
        if method != "call" {
            path.push(Json::from(method));
        }
        Json::Array(path)
    }

    /// Sends `["push", ["pipeline", id, path, args]]`: the push's id and the
    /// channel its settlement arrives on (once pulled).
    #[allow(clippy::type_complexity)]
    async fn push(
        &self,
        path: Json,
        args: Value,
    ) -> Result<(Arc<Inner>, i64, oneshot::Receiver<Result<Json, Json>>), Status> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| Status::unavailable("the capnweb session is closed"))?;
        let args = inner.outgoing(args).await?;
        let args = inner.encode_args(&args)?;
        let (id, rx) = inner
            .send_numbered(|_| json!(["push", ["pipeline", self.id, path, args]]))
            .await?;
        Ok((inner, id, rx))
    }

    /// A sink method on the peer's WritableStream.
    async fn stream_call(&self, method: &str, args: Value) -> Result<Value, Status> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| Status::unavailable("the capnweb session is closed"))?;
        let (path, list) = match method {
            "write" => {
                let args = inner.outgoing(args).await?;
                ("write", json!([inner.encode_value(&args)?]))
            }
            "end" => ("close", json!([])),
            "abort" => {
                let status: Status = args
                    .decode()
                    .unwrap_or_else(|_| Status::new(Code::Aborted, "the writer aborted"));
                ("abort", json!([expr::encode_error(&status)]))
            }
            other => {
                return Err(Status::new(
                    Code::Unimplemented,
                    format!("a capnweb WritableStream has no method `{other}`"),
                ))
            }
        };
        // The stream message takes our next positive id, like a push.
        let (_, rx) = inner
            .send_numbered(|_| json!(["stream", ["pipeline", self.id, [path], list]]))
            .await?;
        match rx
            .await
            .map_err(|_| Status::unavailable("the capnweb session closed"))?
        {
            Ok(_) => Ok(Value::null()),
            Err(err) => Err(expr::decode_error(&err)),
        }
    }
}

impl Object for PeerStub {
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        let path = self.call_path(method);
        let this = self.clone();
        if self.writable {
            let method = method.to_owned();
            return async move { this.stream_call(&method, args).await }.boxed();
        }
        async move {
            let (inner, id, rx) = this.push(path, args).await?;
            inner.send(json!(["pull", id])).await?;
            let settled = rx
                .await
                .map_err(|_| Status::unavailable("the capnweb session closed"))?;
            let _ = inner.send(json!(["release", id, 1])).await;
            match settled {
                Ok(expr) => inner.eval_value(expr).await,
                Err(err) => Err(expr::decode_error(&err)),
            }
        }
        .boxed()
    }

    fn type_name(&self) -> &str {
        "capnweb stub"
    }

    fn pipelines(&self) -> bool {
        !self.writable
    }

    /// A `push` now; its `pull` only when the result is awaited. Calls on
    /// the result travel as pushes on `["pipeline", id, path]`.
    fn call_pipelined(
        self: Arc<Self>,
        method: &str,
        args: Value,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<Pipelined, Status>> {
        let path = self.call_path(method);
        async move {
            let (inner, id, rx) = self.push(path, args).await?;
            let push = Arc::new(PushRef {
                inner: self.inner.clone(),
                id,
            });
            let held = push.clone();
            let me = inner.clone();
            let result = async move {
                me.send(json!(["pull", id])).await?;
                let settled = rx
                    .await
                    .map_err(|_| Status::unavailable("the capnweb session closed"))?;
                let value = match settled {
                    Ok(expr) => me.eval_value(expr).await,
                    Err(err) => Err(expr::decode_error(&err)),
                };
                drop(held);
                value
            }
            .boxed();
            let weak = self.inner.clone();
            let at: PipelineAt = Box::new(move |segs| match weak.upgrade() {
                Some(inner) => inner.pipeline_stub(id, segs, push.clone()),
                None => Capability::error(Status::unavailable("the capnweb session is closed")),
            });
            Ok(Pipelined { result, at })
        }
        .boxed()
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

    /// Takes our next positive id for a `push`, `stream` or `pipe` we send,
    /// with the channel its `resolve`/`reject` will arrive on.
    #[allow(clippy::type_complexity)]
    fn ask(&self) -> Result<(i64, oneshot::Receiver<Result<Json, Json>>), Status> {
        let mut st = self.lock();
        if let Some(s) = &st.ended {
            return Err(s.clone());
        }
        st.asked += 1;
        let id = st.asked;
        let (tx, rx) = oneshot::channel();
        st.waiting.insert(id, tx);
        Ok((id, rx))
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

    /// Sends a message that takes our next positive id (`push`, `stream`,
    /// `pipe`), with the channel its `resolve`/`reject` arrives on.
    #[allow(clippy::type_complexity)]
    async fn send_numbered(
        &self,
        message: impl FnOnce(i64) -> Json,
    ) -> Result<(i64, oneshot::Receiver<Result<Json, Json>>), Status> {
        let _order = self.numbering.lock().await;
        let (id, rx) = self.ask()?;
        self.send(message(id)).await?;
        Ok((id, rx))
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

    fn stub(self: &Arc<Self>, id: i64) -> Capability {
        self.stub_of(id, false)
    }

    fn stub_of(self: &Arc<Self>, id: i64, writable: bool) -> Capability {
        let mut st = self.lock();
        if let Some((weak, n)) = st.stubs.get_mut(&id) {
            if let Some(live) = weak.upgrade() {
                *n += 1;
                return Capability::from_arc(live);
            }
        }
        let stub = Arc::new(PeerStub {
            inner: Arc::downgrade(self),
            id,
            on: None,
            writable,
        });
        st.stubs.insert(id, (Arc::downgrade(&stub), 1));
        st.stub_ids.insert(Arc::as_ptr(&stub) as usize, id);
        Capability::from_arc(stub)
    }

    /// A stub on the value at `segs` of our push `id`, before it settles.
    fn pipeline_stub(
        self: &Arc<Self>,
        id: i64,
        segs: &[capwire_proto::PathSeg],
        push: Arc<PushRef>,
    ) -> Capability {
        let path: Vec<Json> = segs
            .iter()
            .map(|s| match s {
                capwire_proto::PathSeg::Key(k) => Json::from(k.as_str()),
                capwire_proto::PathSeg::Index(i) => Json::from(*i),
            })
            .collect();
        let stub = Arc::new(PeerStub {
            inner: Arc::downgrade(self),
            id,
            on: Some((Json::Array(path.clone()), push)),
            writable: false,
        });
        self.lock()
            .pipelined
            .insert(Arc::as_ptr(&stub) as usize, (id, Json::Array(path)));
        Capability::from_arc(stub)
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

    /// Evaluates an incoming expression into a capwire value.
    async fn eval_value(self: &Arc<Self>, expr: Json) -> Result<Value, Status> {
        let mut caps = Vec::new();
        let tree = self.eval(expr, &mut caps, None).await?;
        value_of(&tree, caps)
    }

    /// Evaluates an expression into a value tree, collecting capabilities.
    /// Inside a `.map()` mapper, `scope` holds its numbered slots.
    fn eval<'a>(
        self: &'a Arc<Self>,
        expr: Json,
        caps: &'a mut Vec<Capability>,
        scope: Option<&'a remap::Scope>,
    ) -> BoxFuture<'a, Result<Json, Status>> {
        async move {
            match expr {
                Json::Array(items) => self.eval_array(items, caps, scope).await,
                Json::Object(map) => {
                    let mut out = Map::new();
                    for (k, v) in map {
                        let v = self.eval(v, caps, scope).await?;
                        if !expr::is_hidden_key(&k) {
                            out.insert(k, v);
                        }
                    }
                    Ok(expr::user_map(out))
                }
                other => Ok(other),
            }
        }
        .boxed()
    }

    async fn eval_array(
        self: &Arc<Self>,
        mut items: Vec<Json>,
        caps: &mut Vec<Capability>,
        scope: Option<&remap::Scope>,
    ) -> Result<Json, Status> {
        if items.len() == 1 && items[0].is_array() {
            let Some(Json::Array(inner)) = items.pop() else {
                unreachable!("checked above")
            };
            let mut out = Vec::with_capacity(inner.len());
            for item in inner {
                out.push(self.eval(item, caps, scope).await?);
            }
            return Ok(Json::Array(out));
        }
        let Some(tag) = items.first().and_then(Json::as_str).map(str::to_owned) else {
            return Err(violation(
                "an array must be escaped or start with a type tag",
            ));
        };
        if let Some(value) = expr::special(&tag, &items[1..]) {
            return value;
        }
        if tag == "error" {
            // An error as a value: its properties are a value like any other.
            if !matches!(items.get(1..3), Some([Json::String(_), Json::String(_)]))
                || items.len() > 5
            {
                return Err(violation(format!(
                    "malformed error value: {}",
                    Json::Array(items)
                )));
            }
            if let Some(props) = items.get_mut(4) {
                *props = self.eval(props.take(), caps, scope).await?;
            }
            return Ok(expr::ext_value(Json::Array(items)));
        }
        let id = items.get(1).and_then(Json::as_i64);
        let cap_ref = |cap: Capability, caps: &mut Vec<Capability>| {
            caps.push(cap);
            json!({ "$cap": caps.len() - 1 })
        };
        match (tag.as_str(), id) {
            ("export", Some(id)) => Ok(cap_ref(self.stub(id), caps)),
            ("import", Some(id)) if scope.is_some() => {
                let slot = scope.map(|s| s.slot(id)).transpose()?;
                self.graft(slot.ok_or_else(|| violation("no mapper scope")), caps)
            }
            ("import", Some(id)) => {
                let found = match self.lock().exports.get(&id) {
                    Some(Export::Cap { cap, .. }) => Some(Ok(cap.clone())),
                    Some(Export::Promise { outcome, .. }) => Some(Err(outcome.clone())),
                    Some(Export::Pipe { .. }) | None => None,
                };
                match found {
                    Some(Ok(cap)) => Ok(cap_ref(cap, caps)),
                    Some(Err(outcome)) => self.graft(outcome.await, caps),
                    None => Err(violation(format!("no such entry on exports table: {id}"))),
                }
            }
            ("promise", Some(id)) => {
                let rx = {
                    let mut st = self.lock();
                    let (tx, rx) = oneshot::channel();
                    st.waiting.insert(id, tx);
                    rx
                };
                let settled = rx
                    .await
                    .map_err(|_| Status::unavailable("the capnweb session closed"))?;
                self.send_now(json!(["release", id, 1]));
                match settled {
                    Ok(expr) => self.eval(expr, caps, None).await,
                    Err(err) => Err(expr::decode_error(&err)),
                }
            }
            ("pipeline", Some(id)) => {
                let path = items.get(2).cloned().unwrap_or(json!([]));
                let args = items.get(3).cloned();
                let base = self.base(id, scope).await?;
                let value = self.pipeline(base, path, args, scope).await?;
                self.graft(Ok(value), caps)
            }
            ("remap", Some(id)) => {
                let base = self.base(id, scope).await?;
                let value = self.remap(base, &items, scope).await?;
                self.graft(Ok(value), caps)
            }
            ("writable", Some(id)) => Ok(cap_ref(self.stub_of(id, true), caps)),
            ("readable", Some(id)) => {
                let source = match self.lock().exports.get_mut(&id) {
                    Some(Export::Pipe { source, .. }) => source.take(),
                    _ => None,
                };
                let source = source
                    .ok_or_else(|| violation(format!("no unread pipe for ReadableStream {id}")))?;
                Ok(cap_ref(source, caps))
            }
            _ => Err(violation(format!(
                "unknown special value: {}",
                Json::Array(items)
            ))),
        }
    }

    /// Moves a value's capabilities into `caps`, renumbering its placeholders.
    fn graft(
        &self,
        value: Result<Value, Status>,
        caps: &mut Vec<Capability>,
    ) -> Result<Json, Status> {
        let value = value?;
        let mut tree: Json = value.decode()?;
        let offset = caps.len();
        renumber(&mut tree, offset);
        caps.extend(value.caps.iter().cloned());
        Ok(tree)
    }

    /// What a reference's id names: an export (a push result is awaited), or
    /// inside a mapper one of its slots.
    async fn base(&self, id: i64, scope: Option<&remap::Scope>) -> Result<Base, Status> {
        if let Some(scope) = scope {
            return scope.slot(id).map(Base::Value);
        }
        let target = match self.lock().exports.get(&id) {
            Some(Export::Cap { cap, .. }) => Ok(cap.clone()),
            Some(Export::Promise { outcome, .. }) => Err(outcome.clone()),
            Some(Export::Pipe { .. }) | None => {
                return Err(violation(format!("no such entry on exports table: {id}")))
            }
        };
        match target {
            Ok(cap) => Ok(Base::Cap(cap)),
            Err(outcome) => outcome.await.map(Base::Value),
        }
    }

    /// `["pipeline", id, path, args]`: a property path of `base`, and a call
    /// when `args` is present.
    async fn pipeline(
        self: &Arc<Self>,
        base: Base,
        path: Json,
        args: Option<Json>,
        scope: Option<&remap::Scope>,
    ) -> Result<Value, Status> {
        let Json::Array(path) = path else {
            return Err(violation("a pipeline path is a list"));
        };
        let args = match args {
            Some(Json::Array(list)) => {
                let mut caps = Vec::new();
                let mut items = Vec::with_capacity(list.len());
                for a in list {
                    items.push(self.eval(a, &mut caps, scope).await?);
                }
                Some(value_of(&Json::Array(items), caps)?)
            }
            Some(_) => return Err(violation("pipeline arguments are a list")),
            None => None,
        };
        // Walk the path: through data until a capability, whose method is the rest.
        let (cap, rest) = match base {
            Base::Cap(cap) => (cap, path.as_slice()),
            Base::Value(value) => match locate(&value, &path)? {
                Located::Cap(cap, used) => (cap, &path[used..]),
                Located::Value(v) if args.is_none() => return Ok(v),
                Located::Value(_) => {
                    return Err(Status::new(
                        Code::InvalidArgument,
                        format!("'{}' is not a function.", path_text(&path)),
                    ))
                }
            },
        };
        let Some(args) = args else {
            // A reference, not a call: the capability itself, when the path
            // ends at it.
            if rest.is_empty() {
                return Ok(Value::capability(cap));
            }
            return Err(Status::new(
                Code::Unimplemented,
                "reading a property of a capwire object is not supported: call a method",
            ));
        };
        let method = match rest {
            [] => "call".to_owned(),
            [Json::String(m)] => m.clone(),
            _ => {
                return Err(Status::new(
                    Code::InvalidArgument,
                    format!("'{}' is not a function.", path_text(&path)),
                ))
            }
        };
        let streams = match &cap.kind {
            CapKind::Local(o) | CapKind::Served { object: o, .. } => o.is_stream(&method),
            _ => false,
        };
        if streams {
            return Ok(Value::capability(
                self.readable(cap.call_stream(&method, args)).await?,
            ));
        }
        cap.call(&method, args).await
    }

    /// A capwire stream as a capnweb ReadableStream: `["pipe"]` now, a value
    /// holding `["readable", p]`, and the items pumped into the pipe as
    /// `stream` writes, one acknowledged before the next, then `close` (or
    /// `abort` with the stream's error) and `release`.
    async fn readable(
        self: &Arc<Self>,
        mut items: crate::ItemStream,
    ) -> Result<Capability, Status> {
        use futures_util::StreamExt;
        // Stands for the pipe inside a value until the value is sent; its
        // address is the key of `pipes`.
        let marker: Arc<dyn Object> = Arc::new(crate::session::Failing(Status::new(
            Code::Unimplemented,
            "a capnweb ReadableStream has no methods",
        )));
        let addr = Arc::as_ptr(&marker) as *const () as usize;
        let (pipe, _) = self.send_numbered(|_| json!(["pipe"])).await?;
        self.lock().pipes.insert(addr, pipe);
        let me = self.clone();
        tokio::spawn(async move {
            let write = |path: &str, list: Json| {
                let me = me.clone();
                let path = path.to_owned();
                async move {
                    let (_, rx) = me
                        .send_numbered(|_| json!(["stream", ["pipeline", pipe, [path], list]]))
                        .await?;
                    match rx.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(expr::decode_error(&e)),
                        Err(_) => Err(Status::unavailable("the capnweb session closed")),
                    }
                }
            };
            let mut ended = false;
            while let Some(item) = items.next().await {
                let item = match item {
                    Ok(v) => me.outgoing(v).await,
                    Err(e) => Err(e),
                };
                let r = match item.and_then(|v| me.encode_value(&v)) {
                    Ok(chunk) => write("write", json!([chunk])).await,
                    Err(status) => {
                        ended = true;
                        write("abort", json!([expr::encode_error(&status)])).await
                    }
                };
                if r.is_err() || ended {
                    ended = true;
                    break;
                }
            }
            if !ended {
                let _ = write("close", json!([])).await;
            }
            let _ = me.send(json!(["release", pipe, 1])).await;
            me.lock().pipes.remove(&addr);
        });
        Ok(Capability::from_arc(marker))
    }
}

/// What a reference starts from.
enum Base {
    Cap(Capability),
    Value(Value),
}

fn path_text(path: &[Json]) -> String {
    path.iter()
        .map(|p| match p {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

enum Located {
    /// A capability, reached after this many path segments.
    Cap(Capability, usize),
    /// Plain data at the end of the path.
    Value(Value),
}

/// Follows `path` into a value: stops at the first capability.
fn locate(value: &Value, path: &[Json]) -> Result<Located, Status> {
    let tree: Json = value.decode()?;
    let mut node = &tree;
    for (i, seg) in path.iter().enumerate() {
        if let Json::Object(map) = node {
            if let Some(n) = expr::placeholder(map) {
                return Ok(Located::Cap(value.cap(n)?, i));
            }
        }
        let data = match node {
            Json::Object(map) => expr::escaped(map)
                .map(|m| m as &Map<String, Json>)
                .or(Some(map)),
            _ => None,
        };
        node = match (seg, node, data) {
            (Json::String(k), _, Some(map)) => map.get(k).unwrap_or(&Json::Null),
            (Json::Number(n), Json::Array(items), _) => n
                .as_u64()
                .and_then(|n| items.get(n as usize))
                .unwrap_or(&Json::Null),
            _ => &Json::Null,
        };
    }
    if let Json::Object(map) = node {
        if let Some(n) = expr::placeholder(map) {
            return Ok(Located::Cap(value.cap(n)?, path.len()));
        }
    }
    // The data at the path, with the capabilities it holds.
    let mut sub = node.clone();
    let mut used = Vec::new();
    collect_caps(&mut sub, value, &mut used)?;
    Ok(Located::Value(Value::with_caps(&sub, used)?))
}

/// Renumbers the placeholders of a subtree into a fresh table.
fn collect_caps(tree: &mut Json, value: &Value, used: &mut Vec<Capability>) -> Result<(), Status> {
    match tree {
        Json::Array(items) => {
            for i in items {
                collect_caps(i, value, used)?;
            }
        }
        Json::Object(map) => {
            if let Some(n) = expr::placeholder(map) {
                used.push(value.cap(n)?);
                *tree = json!({ "$cap": used.len() - 1 });
                return Ok(());
            }
            let inner = if expr::escaped(map).is_some() {
                map.get_mut("$esc").and_then(Json::as_object_mut)
            } else {
                Some(map)
            };
            for v in inner.into_iter().flat_map(|m| m.values_mut()) {
                collect_caps(v, value, used)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Adds `offset` to every placeholder of a tree.
fn renumber(tree: &mut Json, offset: usize) {
    match tree {
        Json::Array(items) => items.iter_mut().for_each(|i| renumber(i, offset)),
        Json::Object(map) => {
            if let Some(n) = expr::placeholder(map) {
                *tree = json!({ "$cap": n + offset });
                return;
            }
            let inner = if expr::escaped(map).is_some() {
                map.get_mut("$esc").and_then(Json::as_object_mut)
            } else {
                Some(map)
            };
            for v in inner.into_iter().flat_map(|m| m.values_mut()) {
                renumber(v, offset);
            }
        }
        _ => {}
    }
}

async fn read_loop(inner: Arc<Inner>, mut receiver: FrameReceiver) {
    loop {
        let next = tokio::select! {
            r = receiver.recv() => r,
            _ = inner.closed.cancelled() => return,
        };
        let bytes = match next {
            Ok(Some(b)) => b,
            Ok(None) if inner.batch => return inner.finish_batch().await,
            Ok(None) => return inner.end(Status::unavailable("the peer closed the connection")),
            Err(e) => return inner.end(Status::unavailable(format!("the connection failed: {e}"))),
        };
        // A peer that does not read what it is sent is not read either.
        if inner.sender.backlog() > MAX_BACKLOG {
            tokio::select! {
                _ = inner.sender.backlog_at_most(MAX_BACKLOG) => {}
                _ = inner.closed.cancelled() => return,
            }
        }
        let message = match parse(&bytes) {
            Ok(m) => m,
            Err(status) => return inner.abort(status).await,
        };
        if let Err(status) = handle(&inner, message).await {
            return inner.abort(status).await;
        }
    }
}

/// `["stream", ["pipeline", id, [method], args]]`: a write, `close` or
/// `abort` on a pipe the peer opened or on a sink we passed it as a
/// WritableStream. It takes the peer's next id, like a push, and is answered
/// with `resolve` (`undefined`) or `reject`, with no pull and no release.
fn stream_message(inner: &Arc<Inner>, expr: &Json) -> Result<(), Status> {
    let bad = || violation(format!("bad stream message: {expr}"));
    let items = expr.as_array().ok_or_else(bad)?;
    let (id, method, args) = match items.as_slice() {
        [tag, id, path, args] if tag == "pipeline" => {
            let method = path
                .as_array()
                .and_then(|p| match p.as_slice() {
                    [Json::String(m)] => Some(m.clone()),
                    _ => None,
                })
                .ok_or_else(bad)?;
            let args = args.as_array().cloned().ok_or_else(bad)?;
            (id.as_i64().ok_or_else(bad)?, method, args)
        }
        _ => return Err(bad()),
    };
    let (s, target) = {
        let mut st = inner.lock();
        let target = match st.exports.get(&id) {
            Some(Export::Pipe { sink, .. }) => sink.clone(),
            Some(Export::Cap { cap, .. }) => cap.clone(),
            _ => return Err(violation(format!("no such stream: {id}"))),
        };
        st.pushed += 1;
        (st.pushed, target)
    };
    inner.take_in_flight()?;
    let me = inner.clone();
    // Inline until it waits: a sink queues each write in arrival order.
    crate::session::start_inline(async move {
        let result = async {
            let (method, args) = match method.as_str() {
                "write" => {
                    let chunk = args.into_iter().next().unwrap_or(Json::Null);
                    ("write", me.eval_value(chunk).await?)
                }
                "close" => ("end", Value::null()),
                "abort" => {
                    let reason = args.first().map(expr::decode_error).unwrap_or_else(|| {
                        Status::new(Code::Aborted, "the peer aborted the stream")
                    });
                    ("abort", Value::new(&reason)?)
                }
                other => {
                    return Err(Status::new(
                        Code::Unimplemented,
                        format!("a stream has no method `{other}`"),
                    ))
                }
            };
            target.call(method, args).await
        }
        .await;
        let reply = match result {
            Ok(_) => json!(["resolve", s, ["undefined"]]),
            Err(status) => json!(["reject", s, expr::encode_error(&status)]),
        };
        let _ = me.send(reply).await;
        me.in_flight.fetch_sub(1, Ordering::AcqRel);
    });
    Ok(())
}

/// A received value tree as a capwire value. capwire values nest at most
/// `MAX_DECODE_DEPTH` (128) levels, capnweb's up to 256: a deeper one fails
/// with `max_value_depth`.
fn value_of(tree: &Json, caps: Vec<Capability>) -> Result<Value, Status> {
    let limit = capwire_proto::MAX_DECODE_DEPTH;
    if expr::too_deep(tree, limit, false) {
        return Err(Status::limit(
            capwire_proto::Reason::MAX_VALUE_DEPTH,
            limit as u64,
        ));
    }
    Value::with_caps(tree, caps)
}

/// Parses one message, within capnweb's nesting limit.
fn parse(bytes: &[u8]) -> Result<Json, Status> {
    let too_deep = || {
        violation(format!(
            "Deserialization exceeded maximum allowed message depth of {}.",
            expr::MAX_DEPTH
        ))
    };
    if capwire_proto::json_exceeds_depth(bytes, expr::MAX_JSON_DEPTH) {
        return Err(too_deep());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Bounded above: the scan refused anything deeper.
    de.disable_recursion_limit();
    let message = serde::Deserialize::deserialize(&mut de)
        .and_then(|m: Json| de.end().map(|()| m))
        .map_err(|e| violation(e.to_string()))?;
    // The message, its expression and an argument list sit above the value.
    if expr::too_deep(&message, expr::MAX_DEPTH + 3, true) {
        return Err(too_deep());
    }
    Ok(message)
}

fn bad_message(message: &Json) -> Status {
    let mut text = message.to_string();
    text.truncate(200);
    violation(format!("bad RPC message: {text}"))
}

/// Handles one message. An `Err` aborts the session.
async fn handle(inner: &Arc<Inner>, message: Json) -> Result<(), Status> {
    let Json::Array(items) = &message else {
        return Err(bad_message(&message));
    };
    let kind = items.first().and_then(Json::as_str).unwrap_or("");
    match (kind, items.len()) {
        ("push", 2) => {
            let expr = items[1].clone();
            let me = inner.clone();
            let outcome: Outcome = async move { me.eval_value(expr).await }.boxed().shared();
            inner.lock().import_next(Export::Promise {
                outcome: outcome.clone(),
                refs: 1,
            })?;
            // Started now, inline until it waits: calls start in arrival order.
            let me = inner.clone();
            crate::session::start_inline(async move {
                if let Err(status) = outcome.await {
                    if status.reason == Some(capwire_proto::Reason::PROTOCOL_VIOLATION) {
                        me.abort(status).await;
                    }
                }
            });
            Ok(())
        }
        ("pull", 2) => {
            let id = items[1].as_i64().ok_or_else(|| bad_message(&message))?;
            let outcome = match inner.lock().exports.get(&id) {
                Some(Export::Promise { outcome, .. }) => outcome.clone(),
                Some(Export::Cap { .. } | Export::Pipe { .. }) => return Ok(()),
                None => return Err(violation(format!("no such export ID: {id}"))),
            };
            let me = inner.clone();
            inner.take_in_flight()?;
            inner.pulls.fetch_add(1, Ordering::AcqRel);
            crate::session::start_inline(async move {
                let value = match outcome.await {
                    Ok(v) => me.outgoing(v).await,
                    Err(e) => Err(e),
                };
                let reply = match value.and_then(|v| me.encode_value(&v)) {
                    Ok(expr) => json!(["resolve", id, expr]),
                    Err(status) => json!(["reject", id, expr::encode_error(&status)]),
                };
                let _ = me.send(reply).await;
                me.pulls.fetch_sub(1, Ordering::AcqRel);
                me.in_flight.fetch_sub(1, Ordering::AcqRel);
                me.pulled.notify_waiters();
            });
            Ok(())
        }
        ("resolve" | "reject", 3) => {
            let id = items[1].as_i64().ok_or_else(|| bad_message(&message))?;
            let waiter = inner.lock().waiting.remove(&id);
            let expr = items[2].clone();
            match waiter {
                Some(tx) => {
                    let _ = tx.send(if kind == "resolve" {
                        Ok(expr)
                    } else {
                        Err(expr)
                    });
                }
                // Released, or never asked: hand back what it introduced,
                // without evaluating it (nothing waits on it here).
                None => {
                    let mut introduced = HashMap::new();
                    expr::introductions(&expr, &mut introduced);
                    for (id, n) in introduced {
                        inner.send_now(json!(["release", id, n]));
                    }
                }
            }
            Ok(())
        }
        ("release", 3) => {
            let id = items[1].as_i64().ok_or_else(|| bad_message(&message))?;
            let n = items[2]
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad_message(&message))?;
            let removed = {
                let mut st = inner.lock();
                let refs = match st.exports.get_mut(&id) {
                    Some(
                        Export::Cap { refs, .. }
                        | Export::Promise { refs, .. }
                        | Export::Pipe { refs, .. },
                    ) => refs,
                    None => return Err(violation(format!("no such export ID: {id}"))),
                };
                // JS releases 1 however often an id was introduced: accept n <= count.
                if n > *refs {
                    return Err(violation(format!(
                        "refcount would go negative for export {id}"
                    )));
                }
                *refs -= n;
                if *refs == 0 && id != 0 {
                    st.exports.remove(&id)
                } else {
                    None
                }
            };
            drop(removed);
            Ok(())
        }
        ("abort", 2) => {
            let status = expr::decode_error(&items[1]);
            inner.end(Status::unavailable(format!(
                "the peer aborted: {}",
                status.message
            )));
            Ok(())
        }
        ("pipe", 1) => {
            let (sink, items) = crate::stream::sink(PIPE_WINDOW);
            let source = crate::stream::source(futures_util::StreamExt::boxed(items));
            inner.lock().import_next(Export::Pipe {
                sink,
                source: Some(source),
                refs: 1,
            })?;
            Ok(())
        }
        ("stream", 2) => stream_message(inner, &items[1]),
        _ => Err(bad_message(&message)),
    }
}
