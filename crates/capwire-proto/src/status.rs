//! Status codes and error reasons shared by every dialect.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::details;
use crate::payload::Payload;

/// The closed set of outcomes a call, stream or connection can end with.
///
/// The string names (`Code::as_str`) are stable wire names; the numeric values
/// (`Code::as_u8`) are stable too, and are what compact encodings and the
/// dialect tables key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// Success.
    Ok,
    /// The caller cancelled the call (or dropped interest in it).
    Cancelled,
    /// The arguments do not fit the method.
    InvalidArgument,
    /// The call's deadline passed before it settled.
    DeadlineExceeded,
    /// The capability, name or method does not exist.
    NotFound,
    /// A name is already served.
    AlreadyExists,
    /// Policy denied the operation.
    PermissionDenied,
    /// A limit was hit; the reason names the limit.
    ResourceExhausted,
    /// The target is not in a state that allows the call (e.g. revoked, version mismatch).
    FailedPrecondition,
    /// The operation was aborted by a conflicting one.
    Aborted,
    /// The peer does not implement the operation.
    Unimplemented,
    /// The connection is gone or going; the call may be retried elsewhere.
    Unavailable,
    /// A bug or an unexpected failure on the peer.
    Internal,
    /// The peer did not present valid credentials.
    Unauthenticated,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 14] = [
        Code::Ok,
        Code::Cancelled,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::Unimplemented,
        Code::Unavailable,
        Code::Internal,
        Code::Unauthenticated,
    ];

    /// The stable wire name, e.g. `"deadline_exceeded"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The stable number of the code (its index in [`Code::ALL`]).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Looks a code up by its wire name.
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Looks a code up by its number.
    pub fn from_u8(n: u8) -> Option<Code> {
        Code::ALL.get(usize::from(n)).copied()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine-readable refinement of a [`Code`], such as `version_mismatch`.
///
/// Reasons are an open set of snake_case strings; the constants below are the
/// ones capwire itself produces. Unknown reasons from a peer are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reason(Cow<'static, str>);

impl Reason {
    /// The bootstrap asked for a version other than the one served.
    pub const VERSION_MISMATCH: Reason = Reason::new_static("version_mismatch");
    /// The capability was revoked by its host.
    pub const REVOKED: Reason = Reason::new_static("revoked");
    /// Policy refused the peer.
    pub const UNAUTHORIZED: Reason = Reason::new_static("unauthorized");
    /// Two capabilities would be served under one name.
    pub const NAME_COLLISION: Reason = Reason::new_static("name_collision");
    /// The name uses the reserved `capwire.` prefix.
    pub const RESERVED_NAMESPACE: Reason = Reason::new_static("reserved_namespace");
    /// Too many capabilities exported on one connection.
    pub const MAX_CAPS_PER_CONNECTION: Reason = Reason::new_static("max_caps_per_connection");
    /// Too many calls in flight on one connection.
    pub const MAX_CONCURRENT_CALLS: Reason = Reason::new_static("max_concurrent_calls");
    /// A frame exceeded the frame size limit.
    pub const MAX_FRAME_BYTES: Reason = Reason::new_static("max_frame_bytes");
    /// A value nested deeper than the depth limit.
    pub const MAX_VALUE_DEPTH: Reason = Reason::new_static("max_value_depth");
    /// Too many streams open on one connection.
    pub const MAX_OPEN_STREAMS: Reason = Reason::new_static("max_open_streams");
    /// Too many calls queued on unsettled answers.
    pub const MAX_PENDING_PIPELINED: Reason = Reason::new_static("max_pending_pipelined");
    /// The peer broke the protocol (malformed frame, unknown op, bad id).
    pub const PROTOCOL_VIOLATION: Reason = Reason::new_static("protocol_violation");
    /// A typed method's arguments do not decode as its parameters.
    pub const BAD_ARGUMENTS: Reason = Reason::new_static("bad_arguments");

    /// A reason known at compile time.
    pub const fn new_static(s: &'static str) -> Reason {
        Reason(Cow::Borrowed(s))
    }

    /// A reason from any string.
    pub fn new(s: impl Into<Cow<'static, str>>) -> Reason {
        Reason(s.into())
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error as it travels on the wire: code, message, optional reason and details.
///
/// # Equality
///
/// Two statuses are equal when code, message and reason are equal and their
/// details are the same *JSON value* (as [`Status::details_json`] decodes
/// them), whatever their codec or encoding: `{"a":1,"b":2}` in JSON equals
/// the same map in MessagePack, and equals `{"b":2,"a":1}`. Absent and `null`
/// details are equal. Details with the same codec and bytes compare without
/// decoding; otherwise comparing decodes both sides, so it is meant for tests
/// and diagnostics, not for hot paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// What kind of failure this is.
    pub code: Code,
    /// Human-readable text; never parsed by programs.
    #[serde(default)]
    pub message: String,
    /// Machine-readable refinement of `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Free-form structured details (e.g. the limit that was hit and its value).
    ///
    /// Kept encoded, as received (or as [`Status::with_details`] encoded
    /// them), and decoded only on demand by [`Status::details_json`]: a
    /// decoded tree can be hundreds of times bigger than its encoding, and
    /// details come from the peer. Decoding a frame checks that the details
    /// are a valid JSON value nested at most 124 deep (what the frame depth
    /// limit leaves below a status), so [`Status::details_json`] succeeds on
    /// any received status.
    ///
    /// On the wire the details are inline in either codec (a JSON value, or a
    /// native MessagePack value: not a `bin` like call payloads); encoding a
    /// frame streams them into it without decoding them into a tree. `null`
    /// is read as absent and not written.
    #[serde(
        default,
        skip_serializing_if = "crate::details::is_absent",
        serialize_with = "crate::details::serialize",
        deserialize_with = "crate::details::deserialize"
    )]
    pub details: Option<Payload>,
}

impl PartialEq for Status {
    fn eq(&self, other: &Status) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.reason == other.reason
            && details_eq(self.details.as_ref(), other.details.as_ref())
    }
}

/// Details are equal when they are the same JSON value (see [`Status`]).
fn details_eq(a: Option<&Payload>, b: Option<&Payload>) -> bool {
    let a = a.filter(|p| !details::is_null(p));
    let b = b.filter(|p| !details::is_null(p));
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (a.to_json(), b.to_json()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

impl Status {
    /// A status with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            reason: None,
            details: None,
        }
    }

    /// Adds a machine-readable reason.
    pub fn with_reason(mut self, reason: Reason) -> Status {
        self.reason = Some(reason);
        self
    }

    /// Adds structured details, encoded once here (as MessagePack). `null`
    /// means no details.
    pub fn with_details(mut self, details: serde_json::Value) -> Status {
        self.details = if details.is_null() {
            None
        } else {
            // Encoding a `serde_json::Value` cannot fail in either codec (its
            // map keys are strings and its numbers finite); JSON is the fallback.
            Payload::encode(Codec::Msgpack, &details)
                .or_else(|_| Payload::encode(Codec::Json, &details))
                .ok()
        };
        self
    }

    /// The details decoded into a JSON tree, or `None` when there are none
    /// (or they are `null`).
    ///
    /// Decoding happens on every call. The tree can be much larger than the
    /// encoded details (see [`Payload::to_json`]); callers that know the
    /// shape they expect can decode `details` into their own type with
    /// [`Payload::decode`] instead. Details built by hand as a [`Payload`]
    /// that does not decode also give `None`; received details always decode.
    pub fn details_json(&self) -> Option<serde_json::Value> {
        self.details
            .as_ref()?
            .to_json()
            .ok()
            .filter(|v| !v.is_null())
    }

    /// `resource_exhausted` naming the limit that was hit.
    pub fn limit(reason: Reason, limit: u64) -> Status {
        Status::new(
            Code::ResourceExhausted,
            format!("limit {reason} ({limit}) exceeded"),
        )
        .with_details(serde_json::json!({ "limit": limit }))
        .with_reason(reason)
    }

    /// `failed_precondition` / `revoked`.
    pub fn revoked(what: impl fmt::Display) -> Status {
        Status::new(Code::FailedPrecondition, format!("{what} was revoked"))
            .with_reason(Reason::REVOKED)
    }

    /// `unavailable`, used when the connection goes away.
    pub fn unavailable(message: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, message)
    }

    /// `aborted` / `protocol_violation` for a peer that broke the protocol.
    pub fn protocol_violation(message: impl Into<String>) -> Status {
        Status::new(Code::Aborted, message).with_reason(Reason::PROTOCOL_VIOLATION)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(reason) = &self.reason {
            write!(f, "/{reason}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for (i, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(code.as_u8()), i);
            assert_eq!(Code::from_u8(code.as_u8()), Some(code));
            assert_eq!(Code::from_name(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).expect("serialize code");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(Code::from_name("bogus"), None);
        assert_eq!(Code::from_u8(14), None);
    }

    #[test]
    fn details_are_kept_encoded_and_decoded_on_demand() {
        let s = Status::limit(Reason::MAX_CONCURRENT_CALLS, 256);
        assert_eq!(s.details_json(), Some(serde_json::json!({"limit": 256})));
        assert_eq!(s.details.as_ref().map(Payload::codec), Some(Codec::Msgpack));
        // `null` details are no details.
        let none = Status::new(Code::Internal, "x").with_details(serde_json::Value::Null);
        assert!(none.details.is_none());
        assert_eq!(none.details_json(), None);
        let null = Status {
            details: Some(Payload::null(Codec::Json)),
            ..Status::new(Code::Internal, "x")
        };
        assert_eq!(null.details_json(), None);
        assert_eq!(null, none);
        // Details that do not decode (only possible when built by hand) give `None`.
        let bad = Status {
            details: Some(Payload::Msgpack(bytes::Bytes::from_static(&[0xc1]))),
            ..Status::new(Code::Internal, "x")
        };
        assert_eq!(bad.details_json(), None);
    }

    #[test]
    fn details_compare_as_json_values() {
        let json = |text: &str| {
            Some(Payload::Json(
                serde_json::value::RawValue::from_string(text.to_owned()).expect("raw"),
            ))
        };
        let with = |details| Status {
            details,
            ..Status::new(Code::Internal, "x")
        };
        let v = serde_json::json!({"a": 1, "b": [true, "s"]});
        let m = with(Some(Payload::encode(Codec::Msgpack, &v).expect("encode")));
        assert_eq!(m, with(json(r#"{"a":1,"b":[true,"s"]}"#)));
        assert_eq!(m, with(json(r#"{ "b": [true, "s"], "a": 1 }"#)));
        assert_eq!(m, Status::new(Code::Internal, "x").with_details(v));
        assert_ne!(m, with(json(r#"{"a":2,"b":[true,"s"]}"#)));
        assert_ne!(m, with(None));
        assert_ne!(with(json("1")), with(json("\"1\"")));
        assert_ne!(
            m,
            Status::new(Code::Internal, "y")
                .with_details(serde_json::json!({"a": 1, "b": [true, "s"]}))
        );
    }

    #[test]
    fn display_shows_code_reason_and_message() {
        let s = Status::revoked("capability 7");
        assert_eq!(
            s.to_string(),
            "failed_precondition/revoked: capability 7 was revoked"
        );
        assert_eq!(Status::new(Code::Internal, "").to_string(), "internal");
    }
}
