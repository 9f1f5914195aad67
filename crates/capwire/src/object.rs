//! Objects that can be served or passed as capabilities, and the context a
//! call runs in.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attestation::Attestation;
use crate::capability::Capability;
use crate::value::Value;

/// Something that answers method calls: the server side of a capability.
///
/// Most code builds objects with [`Methods`] or (later) the typed interface
/// macro; implement this trait directly for dynamic dispatch of your own.
pub trait Object: Send + Sync + 'static {
    /// Runs `method`. The future runs as its own task; it is dropped if the
    /// caller cancels, the deadline passes or the capability is revoked.
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>>;

    /// Runs a stream method: the items it yields go to the caller under its
    /// credit, then `end` (or `stream_error` for an `Err` item, which ends
    /// the stream). The stream is only polled while the caller has granted
    /// credit, and dropped when the caller cancels. Objects without stream
    /// methods keep the default, which refuses with `invalid_argument`.
    fn call_stream(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Items, Status>> {
        let _ = (args, ctx);
        let status = Status::new(
            Code::InvalidArgument,
            format!("{} has no stream method `{method}`", self.type_name()),
        );
        async move { Err(status) }.boxed()
    }

    /// True when `method` is a stream method (for dialects that call
    /// methods without saying whether they stream, like capnweb).
    fn is_stream(&self, method: &str) -> bool {
        let _ = method;
        false
    }

    /// True when `method` may finish after its deadline (the callee then does
    /// not abort it; the caller still stops waiting).
    fn is_idempotent(&self, method: &str) -> bool {
        let _ = method;
        false
    }

    /// A name for events and logs.
    fn type_name(&self) -> &str {
        "object"
    }

    /// True when [`Object::call_pipelined`] can send a call so that calls
    /// are pipelined on its result before it settles: objects that stand
    /// for another protocol's capabilities (the capnweb dialect's stubs).
    /// For every other object pipelined calls wait for the result here.
    fn pipelines(&self) -> bool {
        false
    }

    /// Sends `method` and returns its result together with the
    /// capabilities inside it, usable before it settles. Called instead of
    /// [`Object::call`] when the caller pipelines on the call and
    /// [`Object::pipelines`] is true.
    fn call_pipelined(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Pipelined, Status>> {
        let _ = (args, ctx);
        let status = Status::new(
            Code::Unimplemented,
            format!("{} cannot pipeline `{method}`", self.type_name()),
        );
        async move { Err(status) }.boxed()
    }

    /// Sends `method` as a notification, for objects that stand for a peer
    /// with notifications of its own (a JSON-RPC peer). `None`, the
    /// default, lets [`Capability::notify`] run the call and drop its answer.
    fn notify(self: Arc<Self>, method: &str, args: &Value) -> Option<Result<(), Status>> {
        let _ = (method, args);
        None
    }

    /// The interface's schema (methods, parameters, results as JSON Schema),
    /// for objects made by [`interface`](crate::interface); served by the
    /// runtime capability's `schemas` and `capwire schema`.
    fn schema(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A call sent by [`Object::call_pipelined`].
pub struct Pipelined {
    /// The call's result.
    pub result: BoxFuture<'static, Result<Value, Status>>,
    /// The capability at a path of the result, usable before it settles.
    pub at: PipelineAt,
}

/// Gives the capability at a path of a pipelined call's result.
pub type PipelineAt = Box<dyn Fn(&[capwire_proto::PathSeg]) -> Capability + Send + Sync>;

impl std::fmt::Debug for Pipelined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelined").finish_non_exhaustive()
    }
}

/// What a handler knows about the call it is running.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub(crate) method: Arc<str>,
    pub(crate) call_id: Option<u64>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancel: CancellationToken,
    pub(crate) attestation: Arc<Attestation>,
}

impl CallContext {
    pub(crate) fn local(
        method: &str,
        deadline: Option<Instant>,
        attestation: Arc<Attestation>,
    ) -> CallContext {
        CallContext {
            method: method.into(),
            call_id: None,
            deadline,
            cancel: CancellationToken::new(),
            attestation,
        }
    }

    /// The method being called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The caller's question id, for calls that came over a connection.
    pub fn call_id(&self) -> Option<u64> {
        self.call_id
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// What is left until the deadline, if the caller set one (zero once
    /// it has passed).
    pub(crate) fn time_left(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Resolves when the call is cancelled (by the caller, a deadline or revocation).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// True once the call is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// What the transport knows about the caller.
    pub fn attestation(&self) -> &Attestation {
        &self.attestation
    }

    /// Makes `object` a capability that can be returned or passed on.
    pub fn export<O: Object>(&self, object: O) -> Capability {
        Capability::local(object)
    }
}

/// The items of a stream answer, as a stream method returns them.
pub type Items = BoxStream<'static, Result<Value, Status>>;

type Handler =
    Arc<dyn Fn(Value, CallContext) -> BoxFuture<'static, Result<Value, Status>> + Send + Sync>;

type StreamHandler =
    Arc<dyn Fn(Value, CallContext) -> BoxFuture<'static, Result<Items, Status>> + Send + Sync>;

/// An [`Object`] built from closures, one per method.
///
/// ```
/// use capwire::{Methods, Value};
///
/// let calc = Methods::new("Calculator")
///     .method("square", |args: Value, _ctx| async move {
///         let (n,): (i64,) = args.decode()?;
///         Value::new(&(n * n))
///     });
/// ```
#[derive(Clone)]
pub struct Methods {
    name: String,
    handlers: HashMap<String, Handler>,
    streams: HashMap<String, StreamHandler>,
    idempotent: Vec<String>,
}

impl Methods {
    /// An object with no methods yet, named for events and logs.
    pub fn new(name: impl Into<String>) -> Methods {
        Methods {
            name: name.into(),
            handlers: HashMap::new(),
            streams: HashMap::new(),
            idempotent: Vec::new(),
        }
    }

    /// Adds a method.
    pub fn method<F, Fut>(mut self, name: &str, f: F) -> Methods
    where
        F: Fn(Value, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Status>> + Send + 'static,
    {
        self.handlers.insert(
            name.to_owned(),
            Arc::new(move |args, ctx| f(args, ctx).boxed()),
        );
        self
    }

    /// Adds a stream method: the handler returns the stream of items.
    ///
    /// ```
    /// use capwire::{Methods, Value};
    /// use futures_util::stream;
    ///
    /// let ticker = Methods::new("Ticker").stream("count", |args: Value, _ctx| async move {
    ///     let (n,): (u64,) = args.decode()?;
    ///     Ok(stream::iter((0..n).map(|i| Value::new(&i))))
    /// });
    /// ```
    pub fn stream<F, Fut, S>(mut self, name: &str, f: F) -> Methods
    where
        F: Fn(Value, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Status>> + Send + 'static,
        S: Stream<Item = Result<Value, Status>> + Send + 'static,
    {
        self.streams.insert(
            name.to_owned(),
            Arc::new(move |args, ctx| f(args, ctx).map(|r| r.map(StreamExt::boxed)).boxed()),
        );
        self
    }

    /// Marks a method idempotent: it is not aborted when its deadline passes.
    pub fn idempotent(mut self, name: &str) -> Methods {
        self.idempotent.push(name.to_owned());
        self
    }

    /// The method names, sorted.
    pub fn method_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .handlers
            .keys()
            .chain(self.streams.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl Object for Methods {
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        match self.handlers.get(method) {
            Some(h) => h(args, ctx),
            None if self.streams.contains_key(method) => {
                let status = Status::new(
                    Code::InvalidArgument,
                    format!(
                        "`{method}` of {} is a stream method: call it as a stream",
                        self.name
                    ),
                );
                async move { Err(status) }.boxed()
            }
            None => {
                let status = Status::new(
                    Code::Unimplemented,
                    format!("{} has no method `{method}`", self.name),
                );
                async move { Err(status) }.boxed()
            }
        }
    }

    fn call_stream(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Items, Status>> {
        match self.streams.get(method) {
            Some(h) => h(args, ctx),
            None => {
                let status = if self.handlers.contains_key(method) {
                    Status::new(
                        Code::InvalidArgument,
                        format!("`{method}` of {} does not stream", self.name),
                    )
                } else {
                    Status::new(
                        Code::Unimplemented,
                        format!("{} has no method `{method}`", self.name),
                    )
                };
                async move { Err(status) }.boxed()
            }
        }
    }

    fn is_stream(&self, method: &str) -> bool {
        self.streams.contains_key(method)
    }

    fn is_idempotent(&self, method: &str) -> bool {
        self.idempotent.iter().any(|m| m == method)
    }

    fn type_name(&self) -> &str {
        &self.name
    }
}
