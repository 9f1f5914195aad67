//! Promise pipelining, the callee's side (protocol.md §4.5, \[S14\]–\[S16\]).
//!
//! A call whose target is `{"answer": id, "path": [...]}` waits in the queue
//! of kept answer `id` until it settles; then the queue is delivered in
//! arrival order (E-order), each call to the capability its path names. An
//! `answer` descriptor in an argument becomes an [`AnswerRef`]: a promise
//! capability that waits in the same queue and, once resolved, is the
//! capability its path names.

use std::sync::{Arc, Weak};

use capwire_proto::{PathSeg, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

use super::{cancelled, Shared, StartAnswer};
use crate::capability::{CapKind, Capability};
use crate::object::{CallContext, Items, Object};
use crate::value::Value;

/// Something waiting for a kept answer to settle (the engine keeps the
/// path it waits for beside it).
pub(crate) enum Queued {
    /// A call from the peer addressed to a path of the answer.
    Call(Box<StartAnswer>),
    /// A promise capability the peer passed as an argument.
    Promise(Arc<AnswerRef>),
}

/// The capability at `path` of a settled answer (\[S9\]).
pub(crate) fn resolve(
    outcome: &Result<Value, Status>,
    path: &[PathSeg],
) -> Result<Capability, Status> {
    match outcome {
        Ok(value) => value.payload.cap_at(path).and_then(|n| value.cap(n)),
        Err(status) => Err(status.clone()),
    }
}

/// The object a resolved capability is called through: local objects
/// directly, everything else (imports, promises) as a forwarding object.
pub(crate) fn object_of(cap: Capability) -> Arc<dyn Object> {
    match cap.kind {
        CapKind::Local(object) | CapKind::Served { object, .. } => object,
        _ => Arc::new(cap),
    }
}

/// A capability at a path of an answer this side owes the peer, before the
/// answer settled.
pub(crate) struct AnswerRef {
    pub(crate) answer: u64,
    session: Weak<Shared>,
    resolved: watch::Sender<Option<Result<Capability, Status>>>,
}

impl AnswerRef {
    pub(crate) fn new(answer: u64, session: Weak<Shared>) -> AnswerRef {
        AnswerRef {
            answer,
            session,
            resolved: watch::Sender::new(None),
        }
    }

    /// Called when the answer settles, in queue order.
    pub(crate) fn resolve(&self, outcome: Result<Capability, Status>) {
        self.resolved.send_replace(Some(outcome));
    }

    /// The resolved capability, once known.
    pub(crate) fn get(&self) -> Option<Result<Capability, Status>> {
        self.resolved.borrow().clone()
    }

    /// Waits for the answer to settle; fails if the connection closes first.
    pub(crate) async fn resolved(&self) -> Result<Capability, Status> {
        let mut rx = self.resolved.subscribe();
        let closed = self.session.upgrade().map(|s| s.closed.clone());
        let gone = || Status::unavailable("the connection closed before the promise resolved");
        tokio::select! {
            r = rx.wait_for(Option::is_some) => match r {
                Ok(v) => v.clone().unwrap_or_else(|| Err(gone())),
                Err(_) => Err(gone()),
            },
            _ = cancelled(closed) => Err(gone()),
        }
    }
}

/// A failure standing in for a capability: every call answers it. Used to
/// answer a queued call whose answer settled with an error or a bad path.
pub(crate) struct Failing(pub(crate) Status);

impl Object for Failing {
    fn call(
        self: Arc<Self>,
        _method: &str,
        _args: Value,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        let status = self.0.clone();
        async move { Err(status) }.boxed()
    }

    fn call_stream(
        self: Arc<Self>,
        _method: &str,
        _args: Value,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<Items, Status>> {
        let status = self.0.clone();
        async move { Err(status) }.boxed()
    }

    fn type_name(&self) -> &str {
        "failed promise"
    }
}
