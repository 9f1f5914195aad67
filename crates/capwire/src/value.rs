//! Values as the dynamic API sees them: one encoded value plus the
//! capabilities its `{"$cap": n}` placeholders refer to.

use capwire_proto::{Code, Codec, Payload, Status};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::capability::Capability;

/// An argument, result or stream item: an encoded value and its capabilities.
///
/// A capability inside the value is the placeholder `{"$cap": n}`, where `n`
/// indexes [`Value::caps`]. [`Value::with_caps`] builds such values;
/// [`Value::cap`] takes the capabilities out of a received one.
///
/// A value received over a connection is not copied out of the frame it
/// arrived in: its payload shares that frame's read buffer, so keeping a
/// received value for long keeps the buffer too. Decode it into a type of
/// your own, or keep [`Value::detach`]ed copies.
#[derive(Debug, Clone)]
pub struct Value {
    pub(crate) payload: Payload,
    pub(crate) caps: Vec<Capability>,
}

impl Value {
    /// Encodes `v` (MessagePack: the codec is converted if the connection
    /// uses JSON). Capability handles inside `v` (typed clients, sinks)
    /// become placeholders, and the capabilities go to the value's table:
    /// this is the one way values with capabilities are encoded.
    pub fn new<T: Serialize + ?Sized>(v: &T) -> Result<Value, Status> {
        Value::encode(Codec::Msgpack, v)
    }

    /// Encodes `v` in `codec` (see [`Value::new`]).
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, v: &T) -> Result<Value, Status> {
        let (payload, caps) = crate::typed::capturing(|| Payload::encode(codec, v));
        let mut value = payload
            .map(Value::from_payload)
            .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        value.caps = caps;
        Ok(value)
    }

    /// `null`.
    pub fn null() -> Value {
        Value::from_payload(Payload::null(Codec::Msgpack))
    }

    /// A value whose placeholders refer to `caps`: `v` carries its own
    /// `{"$cap": n}` maps (it may not hold capability handles itself).
    pub fn with_caps<T: Serialize + ?Sized>(v: &T, caps: Vec<Capability>) -> Result<Value, Status> {
        let mut value = Value::new(v)?;
        if !value.caps.is_empty() {
            return Err(Status::new(
                Code::InvalidArgument,
                "Value::with_caps takes placeholders and their table, not capability handles: \
                 use Value::new for a value that holds handles",
            ));
        }
        value.caps = caps;
        Ok(value)
    }

    /// Just a capability: `{"$cap": 0}`.
    pub fn capability(cap: Capability) -> Value {
        let mut value =
            Value::new(&serde_json::json!({ "$cap": 0 })).unwrap_or_else(|_| Value::null());
        value.caps = vec![cap];
        value
    }

    /// A value from an already encoded payload, with no capabilities.
    pub fn from_payload(payload: Payload) -> Value {
        Value {
            payload,
            caps: Vec::new(),
        }
    }

    /// Decodes the value as `T`: a placeholder decodes as the capability it
    /// refers to where `T` holds a capability handle (a typed client, a
    /// sink), and as a `{"$cap": n}` map where `T` holds plain data.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Status> {
        crate::typed::resolving(&self.caps, || {
            self.payload.decode::<T>().map_err(|e| {
                // The value's own problem, in the terms of the data (not
                // of the codec it happened to travel in): a MessagePack
                // value is decoded again as JSON for serde_json's wording.
                let message = match e {
                    capwire_proto::DecodeError::Value {
                        codec: Codec::Msgpack,
                        message,
                    } if message.contains("msgpack") => {
                        match self.payload.clone().into_codec(Codec::Json) {
                            Ok(json) => match json.decode::<T>() {
                                Err(capwire_proto::DecodeError::Value { message, .. }) => message,
                                _ => message,
                            },
                            Err(_) => message,
                        }
                    }
                    capwire_proto::DecodeError::Value { message, .. } => message,
                    other => other.to_string(),
                };
                Status::new(Code::InvalidArgument, in_data_terms(&message))
            })
        })
    }

    /// The value as a JSON tree.
    pub fn to_json(&self) -> Result<serde_json::Value, Status> {
        self.decode()
    }

    /// The capabilities the placeholders refer to.
    pub fn caps(&self) -> &[Capability] {
        &self.caps
    }

    /// Capability `n`, or `invalid_argument` when there is none.
    pub fn cap(&self, n: usize) -> Result<Capability, Status> {
        self.caps.get(n).cloned().ok_or_else(|| {
            Status::new(
                Code::InvalidArgument,
                format!("expected a capability at index {n}"),
            )
        })
    }

    /// The encoded payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The same value with a payload that owns its memory (a copy), for a
    /// received value kept for long: see the type's docs.
    pub fn detach(&self) -> Value {
        let payload = match &self.payload {
            Payload::Msgpack(bytes) => Payload::Msgpack(bytes::Bytes::copy_from_slice(bytes)),
            json => json.clone(),
        };
        Value {
            payload,
            caps: self.caps.clone(),
        }
    }
}

/// A decoder's message in the terms of the data: no position in a text the
/// caller never saw, and a capability placeholder called what it is.
fn in_data_terms(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => &message[..at],
        _ => message,
    };
    message.replace(
        "struct Placeholder",
        "a capability (a placeholder {\"$cap\": n})",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detached value holds the same bytes in memory of its own, not a
    /// slice of the (larger) buffer it came from.
    #[test]
    fn detach_copies_a_shared_payload() {
        let frame = bytes::Bytes::from(vec![0xa1, b'x', 0xc0, 0xc0, 0xc0]);
        let value = Value::from_payload(Payload::Msgpack(frame.slice(0..2)));
        let detached = value.detach();
        assert_eq!(detached.payload(), value.payload());
        assert_eq!(detached.decode::<String>().expect("a string"), "x");
        let Payload::Msgpack(own) = detached.payload() else {
            panic!("still MessagePack");
        };
        let range = frame.as_ptr_range();
        assert!(
            !range.contains(&own.as_ptr()),
            "the copy is not in the frame"
        );
    }
}
