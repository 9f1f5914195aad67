//! The peer's capabilities on this side: a [`PeerStub`] is a capwire object
//! whose calls are `push` + `pull` to the peer, numbered in send order.

use std::sync::{Arc, Weak};

use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;

use crate::capability::Capability;
use crate::object::{CallContext, Object, PipelineAt, Pipelined};
use crate::value::Value;

use super::expr;
use super::Inner;

/// A capability the peer exported to us: calls become `push` + `pull`. A
/// `writable` one is the peer's WritableStream, seen here as a capwire sink:
/// `write`, `end` and `abort` become `stream` messages (acknowledged by
/// their `resolve`, with no pull or release).
pub(super) struct PeerStub {
    inner: Weak<Inner>,
    id: i64,
    /// A stub on one of our pushes: the path inside its result, and the
    /// push it keeps alive.
    on: Option<(Json, Arc<PushRef>)>,
    writable: bool,
}

/// One of our pushes, pipelined on: released when its result and every stub
/// on it are gone.
pub(super) struct PushRef {
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

impl Inner {
    /// Takes our next positive id for a `push`, `stream` or `pipe` we send,
    /// with the channel its `resolve`/`reject` will arrive on.
    #[allow(clippy::type_complexity)]
    pub(super) fn ask(&self) -> Result<(i64, oneshot::Receiver<Result<Json, Json>>), Status> {
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

    /// Sends a message that takes our next positive id (`push`, `stream`,
    /// `pipe`), with the channel its `resolve`/`reject` arrives on.
    #[allow(clippy::type_complexity)]
    pub(super) async fn send_numbered(
        &self,
        message: impl FnOnce(i64) -> Json,
    ) -> Result<(i64, oneshot::Receiver<Result<Json, Json>>), Status> {
        let _order = self.numbering.lock().await;
        let (id, rx) = self.ask()?;
        self.send(message(id)).await?;
        Ok((id, rx))
    }

    pub(super) fn stub(self: &Arc<Self>, id: i64) -> Capability {
        self.stub_of(id, false)
    }

    pub(super) fn stub_of(self: &Arc<Self>, id: i64, writable: bool) -> Capability {
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
    pub(super) fn pipeline_stub(
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
}
