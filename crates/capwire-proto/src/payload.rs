//! Encoded values carried inside frames (call arguments, results, stream items).

use std::fmt;

use bytes::{BufMut, Bytes};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codec::{Codec, DecodeError, EncodeError, MAX_DECODE_DEPTH};

/// A value already encoded in one of the two codecs.
///
/// Payloads are encoded once, where the value is produced, and decoded once,
/// where it is consumed: frame encoding splices them in as they are. In a JSON
/// frame the payload is inline JSON; in a binary frame it is a MessagePack `bin`
/// holding the MessagePack encoding of the value. A payload that meets a frame of
/// the other codec is transcoded (a slow path that only mixed-codec peers take).
///
/// Capability references inside a value are placeholders `{"$cap": n}` that
/// index the frame's `caps` table (see `docs/protocol.md`).
///
/// [`Status::details`](crate::Status::details) are kept as a payload too, but
/// are written inline in both codecs (never as a `bin`); see there.
#[derive(Clone)]
pub enum Payload {
    /// Inline JSON text.
    Json(Box<RawValue>),
    /// MessagePack bytes.
    Msgpack(Bytes),
}

/// Payloads are equal when they have the same codec and the same bytes.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Msgpack(a), Payload::Msgpack(b)) => a == b,
            _ => false,
        }
    }
}

impl Payload {
    /// Encodes `value` with `codec`.
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Payload, EncodeError> {
        match codec {
            Codec::Json => Ok(Payload::Json(serde_json::value::to_raw_value(value)?)),
            Codec::Msgpack => encode_msgpack(value).map(Payload::Msgpack),
        }
    }

    /// The encoding of `null` in `codec`.
    pub fn null(codec: Codec) -> Payload {
        match codec {
            #[allow(clippy::expect_used)]
            Codec::Json => Payload::Json(
                // Serializing `()` to JSON cannot fail: it is the literal `null`.
                serde_json::value::to_raw_value(&()).expect("`()` serializes as null"),
            ),
            Codec::Msgpack => Payload::Msgpack(Bytes::from_static(&[0xc0])),
        }
    }

    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self {
            Payload::Json(raw) => serde_json::from_str(raw.get()).map_err(|e| DecodeError::Value {
                codec: Codec::Json,
                message: e.to_string(),
            }),
            Payload::Msgpack(bytes) => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_DECODE_DEPTH);
                T::deserialize(&mut de).map_err(|e| DecodeError::Value {
                    codec: Codec::Msgpack,
                    message: e.to_string(),
                })
            }
        }
    }

    /// The codec the payload is encoded in.
    pub fn codec(&self) -> Codec {
        match self {
            Payload::Json(_) => Codec::Json,
            Payload::Msgpack(_) => Codec::Msgpack,
        }
    }

    /// The encoded size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Msgpack(bytes) => bytes.len(),
        }
    }

    /// True for an empty encoding (never produced by [`Payload::encode`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value as a JSON tree, for display and for dynamic callers.
    ///
    /// # Memory
    ///
    /// A `serde_json::Value` tree can be far bigger than the encoding it comes
    /// from, and nothing here bounds that beyond the nesting depth
    /// ([`MAX_DECODE_DEPTH`]): every map becomes a B-tree node of a few hundred
    /// bytes, so a payload of one-entry maps nested two MessagePack bytes per
    /// level (`81 a0 81 a0 ... c0`) takes about 315 bytes per input byte, and
    /// `[[],[],...]` about 80. That is inherent to the tree, and it is why
    /// frame decoding never calls this (payloads and status details stay
    /// encoded). Callers that decode values from a peer should prefer
    /// [`Payload::decode`] into a type of their own, or bound the payload's
    /// size (and [`Payload::exceeds_depth`]) before asking for a tree.
    pub fn to_json(&self) -> Result<serde_json::Value, DecodeError> {
        self.decode()
    }

    /// [`Payload::transcode`], taking the payload: one already in `codec`
    /// is returned as it is, without even a reference count to take.
    pub fn into_codec(self, codec: Codec) -> Result<Payload, EncodeError> {
        if self.codec() == codec {
            return Ok(self);
        }
        self.transcode(codec)
    }

    /// Re-encodes the payload in `codec` (a no-op when it already is).
    pub fn transcode(&self, codec: Codec) -> Result<Payload, EncodeError> {
        if self.codec() == codec {
            return Ok(self.clone());
        }
        let tree = self
            .to_json()
            .map_err(|e| EncodeError::Transcode(e.to_string()))?;
        Payload::encode(codec, &tree)
    }
}

fn encode_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
    Ok(crate::scratch::encode_exact(|out| {
        rmp_serde::encode::write_named(&mut out.writer(), value)
    })?)
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Json(raw) => write!(f, "Json({})", raw.get()),
            Payload::Msgpack(bytes) => match self.to_json() {
                Ok(tree) => write!(f, "Msgpack({tree})"),
                Err(_) => write!(f, "Msgpack({} bytes)", bytes.len()),
            },
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                Payload::Json(raw) => raw.serialize(serializer),
                Payload::Msgpack(_) => self
                    .to_json()
                    .map_err(|e| {
                        S::Error::custom(format!("payload not representable in JSON: {e}"))
                    })?
                    .serialize(serializer),
            }
        } else {
            match self {
                Payload::Msgpack(bytes) => serializer.serialize_bytes(bytes),
                Payload::Json(_) => match self.transcode(Codec::Msgpack) {
                    Ok(Payload::Msgpack(bytes)) => serializer.serialize_bytes(&bytes),
                    Ok(Payload::Json(_)) => Err(S::Error::custom("transcoding produced JSON")),
                    Err(e) => Err(S::Error::custom(e)),
                },
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        if deserializer.is_human_readable() {
            Ok(Payload::Json(Box::<RawValue>::deserialize(deserializer)?))
        } else {
            deserializer
                .deserialize_bytes(BinVisitor)
                .map(Payload::Msgpack)
        }
    }
}

struct BinVisitor;

impl<'de> Visitor<'de> for BinVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack bin holding an encoded value")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_both_codecs() {
        for codec in [Codec::Json, Codec::Msgpack] {
            let p = Payload::encode(codec, &serde_json::json!({"a": [1, 2.5, "x"], "b": null}))
                .expect("encode");
            let back: serde_json::Value = p.decode().expect("decode");
            assert_eq!(back, serde_json::json!({"a": [1, 2.5, "x"], "b": null}));
            assert_eq!(p.codec(), codec);
            assert!(!p.is_empty());
        }
    }

    #[test]
    fn null_is_null() {
        for codec in [Codec::Json, Codec::Msgpack] {
            let v: serde_json::Value = Payload::null(codec).decode().expect("decode");
            assert!(v.is_null());
        }
    }

    #[test]
    fn transcode_keeps_value() {
        let p = Payload::encode(Codec::Json, &serde_json::json!([1, "two", {"three": 3}]))
            .expect("encode");
        let m = p.transcode(Codec::Msgpack).expect("transcode");
        assert_eq!(m.codec(), Codec::Msgpack);
        assert_eq!(m.to_json().expect("json"), p.to_json().expect("json"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // 100 000 nested one-element arrays: 0x91 is a MessagePack fixarray of length 1.
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        let p = Payload::Msgpack(Bytes::from(deep));
        let err = p.to_json().expect_err("too deep");
        assert!(err.to_string().contains("depth"), "{err}");
        let deep_json = "[".repeat(100_000) + &"]".repeat(100_000);
        let p = Payload::Json(RawValue::from_string("[1]".into()).expect("raw"));
        assert!(p.to_json().is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep_json).is_err());
    }

    #[test]
    fn wrong_shape_is_a_clear_error() {
        let p = Payload::encode(Codec::Msgpack, &"text").expect("encode");
        let err = p.decode::<u32>().expect_err("string is not a u32");
        assert!(err.to_string().contains("value"), "{err}");
    }
}
