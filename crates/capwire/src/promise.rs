//! Lazy calls and promise pipelining, the caller's side.
//!
//! [`Capability::call`] returns a [`Promise`]: nothing is sent until it is
//! awaited or pipelined on. Awaited on its own, it goes out as a plain call
//! (`call`, then `result`: two frames, nothing kept). Pipelined on — a method
//! called on the capability it will resolve to, or a path of its value passed
//! as an argument — it goes out as a *kept* call, the pipelined calls go out
//! right behind it without waiting for its answer, and the answer is
//! finished when the last handle to it is gone.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use capwire_proto::{Code, PathSeg, Status};
use futures_util::future::{self, BoxFuture, Shared as SharedFuture};
use futures_util::FutureExt;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use crate::capability::{call_local, local_context, CapKind, Capability, Destination};
use crate::object::PipelineAt;
use crate::session::{CallScope, OutCall, PlainCall, Shared, WireTarget};
use crate::value::Value;

/// A call that may not have been sent yet. Await it for the result; call
/// [`Promise::call`], [`Promise::cap`] or [`Promise::get`] to pipeline on it.
///
/// Dropping a promise that was awaited but has not settled cancels the call
/// at the callee; dropping one that nothing awaited sends nothing at all.
#[must_use = "a promise does nothing until it is awaited or pipelined on"]
pub struct Promise {
    /// The call, until it is awaited or something pipelines on it.
    call: RefCell<Option<PendingCall>>,
    /// Made when something pipelines on the promise: the call moves into it.
    core: std::cell::OnceCell<Arc<PromiseCore>>,
    deadline: Option<Instant>,
    wait: Wait,
}

/// How an awaited promise waits.
enum Wait {
    /// Not awaited yet.
    Idle,
    /// A plain call on an import: the common case, inline.
    Plain(PlainCall),
    /// Anything else: a kept call, a local object, a promised target.
    Boxed(BoxFuture<'static, Result<Value, Status>>),
    /// An outcome known before anything was sent.
    Ready(Option<Result<Value, Status>>),
}

/// What a promise and the pipelined capabilities made from it share.
pub(crate) struct PromiseCore {
    /// The call, until it is sent.
    pending: Mutex<Option<PendingCall>>,
    /// How it was sent, once it was sent kept (or run where it cannot be kept).
    sent: OnceCell<Sent>,
    deadline: Option<Instant>,
}

/// A call, described but not sent.
pub(crate) struct PendingCall {
    pub(crate) target: Capability,
    pub(crate) method: MethodName,
    pub(crate) args: Value,
    pub(crate) deadline: Option<Instant>,
    pub(crate) scope: Option<CallScope>,
}

/// A method name as a call keeps it: the literal of a typed client costs
/// nothing to keep; other names are copied once, into shared text.
#[derive(Clone)]
pub(crate) enum MethodName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl std::ops::Deref for MethodName {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            MethodName::Static(s) => s,
            MethodName::Shared(s) => s,
        }
    }
}

/// A promise that was sent.
pub(crate) enum Sent {
    /// A kept question on a connection: calls on it travel as pipelined
    /// targets, and the answer stays at the callee until the question drops.
    Kept(Arc<KeptQuestion>),
    /// A result computed here (a local object, or a call whose target is
    /// itself resolved here): pipelined calls wait for it, then go on.
    Deferred(SharedFuture<BoxFuture<'static, Result<Value, Status>>>),
    /// Sent by an object that pipelines in its own protocol
    /// ([`Object::call_pipelined`](crate::Object::call_pipelined)): calls on
    /// it go to the capabilities `at` gives.
    Proxied {
        result: SharedFuture<BoxFuture<'static, Result<Value, Status>>>,
        at: PipelineAt,
    },
}

/// A kept question: `finish` goes to the callee when it drops.
pub(crate) struct KeptQuestion {
    pub(crate) session: Weak<Shared>,
    pub(crate) id: u64,
    pub(crate) result: watch::Receiver<Option<Result<Value, Status>>>,
    /// The promises this call was pipelined on (target and arguments): their
    /// answers must stay at the callee until this one has settled.
    pub(crate) _deps: Vec<Capability>,
}

impl Drop for KeptQuestion {
    fn drop(&mut self) {
        // Never waits for the session lock: a question may be dropped while it is held.
        if let Some(shared) = self.session.upgrade() {
            shared.queue_finish(self.id);
        }
    }
}

impl KeptQuestion {
    async fn wait(&self, deadline: Option<Instant>) -> Result<Value, Status> {
        let mut rx = self.result.clone();
        let settled = async {
            match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or_else(|| Err(closed())),
                Err(_) => Err(closed()),
            }
        };
        match deadline {
            None => settled.await,
            Some(d) => tokio::time::timeout_at(d, settled)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::new(
                        Code::DeadlineExceeded,
                        "the call did not answer before its deadline",
                    ))
                }),
        }
    }
}

fn closed() -> Status {
    Status::unavailable("the connection closed")
}

fn already_awaited() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "this promise is already being awaited as a plain call; pipeline on it before awaiting",
    )
}

impl PromiseCore {
    /// Sends the call kept (once), so that calls can be pipelined on it.
    pub(crate) fn ensure_sent(self: &Arc<Self>) -> BoxFuture<'_, &Sent> {
        async move {
            self.sent
                .get_or_init(|| async {
                    let call = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    match call {
                        Some(call) => call.send_kept().await,
                        None => {
                            Sent::Deferred(future::ready(Err(already_awaited())).boxed().shared())
                        }
                    }
                })
                .await
        }
        .boxed()
    }

    /// How the promise was sent, if it was.
    pub(crate) fn sent(&self) -> Option<&Sent> {
        self.sent.get()
    }

    /// The session the call goes to, if it goes to one: pipelining on the
    /// wire is possible only there.
    pub(crate) fn session(&self) -> Option<usize> {
        if let Some(sent) = self.sent.get() {
            return match sent {
                Sent::Kept(k) => Some(k.session.as_ptr() as usize),
                Sent::Deferred(_) | Sent::Proxied { .. } => None,
            };
        }
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.as_ref().and_then(|c| c.target.session())
    }

    /// The call's result, sending it kept first if needed.
    pub(crate) async fn result(self: &Arc<Self>) -> Result<Value, Status> {
        match self.ensure_sent().await {
            Sent::Kept(k) => k.wait(self.deadline).await,
            Sent::Deferred(f) | Sent::Proxied { result: f, .. } => f.clone().await,
        }
    }
}

impl PendingCall {
    /// The call as it goes on the wire to `to`, and the target's handle,
    /// which the caller keeps alive until the call is answered.
    pub(crate) fn on_wire(self, to: &WireTarget) -> (OutCall<'_>, Capability) {
        let PendingCall {
            target,
            method,
            args,
            deadline,
            scope,
        } = self;
        let call = OutCall {
            target: to,
            method,
            args,
            deadline,
            scope,
        };
        (call, target)
    }

    /// Starts the call as a plain call: inline for an import and arguments
    /// without capabilities, else as a boxed future.
    fn start_plain(self) -> Wait {
        if self.args.caps.is_empty() {
            if let CapKind::Remote(remote) = &self.target.kind {
                let Some(shared) = remote.session.upgrade() else {
                    return Wait::Ready(Some(Err(Status::unavailable("the connection is closed"))));
                };
                let to = WireTarget::Cap(remote.id);
                let (call, target) = self.on_wire(&to);
                return match shared.start_plain(call, Some(target)) {
                    Ok(call) => Wait::Plain(call),
                    Err(status) => Wait::Ready(Some(Err(status))),
                };
            }
        }
        Wait::Boxed(self.run_plain())
    }

    /// Sends the call as a plain call and waits for its result.
    pub(crate) fn run_plain(self) -> BoxFuture<'static, Result<Value, Status>> {
        async move {
            let destination = match self.target.destination_now() {
                Some(d) => d,
                None => self.target.destination().await,
            };
            match destination? {
                Destination::Wire(shared, to) => {
                    // The target (and so any answer it names) lives until
                    // the call is answered.
                    let (call, _target) = self.on_wire(&to);
                    shared.call_plain(call).await
                }
                // Boxed: the future of a wire call, the common case, need
                // not carry the local call's timer.
                Destination::Local(object) => {
                    let PendingCall {
                        method,
                        args,
                        deadline,
                        scope,
                        ..
                    } = self;
                    Box::pin(call_local(object, &method, args, deadline, scope)).await
                }
            }
        }
        .boxed()
    }

    /// Sends the call kept, so that calls can be pipelined on its answer.
    async fn send_kept(self) -> Sent {
        let wire = match self.target.destination().await {
            Ok(Destination::Wire(shared, to)) => Some((shared, to)),
            Ok(Destination::Local(object)) if object.pipelines() => {
                let ctx = local_context(&self.method, self.deadline, self.scope.as_ref());
                return match object.call_pipelined(&self.method, self.args, ctx).await {
                    Ok(p) => Sent::Proxied {
                        result: p.result.shared(),
                        at: p.at,
                    },
                    Err(status) => Sent::Deferred(future::ready(Err(status)).boxed().shared()),
                };
            }
            Ok(Destination::Local(_)) => None,
            Err(status) => return Sent::Deferred(future::ready(Err(status)).boxed().shared()),
        };
        match wire {
            Some((shared, to)) => {
                let (call, target) = self.on_wire(&to);
                match shared.call_kept(call, target).await {
                    Ok(kept) => Sent::Kept(kept),
                    Err(status) => Sent::Deferred(future::ready(Err(status)).boxed().shared()),
                }
            }
            None => {
                // Nothing to pipeline on the wire: compute the result here and
                // let pipelined calls wait for it.
                let shared = self.run_plain().shared();
                // Started now, so that it runs even if only pipelined calls wait for it.
                tokio::spawn(shared.clone().map(drop));
                Sent::Deferred(shared)
            }
        }
    }
}

/// The capability at `path` in a value computed here.
pub(crate) fn resolve_local(
    value: Result<Value, Status>,
    path: &[PathSeg],
) -> Result<Capability, Status> {
    let value = value?;
    let n = value.payload.cap_at(path)?;
    value.cap(n)
}

impl Promise {
    pub(crate) fn new(call: PendingCall) -> Promise {
        Promise {
            deadline: call.deadline,
            call: RefCell::new(Some(call)),
            core: std::cell::OnceCell::new(),
            wait: Wait::Idle,
        }
    }

    /// What pipelined capabilities share: made on the first one, taking the
    /// call if it was not awaited yet (else it stays empty, and calls on it
    /// fail: a plain call keeps no answer to pipeline on).
    fn core(&self) -> &Arc<PromiseCore> {
        self.core.get_or_init(|| {
            Arc::new(PromiseCore {
                pending: Mutex::new(self.call.borrow_mut().take()),
                sent: OnceCell::new(),
                deadline: self.deadline,
            })
        })
    }

    /// The capability this call will return (its result is the capability
    /// itself, `{"$cap": 0}`), usable before the answer arrives.
    pub fn cap(&self) -> Capability {
        self.get(Vec::<PathSeg>::new())
    }

    /// The capability at `path` in the value this call will return, usable
    /// before the answer arrives: call it, or pass it as an argument.
    ///
    /// ```no_run
    /// # async fn f(calc: capwire::Capability) -> Result<(), capwire::Status> {
    /// use capwire::{path, Value};
    /// // `makeCounter` answers {"counter": <capability>}: one round trip for both calls.
    /// let made = calc.call("makeCounter", Value::new(&(5,))?);
    /// let n: i64 = made.get(path!["counter"]).call("increment", Value::new(&(1,))?).await?.decode()?;
    /// # Ok(()) }
    /// ```
    pub fn get(&self, path: impl Into<Vec<PathSeg>>) -> Capability {
        Capability {
            kind: CapKind::Promised(self.core().clone(), path.into().into()),
        }
    }

    /// Calls `method` on the capability this call will return, without
    /// waiting for it: shorthand for `self.cap().call(method, args)`.
    pub fn call(&self, method: &str, args: Value) -> Promise {
        self.cap().call(method, args)
    }
}

impl Future for Promise {
    type Output = Result<Value, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if matches!(this.wait, Wait::Idle) {
            this.wait = this.start();
        }
        match &mut this.wait {
            Wait::Plain(call) => call.poll_unpin(cx),
            Wait::Boxed(wait) => wait.poll_unpin(cx),
            Wait::Ready(outcome) => {
                Poll::Ready(outcome.take().unwrap_or_else(|| Err(already_awaited())))
            }
            Wait::Idle => Poll::Ready(Err(already_awaited())),
        }
    }
}

impl Promise {
    /// Sends the call when it is first awaited: kept if something still
    /// pipelines on it (a handle to the core besides this promise's own),
    /// plain otherwise.
    fn start(&mut self) -> Wait {
        if let Some(core) = self.core.get() {
            if core.sent.initialized() || Arc::strong_count(core) > 1 {
                let core = core.clone();
                return Wait::Boxed(async move { core.result().await }.boxed());
            }
            let call = core
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            return match call {
                Some(call) => call.start_plain(),
                None => Wait::Ready(Some(Err(already_awaited()))),
            };
        }
        match self.call.get_mut().take() {
            Some(call) => call.start_plain(),
            None => Wait::Ready(Some(Err(already_awaited()))),
        }
    }
}

impl std::fmt::Debug for Promise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sent = self.core.get().and_then(|c| c.sent.get());
        let state = match (sent, &self.wait) {
            (Some(Sent::Kept(k)), _) => format!("kept question {}", k.id),
            (Some(Sent::Deferred(_)), _) => "computed here".to_owned(),
            (Some(Sent::Proxied { .. }), _) => "pipelined by its object".to_owned(),
            (None, Wait::Idle) => "not sent".to_owned(),
            (None, _) => "sent".to_owned(),
        };
        write!(f, "Promise({state})")
    }
}

/// Builds a path for [`Promise::get`]: strings are map keys, integers array
/// indexes. `path!["users", 0, "avatar"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        ::std::vec![$($crate::proto::PathSeg::from($seg)),*]
    };
}
