//! JSON-RPC 2.0 messages: telling what arrived (a request, a notification,
//! a response, or something invalid), and writing what is sent.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::errors::{ErrorObject, INVALID_REQUEST, PARSE_ERROR};

/// One entry of what arrived.
#[derive(Debug)]
pub(crate) enum Message {
    /// A call that wants an answer.
    Request {
        id: Json,
        method: String,
        params: Option<Json>,
    },
    /// A call that wants none.
    Notification {
        method: String,
        params: Option<Json>,
    },
    /// An answer to one of our requests.
    Response {
        id: Json,
        outcome: Result<Json, ErrorObject>,
    },
    /// Not a valid message: answered with `-32600` under `id` (null when
    /// the id could not be read).
    Invalid { id: Json, why: String },
}

/// What one received frame holds.
#[derive(Debug)]
pub(crate) enum Arrived {
    One(Message),
    /// A batch (a non-empty array): its entries, in order.
    Batch(Vec<Message>),
    /// Not JSON at all, or an empty batch: answered at once with this error.
    Refused(ErrorObject),
}

/// Reads a frame.
pub(crate) fn parse(frame: &[u8]) -> Arrived {
    let json: Json = match serde_json::from_slice(frame) {
        Ok(j) => j,
        Err(e) => {
            return Arrived::Refused(ErrorObject::new(PARSE_ERROR, format!("parse error: {e}")))
        }
    };
    match json {
        Json::Array(entries) if entries.is_empty() => Arrived::Refused(ErrorObject::new(
            INVALID_REQUEST,
            "invalid request: an empty batch",
        )),
        Json::Array(entries) => Arrived::Batch(entries.into_iter().map(classify).collect()),
        other => Arrived::One(classify(other)),
    }
}

/// Tells one entry's kind, checking it against the specification.
pub(crate) fn classify(json: Json) -> Message {
    let Json::Object(mut obj) = json else {
        return Message::Invalid {
            id: Json::Null,
            why: "a message is a JSON object".into(),
        };
    };
    let id = obj.remove("id");
    let id_ok = matches!(
        &id,
        None | Some(Json::Null | Json::String(_) | Json::Number(_))
    );
    let reply_id = if id_ok {
        id.clone().unwrap_or(Json::Null)
    } else {
        Json::Null
    };
    let invalid = |why: &str| Message::Invalid {
        id: reply_id.clone(),
        why: why.to_owned(),
    };
    if obj.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return invalid("`jsonrpc` must be \"2.0\"");
    }
    if !id_ok {
        return invalid("`id` must be a string, a number or null");
    }
    match obj.remove("method") {
        Some(Json::String(method)) => {
            let params = obj.remove("params");
            if !matches!(params, None | Some(Json::Array(_) | Json::Object(_))) {
                return invalid("`params` must be an array or an object");
            }
            match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            }
        }
        Some(_) => invalid("`method` must be a string"),
        None => read_response(obj, id).unwrap_or_else(invalid),
    }
}

fn read_response(mut obj: Map<String, Json>, id: Option<Json>) -> Result<Message, &'static str> {
    let id = id.ok_or("a message needs `method` (a call) or `id` (a response)")?;
    match (obj.remove("result"), obj.remove("error")) {
        (Some(result), None) => Ok(Message::Response {
            id,
            outcome: Ok(result),
        }),
        (None, Some(error)) => {
            let error: ErrorObject = serde_json::from_value(error)
                .map_err(|_| "`error` must have a numeric `code` and a string `message`")?;
            Ok(Message::Response {
                id,
                outcome: Err(error),
            })
        }
        (Some(_), Some(_)) => Err("a response has `result` or `error`, not both"),
        (None, None) => Err("a response needs `result` or `error`"),
    }
}

#[derive(Serialize)]
struct Out<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<&'a Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Json>,
}

const EMPTY: Out<'static> = Out {
    jsonrpc: "2.0",
    method: None,
    params: None,
    result: None,
    error: None,
    subscription: None,
    id: None,
};

fn write(out: &Out<'_>) -> Bytes {
    // Plain JSON values always serialize.
    Bytes::from(serde_json::to_vec(out).unwrap_or_default())
}

/// A response.
pub(crate) fn response(id: &Json, outcome: &Result<Json, ErrorObject>) -> Bytes {
    write(&Out {
        result: outcome.as_ref().ok(),
        error: outcome.as_ref().err(),
        id: Some(id),
        ..EMPTY
    })
}

/// A request (`id` set) or a notification.
pub(crate) fn call(id: Option<&Json>, method: &str, params: Option<&Json>) -> Bytes {
    write(&Out {
        method: Some(method),
        params,
        id,
        ..EMPTY
    })
}

/// A stream item: a notification that names the request it belongs to.
pub(crate) fn item(method: &str, item: &Json, subscription: &Json) -> Bytes {
    write(&Out {
        method: Some(method),
        params: Some(item),
        subscription: Some(subscription),
        ..EMPTY
    })
}

/// The responses of a batch, as one array.
pub(crate) fn batch(responses: &[Bytes]) -> Bytes {
    let len = responses.iter().map(|r| r.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, r) in responses.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Message {
        match parse(text.as_bytes()) {
            Arrived::One(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kinds_are_told_apart() {
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"a/b","params":[1]}"#),
            Message::Request { .. }
        ));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","method":"a/b"}"#),
            Message::Notification { params: None, .. }
        ));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":null,"method":"a/b"}"#),
            Message::Request { id: Json::Null, .. }
        ));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":"s1","result":null}"#),
            Message::Response {
                outcome: Ok(Json::Null),
                ..
            }
        ));
        assert!(matches!(
            one(r#"{"jsonrpc":"2.0","id":"s1","error":{"code":-1,"message":"x"}}"#),
            Message::Response {
                outcome: Err(_),
                ..
            }
        ));
    }

    #[test]
    fn wrong_messages_are_invalid_with_the_id_when_readable() {
        for (text, id) in [
            (r#"{"id":1,"method":"a"}"#, json!(1)),
            (r#"{"jsonrpc":"1.0","id":"x","method":"a"}"#, json!("x")),
            (r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#, Json::Null),
            (r#"{"jsonrpc":"2.0","id":2,"method":7}"#, json!(2)),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"a","params":5}"#,
                json!(3),
            ),
            (r#"{"jsonrpc":"2.0"}"#, Json::Null),
            (
                r#"{"jsonrpc":"2.0","id":4,"result":1,"error":{}}"#,
                json!(4),
            ),
            (r#"{"jsonrpc":"2.0","id":5,"error":{"code":"x"}}"#, json!(5)),
            ("1", Json::Null),
            ("\"x\"", Json::Null),
        ] {
            match one(text) {
                Message::Invalid { id: got, .. } => assert_eq!(got, id, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(parse(b"[]"), Arrived::Refused(e) if e.code == INVALID_REQUEST));
        assert!(matches!(parse(b"{"), Arrived::Refused(e) if e.code == PARSE_ERROR));
        assert!(matches!(parse(b""), Arrived::Refused(e) if e.code == PARSE_ERROR));
        match parse(b"[1, {\"jsonrpc\":\"2.0\",\"method\":\"m\"}]") {
            Arrived::Batch(v) => {
                assert!(matches!(v[0], Message::Invalid { .. }));
                assert!(matches!(v[1], Message::Notification { .. }));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn written_messages_have_the_members_they_need() {
        let r = response(&json!(1), &Ok(json!(2)));
        assert_eq!(&r[..], br#"{"jsonrpc":"2.0","result":2,"id":1}"#);
        let n = call(None, "m", None);
        assert_eq!(&n[..], br#"{"jsonrpc":"2.0","method":"m"}"#);
        let e: Json = serde_json::from_slice(&response(
            &Json::Null,
            &Err(ErrorObject::new(PARSE_ERROR, "p")),
        ))
        .unwrap();
        assert_eq!(e["error"]["code"], PARSE_ERROR);
        assert_eq!(e["id"], Json::Null);
        assert_eq!(
            &batch(&[n.clone(), n])[..],
            br#"[{"jsonrpc":"2.0","method":"m"},{"jsonrpc":"2.0","method":"m"}]"#
        );
    }
}
