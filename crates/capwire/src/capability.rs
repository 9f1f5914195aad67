//! Capability handles: the client side of an object, local or remote.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;

use crate::attestation::{Attestation, TransportKind};
use crate::object::{CallContext, Object};
use crate::session::{current_scope, Shared};
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
}

impl CapKind {
    fn local_object(&self) -> Option<&Arc<dyn Object>> {
        match self {
            CapKind::Local(o) | CapKind::Served { object: o, .. } => Some(o),
            CapKind::Remote(_) => None,
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
        // Never locks: a handle may be dropped while the session's lock is held.
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

    /// True for an object hosted in this process.
    pub fn is_local(&self) -> bool {
        !matches!(self.kind, CapKind::Remote(_))
    }

    /// For a remote capability, its id in the peer's export table.
    pub fn remote_id(&self) -> Option<u64> {
        match &self.kind {
            CapKind::Remote(r) => Some(r.id),
            CapKind::Local(_) | CapKind::Served { .. } => None,
        }
    }

    /// True when both handles name the same object (the same local object, or
    /// the same import on the same connection).
    pub fn same_as(&self, other: &Capability) -> bool {
        match (&self.kind, &other.kind) {
            (CapKind::Remote(a), CapKind::Remote(b)) => Arc::ptr_eq(a, b),
            (CapKind::Remote(_), _) | (_, CapKind::Remote(_)) => false,
            (a, b) => match (a.local_object(), b.local_object()) {
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            },
        }
    }

    /// Calls `method`. Nothing is sent until the future is polled; dropping it
    /// before it completes cancels the call at the callee.
    pub fn call(
        &self,
        method: &str,
        args: Value,
    ) -> impl Future<Output = Result<Value, Status>> + Send + 'static {
        self.call_with(method, args, CallOptions::default())
    }

    /// Calls `method` with options.
    pub fn call_with(
        &self,
        method: &str,
        args: Value,
        options: CallOptions,
    ) -> impl Future<Output = Result<Value, Status>> + Send + 'static {
        let kind = self.kind.clone();
        let method: Arc<str> = method.into();
        async move {
            let scope = current_scope();
            let now = Instant::now();
            let mut deadline = options.timeout.map(|t| now + t);
            if let Some(parent) = scope.as_ref().and_then(|s| s.deadline) {
                deadline = Some(deadline.map_or(parent, |d| d.min(parent)));
            }
            match kind {
                CapKind::Remote(remote) => {
                    let Some(shared) = remote.session.upgrade() else {
                        return Err(Status::unavailable("the connection is closed"));
                    };
                    shared.call(&remote, &method, args, deadline, scope).await
                }
                CapKind::Local(object) | CapKind::Served { object, .. } => {
                    let att = Arc::new(Attestation::new(TransportKind::Memory));
                    let mut ctx = CallContext::local(&method, deadline, att);
                    if let Some(s) = &scope {
                        ctx.cancel = s.cancel.child_token();
                    }
                    let cancel = ctx.cancel.clone();
                    let call = object.call(&method, args, ctx);
                    let sleep = async move {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = call => r,
                        _ = cancel.cancelled() => Err(Status::new(Code::Cancelled, "the parent call was cancelled")),
                        _ = sleep => Err(Status::new(Code::DeadlineExceeded, format!("`{method}` did not finish before its deadline"))),
                    }
                }
            }
        }
    }
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
        let timeout = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        self.call_with(method, args, CallOptions { timeout })
            .boxed()
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
        }
    }
}
