//! One JSON-RPC connection, either side: requests both ways, notifications
//! both ways, batches, cancellation, and the end that fails what is pending.
//!
//! Requests from the peer run as calls on served capabilities; their
//! bookkeeping is the engine's answer table (one plain or stream answer per
//! request in flight, stopped by `$/cancelRequest` or the connection's end).

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use capwire_proto::{Code, Reason, Status};
use futures_util::future::{join_all, BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, Kind, MethodInfo};
use super::errors::{ErrorClasses, ErrorObject, INVALID_REQUEST, METHOD_NOT_FOUND};
use super::message::{self, Arrived, Message};
use super::peer::JsonRpcPeer;
use crate::attestation::{Attestation, TransportKind};
use crate::engine::answers::{AnswerKind, Answers};
use crate::engine::{AnswerHost, Limits};
use crate::object::{CallContext, Object};
use crate::registry::Registry;
use crate::transport::{CloseReason, FrameReceiver, FrameSender, Transport};
use crate::value::Value;

/// How a served method's JSON-RPC name joins the served name and the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Separator {
    /// `name/method` (as LSP and ACP name theirs).
    #[default]
    Slash,
    /// `name.method`.
    Dot,
}

impl Separator {
    /// The separator's character.
    pub fn as_char(self) -> char {
        match self {
            Separator::Slash => '/',
            Separator::Dot => '.',
        }
    }
}

/// Gives a connection the names it serves, knowing its peer (so that the
/// objects it serves can call the peer back).
pub type ServeFn = Arc<dyn Fn(&JsonRpcPeer) -> Registry + Send + Sync>;

/// How a JSON-RPC connection runs.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct JsonRpcConfig {
    /// `name/method` or `name.method`.
    pub separator: Separator,
    /// The application's error classes (see [`ErrorClasses`]).
    pub errors: ErrorClasses,
    /// In-flight bounds: `max_in_flight_in` (the peer's requests running
    /// at once, past it `-32005` `resource_exhausted`), `max_in_flight_out`
    /// (our requests awaiting an answer).
    pub limits: Limits,
    /// When set, each connection serves the registry this returns (given
    /// the connection's peer) instead of the listener's.
    pub per_connection: Option<ServeFn>,
    /// Compiled method schemas, shared by the connections of a listener.
    pub(crate) catalog: Arc<Catalog>,
}

impl std::fmt::Debug for JsonRpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRpcConfig")
            .field("separator", &self.separator)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl JsonRpcConfig {
    /// The defaults: `name/method`, no error classes, the default limits.
    pub fn new() -> JsonRpcConfig {
        JsonRpcConfig::default()
    }

    /// Sets the separator.
    pub fn separator(mut self, separator: Separator) -> JsonRpcConfig {
        self.separator = separator;
        self
    }

    /// Sets the error classes.
    pub fn errors(mut self, errors: ErrorClasses) -> JsonRpcConfig {
        self.errors = errors;
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> JsonRpcConfig {
        self.limits = limits;
        self
    }

    /// Serves, on each connection, the registry `serve` returns for it.
    pub fn per_connection(
        mut self,
        serve: impl Fn(&JsonRpcPeer) -> Registry + Send + Sync + 'static,
    ) -> JsonRpcConfig {
        self.per_connection = Some(Arc::new(serve));
        self
    }
}

/// The engine's answer table as JSON-RPC uses it: one entry per request of
/// the peer in flight; stopping it cancels the handler.
pub(crate) struct Requests;

impl AnswerHost for Requests {
    type Running = CancellationToken;
    type Value = ();
    type Waiting = ();
}

pub(crate) struct State {
    /// The peer's requests in flight, keyed by our serial.
    pub(crate) requests: Answers<Requests>,
    /// The same, by the peer's id (for `$/cancelRequest`).
    by_id: FxHashMap<IdKey, u64>,
    next_request: u64,
    /// Our requests awaiting their response, by number.
    pub(crate) pending: HashMap<u64, oneshot::Sender<Result<Json, Status>>>,
    pub(crate) ended: Option<Status>,
}

/// A request id as a map key (numbers and strings kept apart; integers,
/// the common case, without an allocation). A `null` id has none: nothing
/// can name it to cancel it, and several may be in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Int(i64),
    Uint(u64),
    /// Any other number, as written.
    Number(String),
    String(String),
}

impl IdKey {
    fn of(id: &Json) -> Option<IdKey> {
        match id {
            Json::Number(n) => Some(if let Some(i) = n.as_i64() {
                IdKey::Int(i)
            } else if let Some(u) = n.as_u64() {
                IdKey::Uint(u)
            } else {
                IdKey::Number(n.to_string())
            }),
            Json::String(s) => Some(IdKey::String(s.clone())),
            _ => None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) sender: FrameSender,
    pub(crate) config: JsonRpcConfig,
    pub(crate) attestation: Arc<Attestation>,
    /// `s` on the accepting side, `c` on the connecting side: our request
    /// ids are this prefix and a number.
    pub(crate) prefix: &'static str,
    pub(crate) next_out: AtomicU64,
    /// One HTTP request: no calls toward the peer, no notifications.
    pub(crate) one_shot: bool,
    pub(crate) closed: CancellationToken,
    registry: Mutex<Option<Registry>>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message. A connection that is gone drops it (whoever waits
    /// for an answer learns from the end).
    pub(crate) async fn send(&self, frame: Bytes) {
        let _ = self.sender.send(frame).await;
    }

    /// Ends the session: our pending requests fail with `status`, the
    /// peer's requests in flight are cancelled.
    pub(crate) fn end(&self, status: Status) {
        let (pending, requests) = {
            let mut state = self.lock();
            if state.ended.is_some() {
                return;
            }
            state.ended = Some(status.clone());
            state.by_id.clear();
            (std::mem::take(&mut state.pending), state.requests.clear())
        };
        for request in requests {
            request.running.cancel();
        }
        for (_, waiting) in pending {
            let _ = waiting.send(Err(status.clone()));
        }
        self.closed.cancel();
    }
}

/// One JSON-RPC connection. Cheap to clone.
#[derive(Clone)]
pub struct JsonRpcSession {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for JsonRpcSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRpcSession")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl JsonRpcSession {
    /// Runs JSON-RPC over `transport` as the connecting side, serving
    /// `registry`'s names to the peer (an empty one serves nothing). Our
    /// request ids are `"c1"`, `"c2"`, ….
    pub fn connect(
        transport: Transport,
        registry: Registry,
        config: JsonRpcConfig,
    ) -> JsonRpcSession {
        JsonRpcSession::start(transport, Some(registry), config, "c")
    }

    /// Runs JSON-RPC over `transport` as the accepting side (request ids
    /// `"s1"`, …). Without `registry`, `config.per_connection` gives it.
    pub fn accept(
        transport: Transport,
        registry: Option<Registry>,
        config: JsonRpcConfig,
    ) -> JsonRpcSession {
        JsonRpcSession::start(transport, registry, config, "s")
    }

    fn start(
        transport: Transport,
        registry: Option<Registry>,
        config: JsonRpcConfig,
        prefix: &'static str,
    ) -> JsonRpcSession {
        let Transport {
            sender,
            receiver,
            attestation,
        } = transport;
        // The accepting side of one HTTP request answers it and ends; the
        // connecting side of an `http://` transport is a client like any other.
        let one_shot = prefix == "s" && attestation.transport == TransportKind::HttpJsonRpc;
        let per_connection = config.per_connection.clone();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                requests: Answers::default(),
                by_id: FxHashMap::default(),
                next_request: 0,
                pending: HashMap::new(),
                ended: None,
            }),
            sender,
            config,
            attestation: Arc::new(attestation),
            prefix,
            next_out: AtomicU64::new(1),
            one_shot,
            closed: CancellationToken::new(),
            registry: Mutex::new(registry),
        });
        let session = JsonRpcSession { inner };
        if let Some(serve) = per_connection {
            let served = serve(&session.peer());
            *session
                .inner
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(served);
        }
        tokio::spawn(read_loop(session.inner.clone(), receiver));
        session
    }

    /// The peer: send it requests and notifications, or take a typed
    /// client of the methods it serves.
    pub fn peer(&self) -> JsonRpcPeer {
        JsonRpcPeer::new(Arc::downgrade(&self.inner))
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().ended.is_some()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await;
    }

    /// Closes the connection: pending requests fail with `unavailable`.
    pub async fn close(&self) {
        self.inner
            .end(Status::unavailable("the JSON-RPC session was closed"));
        let _ = self.inner.sender.close(CloseReason::normal()).await;
    }

    /// The peer's requests running now.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.lock().requests.len()
    }
}

async fn read_loop(inner: Arc<Inner>, mut receiver: FrameReceiver) {
    // The last frame holding notifications: later frames start after it, so
    // notifications take effect in order and before the requests behind them.
    let mut last: Option<Shared<BoxFuture<'static, ()>>> = None;
    // Frames queued behind `last` while it runs: past `max_in_flight_in`,
    // this loop waits for it rather than queue more (a peer cannot grow the
    // queue without bound behind a notification that never finishes).
    let mut behind = 0usize;
    let end = loop {
        let frame = match receiver.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Status::unavailable("the peer closed the connection"),
            Err(e) => break Status::unavailable(format!("the connection failed: {e}")),
        };
        let Some((work, ordered)) = on_frame(&inner, &frame) else {
            if inner.one_shot {
                break Status::unavailable("the HTTP request was answered");
            }
            continue;
        };
        if inner.one_shot {
            // One HTTP request: its answer is all there is.
            work.await;
            break Status::unavailable("the HTTP request was answered");
        }
        if let Some(before) = &last {
            if before.peek().is_none() && behind >= inner.config.limits.max_in_flight_in {
                before.clone().await;
            }
            if before.peek().is_some() {
                last = None;
                behind = 0;
            }
        }
        let work = match last.clone() {
            Some(before) => {
                behind += 1;
                async move {
                    before.await;
                    work.await
                }
                .boxed()
            }
            None => work,
        };
        if ordered {
            let shared = work.shared();
            last = Some(shared.clone());
            tokio::spawn(shared);
        } else {
            run_or_spawn(work).await;
        }
    };
    inner.end(end);
    // Answers the peer's close (a WebSocket close handshake completes), or
    // ends the HTTP response.
    let _ = inner.sender.close(CloseReason::normal()).await;
}

/// Polls `work` once here: a handler that answers at once (most do) costs
/// no task. One that waits is spawned and finishes on its own (the waker it
/// registered here only wakes this loop once, spuriously).
async fn run_or_spawn(work: BoxFuture<'static, ()>) {
    let mut work = Some(work);
    std::future::poll_fn(move |cx| {
        if let Some(mut w) = work.take() {
            if w.as_mut().poll(cx).is_pending() {
                tokio::spawn(w);
            }
        }
        std::task::Poll::Ready(())
    })
    .await
}

/// Decides one frame; what needs waiting for is returned as a task, with
/// whether it holds notifications (which later frames wait for).
fn on_frame(inner: &Arc<Inner>, frame: &Bytes) -> Option<(BoxFuture<'static, ()>, bool)> {
    let arrived = message::parse(frame);
    let ordered = match &arrived {
        Arrived::One(m) => matches!(m, Message::Notification { .. }),
        Arrived::Batch(ms) => ms.iter().any(|m| matches!(m, Message::Notification { .. })),
        Arrived::Refused(_) => false,
    };
    let work = on_arrived(inner, arrived)?;
    Some((work, ordered))
}

fn on_arrived(inner: &Arc<Inner>, arrived: Arrived) -> Option<BoxFuture<'static, ()>> {
    match arrived {
        Arrived::Refused(error) => {
            let inner = inner.clone();
            Some(
                async move {
                    inner
                        .send(message::response(&Json::Null, &Err(error)))
                        .await
                }
                .boxed(),
            )
        }
        Arrived::One(m) => {
            let work = handle(inner, m)?;
            let inner = inner.clone();
            Some(
                async move {
                    if let Some(response) = work.await {
                        inner.send(response).await;
                    }
                }
                .boxed(),
            )
        }
        Arrived::Batch(messages) => {
            let works: Vec<_> = messages
                .into_iter()
                .filter_map(|m| handle(inner, m))
                .collect();
            let inner = inner.clone();
            Some(
                async move {
                    let responses: Vec<Bytes> =
                        join_all(works).await.into_iter().flatten().collect();
                    if !responses.is_empty() {
                        inner.send(message::batch(&responses)).await;
                    }
                }
                .boxed(),
            )
        }
    }
}

type Work = BoxFuture<'static, Option<Bytes>>;

fn ready(frame: Bytes) -> Work {
    async move { Some(frame) }.boxed()
}

/// One message: its response, if it has one, as a future.
fn handle(inner: &Arc<Inner>, m: Message) -> Option<Work> {
    match m {
        Message::Invalid { id, why } => Some(ready(message::response(
            &id,
            &Err(ErrorObject::new(
                INVALID_REQUEST,
                format!("invalid request: {why}"),
            )),
        ))),
        Message::Response { id, outcome } => {
            on_response(inner, &id, outcome);
            None
        }
        Message::Notification { method, params } => {
            if method == "$/cancelRequest" {
                cancel_request(inner, params.as_ref());
                return None;
            }
            let work = run(inner, None, method, params);
            Some(async move { work.await.and(None) }.boxed())
        }
        Message::Request { id, method, params } => Some(run(inner, Some(id), method, params)),
    }
}

fn on_response(inner: &Inner, id: &Json, outcome: Result<Json, ErrorObject>) {
    // An error for no request in particular that says we are not admitted
    // (a server that requires a token we lack): nothing will be answered.
    if let (Json::Null, Err(e)) = (id, &outcome) {
        let status = inner.config.errors.to_status(e);
        if crate::auth::is_refusal(status.code) {
            inner.end(status);
            inner.sender.close_now(CloseReason::normal());
            return;
        }
    }
    let n = id
        .as_str()
        .and_then(|s| s.strip_prefix(inner.prefix))
        .and_then(|n| n.parse::<u64>().ok());
    let waiting = n.and_then(|n| inner.lock().pending.remove(&n));
    match waiting {
        Some(waiting) => {
            let _ = waiting.send(outcome.map_err(|e| inner.config.errors.to_status(&e)));
        }
        None => tracing::debug!(%id, "a JSON-RPC response to no request of ours; ignored"),
    }
}

fn cancel_request(inner: &Inner, params: Option<&Json>) {
    let Some(key) = params.and_then(|p| p.get("id")).and_then(IdKey::of) else {
        tracing::debug!("`$/cancelRequest` without an id; ignored");
        return;
    };
    let token = {
        let mut state = inner.lock();
        let Some(serial) = state.by_id.get(&key).copied() else {
            // Already answered, or never sent: nothing to do (as LSP says).
            return;
        };
        state
            .requests
            .stop(
                serial,
                Status::new(Code::Cancelled, "cancelled by the caller"),
            )
            .and_then(Result::ok)
    };
    if let Some(token) = token {
        token.cancel();
    }
}

/// A served method found: its object, the served name, the method's name
/// there, and what it is.
struct Target {
    object: Arc<dyn Object>,
    name: String,
    member: String,
    info: Arc<MethodInfo>,
}

/// Finds the served object and method a JSON-RPC method names.
fn resolve(inner: &Inner, method: &str) -> Result<Target, ErrorObject> {
    let not_found = |why: String| {
        ErrorObject::new(METHOD_NOT_FOUND, why).with_data(json!({ "method": method }))
    };
    let sep = inner.config.separator.as_char();
    let Some((name, member)) = method.rsplit_once(sep) else {
        return Err(not_found(format!(
            "method not found: `{method}` (methods are named `name{sep}method`)"
        )));
    };
    let object = inner
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|r| r.object(name));
    let Some(object) = object else {
        return Err(not_found(format!(
            "method not found: `{method}` (nothing is served as `{name}`)"
        )));
    };
    let Some(info) = inner.config.catalog.method(&object, member) else {
        return Err(not_found(format!(
            "method not found: `{method}` (`{name}` has no method `{member}`)"
        )));
    };
    Ok(Target {
        object,
        name: name.to_owned(),
        member: member.to_owned(),
        info,
    })
}

/// A request admitted: what to call, with what, and how to stop it.
struct Admitted {
    target: Target,
    args: Value,
    serial: u64,
    cancel: CancellationToken,
}

/// Resolves, binds and admits a request (or notification): any failure is
/// its error response.
fn admit(
    inner: &Inner,
    id: Option<&Json>,
    method: &str,
    params: Option<Json>,
) -> Result<Admitted, ErrorObject> {
    let target = resolve(inner, method)?;
    let args = target.info.bind(params)?;
    let args = Value::new(&args).map_err(|s| inner.config.errors.to_error(&s))?;
    if target.info.kind == Kind::Stream && (inner.one_shot || id.is_none()) {
        return Err(inner.config.errors.to_error(&Status::new(
            Code::FailedPrecondition,
            format!(
                "`{method}` is a stream: its items are notifications, which need a request \
                 (with an id) on a connection that carries them (WebSocket, stdio)"
            ),
        )));
    }
    let mut state = inner.lock();
    if let Some(status) = &state.ended {
        return Err(inner.config.errors.to_error(status));
    }
    let limit = inner.config.limits.max_in_flight_in;
    if state.requests.len() >= limit {
        let status = Status::limit(Reason::MAX_CONCURRENT_CALLS, limit as u64);
        return Err(inner.config.errors.to_error(&status));
    }
    let key = id.and_then(IdKey::of);
    if key.as_ref().is_some_and(|k| state.by_id.contains_key(k)) {
        return Err(ErrorObject::new(
            INVALID_REQUEST,
            "invalid request: this id is already used by a request in flight",
        ));
    }
    state.next_request += 1;
    let serial = state.next_request;
    let kind = if target.info.kind == Kind::Stream {
        AnswerKind::Stream
    } else {
        AnswerKind::Plain
    };
    let cancel = CancellationToken::new();
    state
        .requests
        .insert(serial, None, kind, false, cancel.clone());
    if let Some(key) = key {
        state.by_id.insert(key, serial);
    }
    Ok(Admitted {
        target,
        args,
        serial,
        cancel,
    })
}

/// Runs a request (with `id`) or a notification; the response for a request.
fn run(inner: &Arc<Inner>, id: Option<Json>, method: String, params: Option<Json>) -> Work {
    let reply = move |id: Option<Json>, outcome: Result<Json, ErrorObject>| {
        id.map(|id| message::response(&id, &outcome))
    };
    let Admitted {
        target,
        args,
        serial,
        cancel,
    } = match admit(inner, id.as_ref(), &method, params) {
        Ok(admitted) => admitted,
        Err(e) => {
            if id.is_none() {
                tracing::debug!(%method, error = %e.message, "a JSON-RPC notification was refused");
            }
            return async move { reply(id, Err(e)) }.boxed();
        }
    };
    let Target {
        object,
        name,
        member,
        info,
    } = target;
    let ctx = CallContext {
        method: member.as_str().into(),
        call_id: Some(serial),
        deadline: None,
        cancel: cancel.clone(),
        attestation: inner.attestation.clone(),
    };
    let inner = inner.clone();
    async move {
        let started = crate::metrics::enabled().then(std::time::Instant::now);
        let outcome = match info.kind {
            Kind::Stream => {
                let subscription = id.clone().unwrap_or(Json::Null);
                let item_method = format!(
                    "{name}{}{}",
                    inner.config.separator.as_char(),
                    info.item.as_deref().unwrap_or(&member)
                );
                let items = object.call_stream(&member, args, ctx);
                tokio::select! {
                    r = stream_items(&inner, items, &item_method, &subscription) => r,
                    _ = cancel.cancelled() => Err(stopped(&inner, serial)),
                }
            }
            Kind::Call | Kind::Notification => {
                let call = object.call(&member, args, ctx);
                tokio::select! {
                    r = call => r.and_then(|v| to_json(&v)),
                    _ = cancel.cancelled() => Err(stopped(&inner, serial)),
                }
            }
        };
        {
            let mut state = inner.lock();
            state.requests.remove(serial);
            if let Some(key) = id.as_ref().and_then(IdKey::of) {
                if state.by_id.get(&key) == Some(&serial) {
                    state.by_id.remove(&key);
                }
            }
        }
        if let Some(started) = started {
            let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
            let stream = info.kind == Kind::Stream;
            let (dialect, dir) = (
                crate::metrics::Dialect::JsonRpc,
                crate::events::Direction::Incoming,
            );
            crate::metrics::finished(dialect, stream, dir, code, started.elapsed());
        }
        let outcome = outcome.map_err(|s| inner.config.errors.to_error(&s));
        if let (None, Err(e)) = (&id, &outcome) {
            tracing::debug!(%method, error = %e.message, "a JSON-RPC notification failed");
        }
        reply(id, outcome)
    }
    .boxed()
}

/// Why a request's handler was stopped.
fn stopped(inner: &Inner, serial: u64) -> Status {
    let state = inner.lock();
    state
        .requests
        .why_stopped(serial)
        .cloned()
        .or_else(|| state.ended.clone())
        .unwrap_or_else(|| Status::new(Code::Cancelled, "cancelled"))
}

/// Sends a stream's items as notifications; the count is the response.
async fn stream_items(
    inner: &Inner,
    items: BoxFuture<'static, Result<crate::object::Items, Status>>,
    method: &str,
    subscription: &Json,
) -> Result<Json, Status> {
    let mut items = items.await?;
    let mut count: u64 = 0;
    while let Some(item) = items.next().await {
        let item = to_json(&item?)?;
        inner.send(message::item(method, &item, subscription)).await;
        count += 1;
    }
    Ok(Json::from(count))
}

/// A result as JSON: a capability inside cannot travel over JSON-RPC.
fn to_json(value: &Value) -> Result<Json, Status> {
    if !value.caps().is_empty() {
        return Err(Status::new(
            Code::Internal,
            "the result holds a capability, which JSON-RPC cannot carry",
        ));
    }
    value.to_json()
}
