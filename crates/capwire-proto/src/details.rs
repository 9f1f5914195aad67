//! Status `details` on the wire: kept in their encoded form, never built
//! into a tree while a frame is decoded.
//!
//! A peer chooses the details of the statuses it sends, and a tree of
//! `serde_json::Value`s can be hundreds of times larger than its encoding
//! (a one-entry map costs two MessagePack bytes and a 632-byte B-tree node).
//! So decoding a frame only *checks* the details and keeps their bytes:
//!
//! - JSON: the exact text of the value (a `RawValue`, one copy), checked in a
//!   second pass that parses it without building anything.
//! - MessagePack: the value re-encoded as it is read (in its shortest form,
//!   never longer than the input), through the frame's own deserializer, so
//!   that the frame's depth limit applies unchanged.
//!
//! Both checks accept exactly what `serde_json::Value` accepts (the JSON data
//! model), with the same error texts, so the set of well-formed frames is the
//! same as when details were decoded eagerly.
//!
//! Encoding streams the kept bytes into the frame's serializer: inline JSON
//! in a JSON frame, a native MessagePack value in a MessagePack frame.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codec::MAX_DECODE_DEPTH;
use crate::payload::Payload;

/// Deepest nesting of details: what the frame decoder's limit leaves below a
/// status (frame map, op body and status map are the first three levels).
/// `[1]` has depth 1.
pub(crate) const MAX_DETAILS_DEPTH: usize = MAX_DECODE_DEPTH - 4;

/// What `serde_json::Value` says it expects; used so that errors read the same.
const EXPECTING_VALUE: &str = "any valid JSON value";
const EXPECTING_KEY: &str = "a string key";
/// The error text of the MessagePack decoder's own depth limit.
const TOO_DEEP_MSGPACK: &str = "depth limit exceeded";
/// The error text of serde_json's own depth limit.
const TOO_DEEP_JSON: &str = "recursion limit exceeded";

/// True when `details` is absent or null (the two mean the same).
pub(crate) fn is_absent(details: &Option<Payload>) -> bool {
    match details {
        None => true,
        Some(payload) => is_null(payload),
    }
}

/// True when the payload is the value `null`.
pub(crate) fn is_null(payload: &Payload) -> bool {
    match payload {
        Payload::Json(raw) => raw.get().trim() == "null",
        Payload::Msgpack(bytes) => bytes[..] == [0xc0],
    }
}

// ---------------------------------------------------------------------------
// Decoding.

/// `deserialize_with` for `Status::details`: `null` reads as absent.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Payload>, D::Error> {
    if d.is_human_readable() {
        let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else {
            return Ok(None);
        };
        check_json(raw.get()).map_err(de::Error::custom)?;
        Ok(Some(Payload::Json(raw)))
    } else {
        d.deserialize_option(OptionalCapture)
    }
}

/// Checks JSON text as `serde_json::Value` would parse it, without building it.
fn check_json(text: &str) -> Result<(), String> {
    if crate::depth::json_exceeds(text.as_bytes(), MAX_DETAILS_DEPTH) {
        return Err(TOO_DEEP_JSON.to_owned());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Check { depth: 0 }.deserialize(&mut de).map_err(|e| {
        // The outer decoder adds the position in the frame; drop the one in `text`.
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        match message.strip_suffix(&position) {
            Some(m) => m.to_owned(),
            None => message,
        }
    })
}

/// Visits a value completely (so that numbers and strings are parsed and
/// checked) and keeps nothing.
#[derive(Clone, Copy)]
struct Check {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING_VALUE)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = Check {
            depth: enter(self.depth, TOO_DEEP_JSON)?,
        };
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = Check {
            depth: enter(self.depth, TOO_DEEP_JSON)?,
        };
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// The depth inside a container entered at `depth`, or the depth error.
fn enter<E: de::Error>(depth: usize, too_deep: &str) -> Result<usize, E> {
    if depth >= MAX_DETAILS_DEPTH {
        return Err(E::custom(too_deep));
    }
    Ok(depth + 1)
}

/// Reads an optional value from a MessagePack frame into its encoding.
struct OptionalCapture;

impl<'de> Visitor<'de> for OptionalCapture {
    type Value = Option<Payload>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING_VALUE)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Payload>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Payload>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Payload>, D::Error> {
        let mut out = Vec::new();
        Capture {
            out: &mut out,
            depth: 0,
        }
        .deserialize(d)?;
        // Keep exactly the encoding (at most the size of the input value).
        out.shrink_to_fit();
        Ok(Some(Payload::Msgpack(Bytes::from(out))))
    }
}

/// Re-encodes JSON text as MessagePack, value by value (map keys keep their
/// order), without building a tree.
fn json_to_msgpack(text: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    Capture {
        out: &mut out,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// Writes the MessagePack encoding of the value it visits to `out`, refusing
/// what `serde_json::Value` refuses (byte strings, extension types, map keys
/// that are not strings, invalid UTF-8) with the same errors.
struct Capture<'o> {
    out: &'o mut Vec<u8>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Capture<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Capture<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING_VALUE)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push(if v { 0xc3 } else { 0xc2 });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        write_int(self.out, v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        write_uint(self.out, v);
        Ok(())
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        // Kept as it came (5 bytes); it reads back as the same f64 either way.
        self.out.push(0xca);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.out.push(0xcb);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_str(self.out, v).map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.push(0xc0);
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = enter(self.depth, TOO_DEEP_MSGPACK)?;
        let header = Header::start(self.out, Kind::Array, seq.size_hint());
        let mut n = 0u64;
        while seq
            .next_element_seed(Capture {
                out: &mut *self.out,
                depth,
            })?
            .is_some()
        {
            n += 1;
        }
        header.finish(self.out, n).map_err(de::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = enter(self.depth, TOO_DEEP_MSGPACK)?;
        let header = Header::start(self.out, Kind::Map, map.size_hint());
        let mut n = 0u64;
        while map.next_key_seed(CaptureKey(&mut *self.out))?.is_some() {
            map.next_value_seed(Capture {
                out: &mut *self.out,
                depth,
            })?;
            n += 1;
        }
        header.finish(self.out, n).map_err(de::Error::custom)
    }
}

/// A map key: a string, written as a MessagePack `str`.
struct CaptureKey<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for CaptureKey<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for CaptureKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING_KEY)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_str(self.0, v).map_err(E::custom)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Array,
    Map,
}

/// The header of an array or map being captured.
enum Header {
    /// Written in its shortest form from the length the decoder announced.
    Exact(u64),
    /// A 32-bit length at this offset, filled in at the end (for decoders
    /// that do not announce lengths, i.e. JSON).
    Patch(usize),
}

impl Header {
    fn start(out: &mut Vec<u8>, kind: Kind, hint: Option<usize>) -> Header {
        match hint.and_then(|n| u32::try_from(n).ok()) {
            Some(n) => {
                write_len(out, kind, n);
                Header::Exact(u64::from(n))
            }
            None => {
                let at = out.len();
                out.push(match kind {
                    Kind::Array => 0xdd,
                    Kind::Map => 0xdf,
                });
                out.extend_from_slice(&[0; 4]);
                Header::Patch(at)
            }
        }
    }

    fn finish(self, out: &mut [u8], n: u64) -> Result<(), &'static str> {
        match self {
            Header::Exact(announced) if announced == n => Ok(()),
            Header::Exact(_) => Err("a container held another number of entries than announced"),
            Header::Patch(at) => {
                let n = u32::try_from(n).map_err(|_| "a container with over 2^32 entries")?;
                out[at + 1..at + 5].copy_from_slice(&n.to_be_bytes());
                Ok(())
            }
        }
    }
}

fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Non-negative integers take the unsigned forms, as `rmp` writes them.
fn write_int(out: &mut Vec<u8>, v: i64) {
    if let Ok(u) = u64::try_from(v) {
        write_uint(out, u);
    } else if v >= -32 {
        out.push(v as u8); // negative fixint: 0xe0..=0xff
    } else if let Ok(v) = i8::try_from(v) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if let Ok(v) = i16::try_from(v) {
        out.push(0xd1);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = i32::try_from(v) {
        out.push(0xd2);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), &'static str> {
    let len = u32::try_from(s.len()).map_err(|_| "a string over 4 GiB")?;
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_len(out: &mut Vec<u8>, kind: Kind, n: u32) {
    let (fix, m16, m32) = match kind {
        Kind::Array => (0x90, 0xdc, 0xdd),
        Kind::Map => (0x80, 0xde, 0xdf),
    };
    if n < 16 {
        out.push(fix | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m16);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Encoding.

/// `serialize_with` for `Status::details`: the value inline, in the frame's codec.
pub(crate) fn serialize<S: Serializer>(details: &Option<Payload>, s: S) -> Result<S::Ok, S::Error> {
    match details {
        None => s.serialize_none(),
        Some(Payload::Json(raw)) if s.is_human_readable() => raw.serialize(s),
        Some(Payload::Json(raw)) => {
            let bytes = json_to_msgpack(raw.get()).map_err(S::Error::custom)?;
            MsgpackValue(&bytes).serialize(s)
        }
        Some(Payload::Msgpack(bytes)) => MsgpackValue(bytes).serialize(s),
    }
}

/// Serializes MessagePack bytes as the value they encode, item by item,
/// without building a tree. Values come out as `serde_json::Value` would
/// serialize them: integers as integers, every float as an f64, non-finite
/// floats as `null`. Byte strings, extension types and non-string map keys
/// are errors (decoded details never hold them).
struct MsgpackValue<'a>(&'a [u8]);

impl Serialize for MsgpackValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let cursor = Cell::new(self.0);
        Walk {
            cursor: &cursor,
            depth: 0,
            key: false,
        }
        .serialize(s)
    }
}

/// One value read from the shared cursor.
struct Walk<'c, 'a> {
    cursor: &'c Cell<&'a [u8]>,
    depth: usize,
    key: bool,
}

impl<'c, 'a> Walk<'c, 'a> {
    fn inner(&self, key: bool) -> Result<Walk<'c, 'a>, &'static str> {
        if self.depth >= MAX_DECODE_DEPTH {
            return Err(TOO_DEEP_MSGPACK);
        }
        Ok(Walk {
            cursor: self.cursor,
            depth: self.depth + 1,
            key,
        })
    }
}

impl Serialize for Walk<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = self.cursor.get();
        let item = read_item(&mut buf).map_err(S::Error::custom)?;
        self.cursor.set(buf);
        if self.key && !matches!(item, Item::Str(_)) {
            return Err(S::Error::custom("details: map keys must be strings"));
        }
        match item {
            Item::Nil => s.serialize_unit(),
            Item::Bool(b) => s.serialize_bool(b),
            Item::Uint(u) => s.serialize_u64(u),
            Item::Int(i) => match u64::try_from(i) {
                Ok(u) => s.serialize_u64(u),
                Err(_) => s.serialize_i64(i),
            },
            Item::Float(f) if f.is_finite() => s.serialize_f64(f),
            Item::Float(_) => s.serialize_unit(),
            Item::Str(text) => s.serialize_str(text),
            Item::Array(n) => {
                let inner = self.inner(false).map_err(S::Error::custom)?;
                let mut seq = s.serialize_seq(Some(n))?;
                for _ in 0..n {
                    seq.serialize_element(&inner)?;
                }
                seq.end()
            }
            Item::Map(n) => {
                let key = self.inner(true).map_err(S::Error::custom)?;
                let value = self.inner(false).map_err(S::Error::custom)?;
                let mut map = s.serialize_map(Some(n))?;
                for _ in 0..n {
                    map.serialize_key(&key)?;
                    map.serialize_value(&value)?;
                }
                map.end()
            }
        }
    }
}

/// One MessagePack item: a scalar, or the header of a container.
enum Item<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Array(usize),
    Map(usize),
}

const TRUNCATED: &str = "details: truncated MessagePack value";

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if buf.len() < n {
        return Err(TRUNCATED);
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn be<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], &'static str> {
    let mut out = [0; N];
    out.copy_from_slice(take(buf, N)?);
    Ok(out)
}

fn read_len(buf: &mut &[u8], width: usize) -> Result<usize, &'static str> {
    let n = match width {
        1 => u64::from(be::<1>(buf)?[0]),
        2 => u64::from(u16::from_be_bytes(be(buf)?)),
        _ => u64::from(u32::from_be_bytes(be(buf)?)),
    };
    usize::try_from(n).map_err(|_| TRUNCATED)
}

fn read_item<'a>(buf: &mut &'a [u8]) -> Result<Item<'a>, &'static str> {
    let marker = be::<1>(buf)?[0];
    let str_of = |buf: &mut &'a [u8], len: usize| {
        std::str::from_utf8(take(buf, len)?)
            .map(Item::Str)
            .map_err(|_| "details: a string is not valid UTF-8")
    };
    Ok(match marker {
        0x00..=0x7f => Item::Uint(u64::from(marker)),
        0xe0..=0xff => Item::Int(i64::from(marker as i8)),
        0x80..=0x8f => Item::Map(usize::from(marker & 0x0f)),
        0x90..=0x9f => Item::Array(usize::from(marker & 0x0f)),
        0xa0..=0xbf => return str_of(buf, usize::from(marker & 0x1f)),
        0xc0 => Item::Nil,
        0xc2 => Item::Bool(false),
        0xc3 => Item::Bool(true),
        0xca => Item::Float(f64::from(f32::from_be_bytes(be(buf)?))),
        0xcb => Item::Float(f64::from_be_bytes(be(buf)?)),
        0xcc => Item::Uint(u64::from(be::<1>(buf)?[0])),
        0xcd => Item::Uint(u64::from(u16::from_be_bytes(be(buf)?))),
        0xce => Item::Uint(u64::from(u32::from_be_bytes(be(buf)?))),
        0xcf => Item::Uint(u64::from_be_bytes(be(buf)?)),
        0xd0 => Item::Int(i64::from(i8::from_be_bytes(be(buf)?))),
        0xd1 => Item::Int(i64::from(i16::from_be_bytes(be(buf)?))),
        0xd2 => Item::Int(i64::from(i32::from_be_bytes(be(buf)?))),
        0xd3 => Item::Int(i64::from_be_bytes(be(buf)?)),
        0xd9 => {
            let len = read_len(buf, 1)?;
            return str_of(buf, len);
        }
        0xda => {
            let len = read_len(buf, 2)?;
            return str_of(buf, len);
        }
        0xdb => {
            let len = read_len(buf, 4)?;
            return str_of(buf, len);
        }
        0xdc => Item::Array(read_len(buf, 2)?),
        0xdd => Item::Array(read_len(buf, 4)?),
        0xde => Item::Map(read_len(buf, 2)?),
        0xdf => Item::Map(read_len(buf, 4)?),
        0xc4..=0xc6 => return Err("details: a MessagePack bin has no JSON equivalent"),
        0xc7..=0xc9 | 0xd4..=0xd8 => {
            return Err("details: a MessagePack extension type has no JSON equivalent")
        }
        _ => return Err("details: invalid MessagePack marker 0xc1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;
    use serde_json::json;

    fn roundtrip_msgpack(bytes: &[u8]) -> Vec<u8> {
        rmp_serde::to_vec(&MsgpackValue(bytes)).expect("walk")
    }

    #[test]
    fn capture_and_walk_agree_with_serde_json_value() {
        let values = [
            json!(null),
            json!({"limit": 256, "list": [1, -1, -33, -200, -40000, -3_000_000_000i64, 300, 70_000, 5_000_000_000u64, u64::MAX, i64::MIN]}),
            json!({"s": "x".repeat(40), "t": "y".repeat(300), "u": "z".repeat(70_000), "f": 1.5, "b": [true, false]}),
            json!([[], {}, [[[{"": ""}]]], "\u{e9}\u{1F600}\"\\"]),
        ];
        for v in values {
            let canonical = rmp_serde::to_vec(&v).expect("rmp");
            // MessagePack -> capture -> same bytes (shortest forms throughout).
            let mut de = rmp_serde::Deserializer::from_read_ref(&canonical);
            let mut out = Vec::new();
            Capture {
                out: &mut out,
                depth: 0,
            }
            .deserialize(&mut de)
            .expect("capture");
            assert_eq!(out, canonical, "{v}");
            // Walking the bytes serializes like the Value itself, in both codecs.
            assert_eq!(roundtrip_msgpack(&out), canonical, "{v}");
            assert_eq!(
                serde_json::to_string(&MsgpackValue(&out)).expect("json"),
                serde_json::to_string(&v).expect("json"),
            );
            // JSON text -> MessagePack (placeholder headers) -> canonical by walking.
            let text = serde_json::to_string(&v).expect("json");
            let patched = json_to_msgpack(&text).expect("json to msgpack");
            assert_eq!(roundtrip_msgpack(&patched), canonical, "{v}");
            let back: serde_json::Value = Payload::Msgpack(Bytes::from(patched))
                .to_json()
                .expect("decode");
            assert_eq!(back, v);
        }
    }

    #[test]
    fn floats_come_out_as_value_would_write_them() {
        // f32 read back as f64, non-finite as null: what `serde_json::Value` does.
        let bytes = [
            0x93, 0xca, 0x3f, 0xc0, 0x00, 0x00, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        let json = serde_json::to_string(&MsgpackValue(&bytes)).expect("json");
        let value = Payload::Msgpack(Bytes::copy_from_slice(&bytes))
            .to_json()
            .expect("decode");
        assert_eq!(json, "[1.5,null,1]");
        assert_eq!(value, json!([1.5, null, 1]));
    }

    #[test]
    fn walking_refuses_what_json_cannot_hold() {
        let cases: &[(&[u8], &str)] = &[
            (&[0xc4, 0x01, 0x00], "bin"),
            (&[0xd4, 0x01, 0x00], "extension"),
            (&[0x81, 0x01, 0x02], "keys must be strings"),
            (&[0xa1, 0xff], "UTF-8"),
            (&[0x92, 0x01], "truncated"),
            (&[0xc1], "0xc1"),
        ];
        for (bytes, want) in cases {
            let err = serde_json::to_string(&MsgpackValue(bytes)).expect_err("refused");
            assert!(err.to_string().contains(want), "{bytes:02x?}: {err}");
        }
        let mut deep = vec![0x91; MAX_DECODE_DEPTH + 1];
        deep.push(0xc0);
        let err = rmp_serde::to_vec(&MsgpackValue(&deep)).expect_err("too deep");
        assert!(err.to_string().contains("depth"), "{err}");
    }

    #[test]
    fn json_check_matches_serde_json_value() {
        for ok in [
            "1",
            "[1,{\"a\":\"\\u00e9\"}]",
            "1e308",
            "-0",
            "{\"a\":1,\"a\":2}",
        ] {
            assert!(check_json(ok).is_ok(), "{ok}");
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
        }
        for bad in ["1e400", "\"\\ud800\"", "\"\\ud800x\"", "[1,]", "\"\u{1}\""] {
            let err = check_json(bad).expect_err(bad);
            let value_err = serde_json::from_str::<serde_json::Value>(bad).expect_err(bad);
            let position = format!(
                " at line {} column {}",
                value_err.line(),
                value_err.column()
            );
            assert_eq!(
                Some(err.as_str()),
                value_err.to_string().strip_suffix(&position),
                "{bad}"
            );
        }
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(check_json(&deep(MAX_DETAILS_DEPTH)).is_ok());
        assert_eq!(
            check_json(&deep(MAX_DETAILS_DEPTH + 1)).expect_err("deep"),
            TOO_DEEP_JSON
        );
    }

    #[test]
    fn null_is_absent() {
        assert!(is_absent(&None));
        assert!(is_absent(&Some(Payload::null(Codec::Json))));
        assert!(is_absent(&Some(Payload::null(Codec::Msgpack))));
        let one = Payload::encode(Codec::Msgpack, &1).expect("encode");
        assert!(!is_absent(&Some(one)));
    }
}
