//! The peer's messages: the read loop and what each of `push`, `pull`,
//! `resolve`/`reject`, `release`, `abort`, `pipe` and `stream` does.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use capwire_proto::{Code, Status};
use serde_json::{json, Value as Json};

use crate::transport::FrameReceiver;
use crate::value::Value;

use super::{expr, push_key, violation, Export, Inner, PIPE_WINDOW};

pub(super) async fn read_loop(inner: Arc<Inner>, mut receiver: FrameReceiver) {
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
        inner.sender.reader_backpressure(&inner.closed).await;
        if inner.closed.is_cancelled() {
            return;
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
pub(super) fn stream_message(inner: &Arc<Inner>, expr: &Json) -> Result<(), Status> {
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

/// Parses one message, within capnweb's nesting limit.
pub(super) fn parse(bytes: &[u8]) -> Result<Json, Status> {
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

pub(super) fn bad_message(message: &Json) -> Status {
    let mut text = message.to_string();
    text.truncate(200);
    violation(format!("bad RPC message: {text}"))
}

/// Handles one message. An `Err` aborts the session.
pub(super) async fn handle(inner: &Arc<Inner>, message: Json) -> Result<(), Status> {
    let Json::Array(items) = &message else {
        return Err(bad_message(&message));
    };
    let kind = items.first().and_then(Json::as_str).unwrap_or("");
    match (kind, items.len()) {
        ("push", 2) => {
            let expr = items[1].clone();
            let id = inner.lock().import_push(&inner.limits)?;
            // Started now, inline until it waits: calls start in arrival order.
            let me = inner.clone();
            crate::session::start_inline(async move {
                let outcome = me.eval_value(expr).await;
                let violated = match &outcome {
                    Err(s) if s.reason == Some(capwire_proto::Reason::PROTOCOL_VIOLATION) => {
                        Some(s.clone())
                    }
                    _ => None,
                };
                me.settle_push(id, outcome);
                if let Some(status) = violated {
                    me.abort(status).await;
                }
            });
            Ok(())
        }
        ("pull", 2) => {
            let id = items[1].as_i64().ok_or_else(|| bad_message(&message))?;
            let Some(outcome) = inner.push_outcome(id) else {
                if inner.lock().exports.contains_key(&id) {
                    // A capability or a pipe: nothing to pull.
                    return Ok(());
                }
                return Err(violation(format!("no such export ID: {id}")));
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
                let key = push_key(id);
                if id > 0 && st.pushes.contains(key) {
                    // A push has one reference: its importer's.
                    if n > 1 {
                        return Err(violation(format!(
                            "refcount would go negative for export {id}"
                        )));
                    }
                    let finished = st.pushes.finish(key);
                    drop(st);
                    // Freed now if settled; an evaluation still running
                    // settles, then is freed.
                    drop(finished);
                    return Ok(());
                }
                let refs = match st.exports.get_mut(&id) {
                    Some(Export::Cap { refs, .. } | Export::Pipe { refs, .. }) => refs,
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
            let pipe = Export::Pipe {
                sink,
                source: Some(source),
                refs: 1,
            };
            inner.lock().import_pipe(&inner.limits, pipe)?;
            Ok(())
        }
        ("stream", 2) => stream_message(inner, &items[1]),
        _ => Err(bad_message(&message)),
    }
}
