//! The other side of a JSON-RPC connection, as this side calls it: raw
//! requests and notifications, or a typed client of an interface whose
//! methods become `name/method` requests.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use capwire_proto::{Code, Reason, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{Map, Value as Json};
use tokio::sync::oneshot;

use super::catalog::MethodInfo;
use super::message;
use super::session::Inner;
use crate::capability::Capability;
use crate::object::{CallContext, Object};
use crate::typed::Client;
use crate::value::Value;

/// A handle on the peer of a JSON-RPC connection. Cheap to clone; it does
/// not keep the connection open.
#[derive(Clone)]
pub struct JsonRpcPeer {
    inner: Weak<Inner>,
}

impl std::fmt::Debug for JsonRpcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRpcPeer").finish_non_exhaustive()
    }
}

fn gone() -> Status {
    Status::unavailable("the JSON-RPC connection has ended")
}

/// Removes a request from the pending table if its caller stops waiting,
/// and tells the peer (`$/cancelRequest`).
struct Waiting {
    inner: Weak<Inner>,
    n: u64,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(inner) = self.inner.upgrade() {
            let was_pending = inner.lock().pending.remove(&self.n).is_some();
            if was_pending {
                let id = Json::from(format!("{}{}", inner.prefix, self.n));
                let cancel = message::call(
                    None,
                    "$/cancelRequest",
                    Some(&serde_json::json!({ "id": id })),
                );
                let _ = inner.sender.try_send(cancel);
            }
        }
    }
}

impl JsonRpcPeer {
    pub(crate) fn new(inner: Weak<Inner>) -> JsonRpcPeer {
        JsonRpcPeer { inner }
    }

    fn inner(&self) -> Result<Arc<Inner>, Status> {
        let inner = self.inner.upgrade().ok_or_else(gone)?;
        if inner.one_shot {
            return Err(Status::new(
                Code::FailedPrecondition,
                "JSON-RPC over an HTTP request cannot carry calls toward the client",
            ));
        }
        Ok(inner)
    }

    /// Sends a request and waits for its response. `timeout`, when given,
    /// bounds the wait: past it the peer is sent `$/cancelRequest` and the
    /// call fails with `deadline_exceeded`. Dropping the future cancels
    /// the same way.
    pub async fn request(
        &self,
        method: &str,
        params: Option<Json>,
        timeout: Option<Duration>,
    ) -> Result<Json, Status> {
        let inner = self.inner()?;
        let n = inner.next_out.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = inner.lock();
            if let Some(status) = &state.ended {
                return Err(status.clone());
            }
            if state.pending.len() >= inner.config.limits.max_in_flight_out {
                return Err(Status::limit(
                    Reason::MAX_CONCURRENT_CALLS,
                    inner.config.limits.max_in_flight_out as u64,
                ));
            }
            state.pending.insert(n, tx);
        }
        let mut waiting = Waiting {
            inner: self.inner.clone(),
            n,
            armed: true,
        };
        let id = Json::from(format!("{}{}", inner.prefix, n));
        let frame = message::call(Some(&id), method, params.as_ref());
        if inner.sender.send(frame).await.is_err() {
            waiting.armed = false;
            inner.lock().pending.remove(&n);
            return Err(gone());
        }
        drop(inner);
        let outcome = match timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("`{method}` did not answer within {} ms", t.as_millis()),
                    ))
                }
            },
            None => rx.await,
        };
        waiting.armed = false;
        outcome.map_err(|_| gone())?
    }

    /// Sends a notification.
    pub async fn notify(&self, method: &str, params: Option<Json>) -> Result<(), Status> {
        let inner = self.inner()?;
        let frame = message::call(None, method, params.as_ref());
        inner.sender.send(frame).await.map_err(|_| gone())
    }

    /// Sends a notification without waiting for room in the send queue
    /// (fails if the queue is full).
    pub fn notify_now(&self, method: &str, params: Option<Json>) -> Result<(), Status> {
        let inner = self.inner()?;
        let frame = message::call(None, method, params.as_ref());
        inner
            .sender
            .send_now(frame)
            .map_err(|e| Status::unavailable(format!("the notification was not sent: {e}")))
    }

    /// A typed client of the interface the peer serves as `name`: its
    /// methods are sent as `name/method` requests (params by name, as the
    /// interface declares them), its notification methods as notifications.
    /// Results are checked against the interface's schema in debug builds.
    pub fn client<C: Client>(&self, name: &str) -> C {
        let schema = crate::typed::interface_schema::<C>(name, "");
        C::from_cap(self.capability(name, Some(schema)))
    }

    /// An untyped capability whose calls are `name/method` requests
    /// (params by position unless `schema` names them).
    pub fn capability(&self, name: &str, schema: Option<Json>) -> Capability {
        let sep = self
            .inner
            .upgrade()
            .map_or('/', |i| i.config.separator.as_char());
        Capability::local(PeerObject {
            peer: self.clone(),
            prefix: format!("{name}{sep}"),
            schema,
            methods: Mutex::new(HashMap::new()),
        })
    }
}

/// The peer's served name, as a capwire object.
struct PeerObject {
    peer: JsonRpcPeer,
    prefix: String,
    schema: Option<Json>,
    methods: Mutex<HashMap<String, Option<Arc<MethodInfo>>>>,
}

impl PeerObject {
    fn info(&self, method: &str) -> Option<Arc<MethodInfo>> {
        let schema = self.schema.as_ref()?;
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        methods
            .entry(method.to_owned())
            .or_insert_with(|| MethodInfo::from_schema(schema, method).map(Arc::new))
            .clone()
    }

    /// The call's arguments as params: by name when the names are known.
    fn params(&self, info: Option<&MethodInfo>, args: &Value) -> Result<Option<Json>, Status> {
        if !args.caps().is_empty() {
            return Err(Status::new(
                Code::InvalidArgument,
                "a capability cannot be passed to a JSON-RPC peer",
            ));
        }
        let args = match args.to_json()? {
            Json::Array(a) => a,
            Json::Null => Vec::new(),
            other => vec![other],
        };
        let names = info.and_then(MethodInfo::param_names);
        Ok(match names {
            Some(names) if names.len() >= args.len() && !names.is_empty() => {
                let mut map = Map::new();
                for (name, arg) in names.iter().zip(args) {
                    if !arg.is_null() {
                        map.insert((*name).to_owned(), arg);
                    }
                }
                Some(Json::Object(map))
            }
            Some(names) if names.is_empty() => None,
            _ if args.is_empty() => None,
            _ => Some(Json::Array(args)),
        })
    }
}

impl Object for PeerObject {
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        let method = method.to_owned();
        async move {
            let info = self.info(&method);
            let params = self.params(info.as_deref(), &args)?;
            let timeout = ctx.time_left();
            let full = format!("{}{}", self.prefix, method);
            let result = self.peer.request(&full, params, timeout).await?;
            if cfg!(debug_assertions) {
                if let Some(info) = &info {
                    info.check_result(&result)
                        .map_err(|m| Status::new(Code::Internal, format!("`{full}`: {m}")))?;
                }
            }
            Value::new(&result)
        }
        .boxed()
    }

    fn notify(self: Arc<Self>, method: &str, args: &Value) -> Option<Result<(), Status>> {
        let info = self.info(method);
        let params = match self.params(info.as_deref(), args) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        Some(
            self.peer
                .notify_now(&format!("{}{}", self.prefix, method), params),
        )
    }

    fn type_name(&self) -> &str {
        "JSON-RPC peer"
    }

    fn schema(&self) -> Option<Json> {
        self.schema.clone()
    }
}
