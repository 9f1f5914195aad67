//! Evaluating the peer's expressions: `pipeline` references and calls on
//! exports, `remap` (`.map()`), values with capabilities grafted in, and
//! capwire streams turned into capnweb ReadableStreams.

use std::sync::Arc;

use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Map, Value as Json};
use tokio::sync::oneshot;

use crate::capability::{CapKind, Capability};
use crate::object::Object;
use crate::value::Value;

use super::{expr, remap, violation, Export, Inner};

/// What a reference starts from.
pub(super) enum Base {
    Cap(Capability),
    Value(Value),
}

pub(super) fn path_text(path: &[Json]) -> String {
    path.iter()
        .map(|p| match p {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) enum Located {
    /// A capability, reached after this many path segments.
    Cap(Capability, usize),
    /// Plain data at the end of the path.
    Value(Value),
}

/// Follows `path` into a value: stops at the first capability.
pub(super) fn locate(value: &Value, path: &[Json]) -> Result<Located, Status> {
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
pub(super) fn collect_caps(
    tree: &mut Json,
    value: &Value,
    used: &mut Vec<Capability>,
) -> Result<(), Status> {
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
pub(super) fn renumber(tree: &mut Json, offset: usize) {
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

/// A received value tree as a capwire value. capwire values nest at most
/// `MAX_DECODE_DEPTH` (128) levels, capnweb's up to 256: a deeper one fails
/// with `max_value_depth`.
pub(super) fn value_of(tree: &Json, caps: Vec<Capability>) -> Result<Value, Status> {
    let limit = capwire_proto::MAX_DECODE_DEPTH;
    if expr::too_deep(tree, limit, false) {
        return Err(Status::limit(
            capwire_proto::Reason::MAX_VALUE_DEPTH,
            limit as u64,
        ));
    }
    Value::with_caps(tree, caps)
}

impl Inner {
    /// Evaluates an incoming expression into a capwire value.
    pub(super) async fn eval_value(self: &Arc<Self>, expr: Json) -> Result<Value, Status> {
        let mut caps = Vec::new();
        let tree = self.eval(expr, &mut caps, None).await?;
        value_of(&tree, caps)
    }

    /// Evaluates an expression into a value tree, collecting capabilities.
    /// Inside a `.map()` mapper, `scope` holds its numbered slots.
    pub(super) fn eval<'a>(
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

    pub(super) async fn eval_array(
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
                let cap = match self.lock().exports.get(&id) {
                    Some(Export::Cap { cap, .. }) => Some(cap.clone()),
                    _ => None,
                };
                if let Some(cap) = cap {
                    return Ok(cap_ref(cap, caps));
                }
                match self.push_outcome(id) {
                    Some(outcome) => self.graft(outcome.await, caps),
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
    pub(super) fn graft(
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
    pub(super) async fn base(&self, id: i64, scope: Option<&remap::Scope>) -> Result<Base, Status> {
        if let Some(scope) = scope {
            return scope.slot(id).map(Base::Value);
        }
        let cap = match self.lock().exports.get(&id) {
            Some(Export::Cap { cap, .. }) => Some(cap.clone()),
            _ => None,
        };
        if let Some(cap) = cap {
            return Ok(Base::Cap(cap));
        }
        match self.push_outcome(id) {
            Some(outcome) => outcome.await.map(Base::Value),
            None => Err(violation(format!("no such entry on exports table: {id}"))),
        }
    }

    /// `["pipeline", id, path, args]`: a property path of `base`, and a call
    /// when `args` is present.
    pub(super) async fn pipeline(
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
        let started = crate::metrics::enabled().then(std::time::Instant::now);
        let outcome = cap.call(&method, args).await;
        if let Some(started) = started {
            let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
            let (dialect, dir) = (
                crate::metrics::Dialect::Capnweb,
                crate::events::Direction::Incoming,
            );
            crate::metrics::finished(dialect, false, dir, code, started.elapsed());
        }
        outcome
    }

    /// A capwire stream as a capnweb ReadableStream: `["pipe"]` now, a value
    /// holding `["readable", p]`, and the items pumped into the pipe as
    /// `stream` writes, one acknowledged before the next, then `close` (or
    /// `abort` with the stream's error) and `release`.
    pub(super) async fn readable(
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
