//! Capability handles: the client side of an object, local or remote.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use capwire_proto::{Code, PathSeg, Status};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::attestation::{Attestation, TransportKind};
use crate::engine::deadline;
use crate::object::{CallContext, Items, Object};
use crate::promise::{resolve_local, MethodName, PendingCall, Promise, PromiseCore, Sent};
use crate::session::{current_scope, AnswerRef, CallScope, Shared, WireTarget};
use crate::stream::{ItemStream, StreamOptions};
use crate::value::Value;

/// A reference to an object you may call. Cheap to clone, `Send + Sync`.
///
/// A capability is either local (an object in this process, not yet or not
/// only handed out) or remote (an import from a peer). Dropping the last
/// handle to a remote capability releases it at the peer.
#[derive(Clone)]
pub struct Capability {
    pub(crate) kind: CapKind,
}

#[derive(Clone)]
pub(crate) enum CapKind {
    Local(Arc<dyn Object>),
    /// A local object served by name: exported with its registry generation
    /// so that unserving it revokes it.
    Served {
        object: Arc<dyn Object>,
        generation: u64,
    },
    Remote(Arc<RemoteCap>),
    /// The capability at a path of a call's result, before it arrives
    /// (caller side of promise pipelining).
    Promised(Arc<PromiseCore>, Arc<[PathSeg]>),
    /// The capability at a path of an answer this side is computing for the
    /// peer, passed to us as an `answer` descriptor (callee side).
    Answer(Arc<AnswerRef>),
}

impl CapKind {
    fn local_object(&self) -> Option<&Arc<dyn Object>> {
        match self {
            CapKind::Local(o) | CapKind::Served { object: o, .. } => Some(o),
            _ => None,
        }
    }
}

/// An import: the peer's export `id` on one session.
pub(crate) struct RemoteCap {
    pub(crate) session: Weak<Shared>,
    pub(crate) id: u64,
    pub(crate) serial: u64,
}

impl Drop for RemoteCap {
    fn drop(&mut self) {
        // Never waits for the session lock: a handle may be dropped while it is held.
        if let Some(shared) = self.session.upgrade() {
            shared.queue_release(self.id, self.serial);
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// How long the caller waits; sent to the callee, which stops the handler
    /// after it (plus a grace period). A call made inside a handler never gets
    /// more time than its parent has left.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> CallOptions {
        CallOptions {
            timeout: Some(timeout),
        }
    }
}

impl Capability {
    /// A capability for a local object.
    pub fn local<O: Object>(object: O) -> Capability {
        Capability {
            kind: CapKind::Local(Arc::new(object)),
        }
    }

    /// A capability for a shared local object.
    pub fn from_arc(object: Arc<dyn Object>) -> Capability {
        Capability {
            kind: CapKind::Local(object),
        }
    }

    /// A capability whose every call fails with `status` (a broken promise,
    /// an argument that could not be encoded).
    pub fn error(status: Status) -> Capability {
        Capability::from_arc(Arc::new(crate::session::Failing(status)))
    }

    /// True for an object hosted in this process.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, CapKind::Local(_) | CapKind::Served { .. })
    }

    /// True for a capability that is a path into a result that has not
    /// necessarily arrived (promise pipelining).
    pub fn is_promise(&self) -> bool {
        matches!(self.kind, CapKind::Promised(..) | CapKind::Answer(_))
    }

    /// For a remote capability, its id in the peer's export table.
    pub fn remote_id(&self) -> Option<u64> {
        match &self.kind {
            CapKind::Remote(r) => Some(r.id),
            _ => None,
        }
    }

    /// True when both handles name the same object (the same local object, the
    /// same import on the same connection, or the same path of the same promise).
    pub fn same_as(&self, other: &Capability) -> bool {
        match (&self.kind, &other.kind) {
            (CapKind::Remote(a), CapKind::Remote(b)) => Arc::ptr_eq(a, b),
            (CapKind::Promised(a, pa), CapKind::Promised(b, pb)) => Arc::ptr_eq(a, b) && pa == pb,
            (CapKind::Answer(a), CapKind::Answer(b)) => Arc::ptr_eq(a, b),
            (a, b) => match (a.local_object(), b.local_object()) {
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            },
        }
    }

    /// The session calls on this capability go to, if any.
    pub(crate) fn session(&self) -> Option<usize> {
        match &self.kind {
            CapKind::Remote(r) => Some(r.session.as_ptr() as usize),
            CapKind::Promised(core, _) => core.session(),
            _ => None,
        }
    }

    /// Calls `method`. Nothing is sent until the promise is awaited or
    /// pipelined on; dropping it before it completes cancels the call at
    /// the callee.
    pub fn call(&self, method: &str, args: Value) -> Promise {
        self.call_with(method, args, CallOptions::default())
    }

    /// Calls `method` with options. A call made inside a handler belongs to
    /// that handler's call: it is cancelled with it and gets no more time than
    /// it has left.
    pub fn call_with(&self, method: &str, args: Value, options: CallOptions) -> Promise {
        self.call_named(MethodName::Shared(method.into()), args, options)
    }

    /// [`Capability::call_with`] with the name as it is kept.
    pub(crate) fn call_named(
        &self,
        method: MethodName,
        args: Value,
        options: CallOptions,
    ) -> Promise {
        let scope = current_scope();
        let deadline = call_deadline(options.timeout, scope.as_ref());
        Promise::new(self.pending(method, args, deadline, scope))
    }

    pub(crate) fn pending(
        &self,
        method: MethodName,
        args: Value,
        deadline: Option<Instant>,
        scope: Option<CallScope>,
    ) -> PendingCall {
        PendingCall {
            target: self.clone(),
            method,
            args,
            deadline,
            scope,
        }
    }

    /// Sends `method` as a notification: no answer is awaited. To a
    /// JSON-RPC peer it is a JSON-RPC notification; anywhere else the call
    /// runs in a task of its own and its answer (or failure) is only logged.
    /// Fails at once only when there is no Tokio runtime to run it on, or
    /// the peer's connection is gone.
    pub fn notify(&self, method: &str, args: Value) -> Result<(), Status> {
        if let Some(object) = self.kind.local_object() {
            if let Some(sent) = object.clone().notify(method, &args) {
                return sent;
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Status::new(
                Code::FailedPrecondition,
                "a notification needs a Tokio runtime to run on",
            )
        })?;
        let promise = self.call(method, args);
        let method = method.to_owned();
        runtime.spawn(async move {
            if let Err(status) = promise.await {
                tracing::debug!(%method, %status, "a notification failed");
            }
        });
        Ok(())
    }

    /// Calls a stream method: the items arrive under credit flow control
    /// (a window of 32 unless the session or `options` say otherwise).
    /// Nothing is sent until the stream is first polled; dropping it cancels
    /// the stream at the callee.
    pub fn call_stream(&self, method: &str, args: Value) -> ItemStream {
        self.call_stream_with(method, args, StreamOptions::default())
    }

    /// Calls a stream method with options.
    pub fn call_stream_with(
        &self,
        method: &str,
        args: Value,
        options: StreamOptions,
    ) -> ItemStream {
        self.call_stream_named(MethodName::Shared(method.into()), args, options)
    }

    /// [`Capability::call_stream_with`] with the name as it is kept.
    pub(crate) fn call_stream_named(
        &self,
        method: MethodName,
        args: Value,
        options: StreamOptions,
    ) -> ItemStream {
        let scope = current_scope();
        let deadline = call_deadline(options.timeout, scope.as_ref());
        ItemStream::new(self.pending(method, args, deadline, scope), options.window)
    }
}

/// Where calls on a capability go, once the promises it depends on are known.
pub(crate) enum Destination {
    /// Over a connection.
    Wire(Arc<Shared>, WireTarget),
    /// To an object in this process.
    Local(Arc<dyn Object>),
}

impl Capability {
    /// [`Capability::destination`] for the capabilities that need no
    /// waiting (an import, a local object), without a boxed future.
    pub(crate) fn destination_now(&self) -> Option<Result<Destination, Status>> {
        match &self.kind {
            CapKind::Remote(remote) => Some(
                remote
                    .session
                    .upgrade()
                    .map(|shared| Destination::Wire(shared, WireTarget::Cap(remote.id)))
                    .ok_or_else(|| Status::unavailable("the connection is closed")),
            ),
            CapKind::Local(object) | CapKind::Served { object, .. } => {
                Some(Ok(Destination::Local(object.clone())))
            }
            CapKind::Promised(..) | CapKind::Answer(_) => None,
        }
    }

    /// Where calls on this capability go. Waits only for promises that are
    /// resolved here (a local call's result, an answer this side owes the
    /// peer); a promise on a connection is sent, kept, and addressed there.
    pub(crate) fn destination(&self) -> BoxFuture<'_, Result<Destination, Status>> {
        let closed = || Status::unavailable("the connection is closed");
        async move {
            match &self.kind {
                CapKind::Remote(remote) => {
                    let shared = remote.session.upgrade().ok_or_else(closed)?;
                    Ok(Destination::Wire(shared, WireTarget::Cap(remote.id)))
                }
                CapKind::Promised(core, path) => match core.ensure_sent().await {
                    Sent::Kept(k) => {
                        let shared = k.session.upgrade().ok_or_else(closed)?;
                        Ok(Destination::Wire(
                            shared,
                            WireTarget::Answer(k.id, path.clone()),
                        ))
                    }
                    Sent::Deferred(f) => {
                        let cap = resolve_local(f.clone().await, path)?;
                        cap.destination().await
                    }
                    Sent::Proxied { at, .. } => at(path).destination().await,
                },
                CapKind::Answer(answer) => {
                    let cap = answer.resolved().await?;
                    cap.destination().await
                }
                CapKind::Local(object) | CapKind::Served { object, .. } => {
                    Ok(Destination::Local(object.clone()))
                }
            }
        }
        .boxed()
    }
}

/// A call's deadline: its own timeout, never past its parent's deadline.
fn call_deadline(timeout: Option<Duration>, scope: Option<&CallScope>) -> Option<Instant> {
    deadline::inherit(timeout, scope.and_then(|s| s.deadline), Instant::now())
}

/// The context of a call to an object in this process.
pub(crate) fn local_context(
    method: &str,
    deadline: Option<Instant>,
    scope: Option<&CallScope>,
) -> CallContext {
    let att = Arc::new(Attestation::new(TransportKind::Memory));
    let mut ctx = CallContext::local(method, deadline, att);
    if let Some(s) = scope {
        ctx.cancel = s.cancel.child_token();
    }
    ctx
}

/// Calls an object in this process, with the call's deadline and its
/// parent's cancellation.
pub(crate) async fn call_local(
    object: Arc<dyn Object>,
    method: &str,
    args: Value,
    deadline: Option<Instant>,
    scope: Option<CallScope>,
) -> Result<Value, Status> {
    let ctx = local_context(method, deadline, scope.as_ref());
    let cancel = ctx.cancel.clone();
    let call = object.call(method, args, ctx);
    tokio::select! {
        r = call => r,
        _ = cancel.cancelled() => Err(Status::new(Code::Cancelled, "the parent call was cancelled")),
        _ = deadline::sleep_until(deadline) => Err(Status::new(
            Code::DeadlineExceeded,
            format!("`{method}` did not finish before its deadline"),
        )),
    }
}

/// Opens a stream on an object in this process.
pub(crate) async fn call_stream_local(
    object: Arc<dyn Object>,
    method: &str,
    args: Value,
    deadline: Option<Instant>,
    scope: Option<CallScope>,
) -> Result<Items, Status> {
    let ctx = local_context(method, deadline, scope.as_ref());
    object.call_stream(method, args, ctx).await
}

/// A capability is itself an object: calls are forwarded to it. This is how
/// an import from one connection is handed to a peer on another.
impl Object for Capability {
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        let timeout = ctx.time_left();
        self.call_with(method, args, CallOptions { timeout })
            .boxed()
    }

    fn call_stream(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Items, Status>> {
        let timeout = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let options = StreamOptions {
            timeout,
            ..StreamOptions::default()
        };
        let items = Capability::call_stream_with(&self, method, args, options);
        async move { Ok(items.boxed()) }.boxed()
    }

    fn type_name(&self) -> &str {
        "forwarded capability"
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            CapKind::Local(o) | CapKind::Served { object: o, .. } => {
                write!(f, "Capability(local {})", o.type_name())
            }
            CapKind::Remote(r) => write!(f, "Capability(remote {})", r.id),
            CapKind::Promised(_, path) => write!(f, "Capability(promised {path:?})"),
            CapKind::Answer(a) => write!(f, "Capability(answer {})", a.answer),
        }
    }
}
