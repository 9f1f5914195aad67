//! JSON-RPC at the frame level: what kind a frame is, its id, method and
//! the session it names, read without copying `params` or `result`, and the
//! same frame written back with another id. The relay routes frames; it does
//! not interpret them beyond this.

use std::borrow::Cow;

use bytes::Bytes;
use capwire::dialect::jsonrpc::ErrorObject;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The members of a JSON-RPC message the relay reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    pub(crate) id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub(crate) params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub(crate) result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub(crate) error: Option<&'a RawValue>,
}

/// `Some` for a member that is there, even when it is `null` (a `null`
/// result is a result).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
    Response,
}

impl<'a> Envelope<'a> {
    /// Reads a frame; `None` for anything that is not one JSON-RPC object
    /// (batches included: ACP does not use them).
    pub(crate) fn parse(frame: &'a [u8]) -> Option<Envelope<'a>> {
        let env: Envelope<'a> = serde_json::from_slice(frame).ok()?;
        env.kind()?;
        Some(env)
    }

    pub(crate) fn kind(&self) -> Option<Kind> {
        let id_null = self.id.map_or(true, |id| id.get() == "null");
        match (&self.method, id_null) {
            (Some(_), false) => Some(Kind::Request),
            (Some(_), true) => Some(Kind::Notification),
            (None, false) if self.result.is_some() != self.error.is_some() => Some(Kind::Response),
            _ => None,
        }
    }

    pub(crate) fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// `params.sessionId`, when the params are an object that has one.
    pub(crate) fn session_id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct P<'b> {
            #[serde(borrow, rename = "sessionId")]
            session_id: Option<Cow<'b, str>>,
        }
        let params = self.params?;
        serde_json::from_str::<P<'_>>(params.get())
            .ok()?
            .session_id
            .map(Cow::into_owned)
    }

    /// The id as its JSON text (the key the relay maps it by).
    pub(crate) fn id_text(&self) -> Option<&str> {
        self.id.map(RawValue::get)
    }
}

#[derive(Serialize)]
struct Out<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
}

fn write(out: &Out<'_>) -> Bytes {
    // Raw values are valid JSON by construction, so this cannot fail.
    Bytes::from(serde_json::to_vec(out).unwrap_or_default())
}

/// Raw JSON for an id (or any value that serializes).
pub(crate) fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| null())
}

pub(crate) fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// The frame `env` with its id replaced by `id`.
pub(crate) fn with_id(env: &Envelope<'_>, id: &RawValue) -> Bytes {
    write(&Out {
        jsonrpc: "2.0",
        id: Some(id),
        method: env.method.as_deref(),
        params: env.params,
        result: env.result,
        error: env.error,
    })
}

/// A notification.
pub(crate) fn notification(method: &str, params: &impl Serialize) -> Bytes {
    let params = serde_json::value::to_raw_value(params).ok();
    write(&Out {
        jsonrpc: "2.0",
        id: None,
        method: Some(method),
        params: params.as_deref(),
        result: None,
        error: None,
    })
}

/// A request.
pub(crate) fn request(id: &RawValue, method: &str, params: Option<&RawValue>) -> Bytes {
    write(&Out {
        jsonrpc: "2.0",
        id: Some(id),
        method: Some(method),
        params,
        result: None,
        error: None,
    })
}

/// A successful response.
pub(crate) fn result(id: &RawValue, result: &impl Serialize) -> Bytes {
    let result = serde_json::value::to_raw_value(result).ok();
    write(&Out {
        jsonrpc: "2.0",
        id: Some(id),
        method: None,
        params: None,
        result: Some(result.as_deref().unwrap_or(&null())),
        error: None,
    })
}

/// An error response.
pub(crate) fn error(id: &RawValue, error: &ErrorObject) -> Bytes {
    let error = serde_json::value::to_raw_value(error).ok();
    write(&Out {
        jsonrpc: "2.0",
        id: Some(id),
        method: None,
        params: None,
        result: None,
        error: error.as_deref(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_members() {
        let f = br#"{"jsonrpc":"2.0","id":"a\"b","method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}"#;
        let e = Envelope::parse(f).unwrap();
        assert_eq!(e.kind(), Some(Kind::Request));
        assert_eq!(e.id_text(), Some(r#""a\"b""#));
        assert_eq!(e.session_id().as_deref(), Some("s1"));
        let e = Envelope::parse(br#"{"jsonrpc":"2.0","id":3,"result":null}"#).unwrap();
        assert_eq!(e.kind(), Some(Kind::Response));
        let e = Envelope::parse(br#"{"jsonrpc":"2.0","method":"x"}"#).unwrap();
        assert_eq!(e.kind(), Some(Kind::Notification));
        assert_eq!(e.session_id(), None);
        for bad in [
            &br#"[{"jsonrpc":"2.0","method":"x"}]"#[..],
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
            b"nope",
            br#"{"id":1,"method":5}"#,
        ] {
            assert!(
                Envelope::parse(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ids_are_rewritten_and_the_rest_kept() {
        let f = br#"{"jsonrpc":"2.0","id":"x","method":"m","params":{"a":[1,2]}}"#;
        let e = Envelope::parse(f).unwrap();
        let out = with_id(&e, &raw("17".into()));
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","id":17,"method":"m","params":{"a":[1,2]}}"#
        );
        let f = br#"{"jsonrpc":"2.0","id":17,"error":{"code":1,"message":"m"}}"#;
        let e = Envelope::parse(f).unwrap();
        let out = with_id(&e, &raw("\"x\"".into()));
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","id":"x","error":{"code":1,"message":"m"}}"#
        );
    }
}
