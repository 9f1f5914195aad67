//! The two encodings of capwire/1 frames, and how a receiver tells them apart.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// A frame encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// JSON text: for JavaScript peers and debugging.
    Json,
    /// MessagePack with named fields: the default between Rust peers.
    Msgpack,
}

impl Codec {
    /// Tells the codec of an encoded frame from its first significant byte.
    ///
    /// A binary frame is a MessagePack map (of one entry, so it starts with
    /// `0x81`; any map marker is read as MessagePack so that a map of the wrong
    /// size gets a precise error); a JSON frame starts with `{`, possibly
    /// after whitespace.
    pub fn detect(frame: &[u8]) -> Result<Codec, DecodeError> {
        let first = frame
            .iter()
            .copied()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .ok_or(DecodeError::Empty)?;
        match first {
            0x80..=0x8f | 0xde | 0xdf => Ok(Codec::Msgpack),
            b'{' => Ok(Codec::Json),
            other => Err(DecodeError::UnknownCodec(other)),
        }
    }

    /// The codec's name: `"json"` or `"msgpack"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Msgpack => "msgpack",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes could not be decoded as a frame or a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame has no bytes (or only whitespace).
    #[error("empty frame")]
    Empty,
    /// The first byte belongs to neither codec.
    #[error("unknown frame encoding: first byte 0x{0:02x} is neither `{{` (JSON) nor 0x81 (MessagePack)")]
    UnknownCodec(u8),
    /// The op name is not one capwire/1 defines.
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    /// The frame is not well formed in its codec, or a field has the wrong shape.
    #[error("malformed {codec} frame: {message}")]
    Malformed {
        /// The codec the frame was decoded as.
        codec: Codec,
        /// What was wrong.
        message: String,
    },
    /// A payload value does not have the shape the consumer asked for.
    #[error("bad {codec} value: {message}")]
    Value {
        /// The payload's codec.
        codec: Codec,
        /// What was wrong.
        message: String,
    },
}

/// Why a frame or value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// JSON encoding failed (e.g. a map with non-string keys).
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack encoding failed.
    #[error("MessagePack encoding failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
    /// A payload could not be converted to the frame's codec.
    #[error("payload cannot be transcoded: {0}")]
    Transcode(String),
}

/// Deepest nesting any decoder in this crate follows, whatever the limits a
/// session configures: deeper input is refused before it can exhaust the stack.
/// (serde_json applies the same bound, 128, to JSON.)
pub const MAX_DECODE_DEPTH: usize = 128;

fn malformed(codec: Codec, message: String) -> DecodeError {
    // serde reports unknown ops through our visitor's custom error; keep them distinct.
    if let Some(rest) = message.strip_prefix("unknown op `") {
        if let Some(end) = rest.find('`') {
            return DecodeError::UnknownOp(rest[..end].to_owned());
        }
    }
    DecodeError::Malformed { codec, message }
}

/// Decodes one frame, detecting its codec.
pub fn decode(frame: &[u8]) -> Result<(Frame, Codec), DecodeError> {
    let codec = Codec::detect(frame)?;
    decode_as(codec, frame).map(|f| (f, codec))
}

/// Decodes one frame held in `Bytes`, detecting its codec. The same as
/// [`decode`], but a MessagePack frame's payloads share `frame`'s memory
/// instead of being copied out of it.
pub fn decode_bytes(frame: &Bytes) -> Result<(Frame, Codec), DecodeError> {
    let codec = Codec::detect(frame)?;
    if codec == Codec::Msgpack {
        if let Some(f) = crate::direct::decode(frame) {
            return Ok((f, codec));
        }
    }
    decode_as(codec, frame).map(|f| (f, codec))
}

/// Decodes one frame known to be in `codec`.
pub fn decode_as(codec: Codec, frame: &[u8]) -> Result<Frame, DecodeError> {
    match codec {
        Codec::Json => serde_json::from_slice(frame).map_err(|e| malformed(codec, e.to_string())),
        Codec::Msgpack => {
            // Reading from the slice itself: strings and bins are borrowed
            // from `frame` (and copied once, into the field that keeps them),
            // never buffered in between, and a length that claims more bytes
            // than are present fails before anything is allocated for it.
            let mut de = rmp_serde::Deserializer::from_read_ref(frame);
            de.set_max_depth(MAX_DECODE_DEPTH);
            let f = Frame::deserialize(&mut de).map_err(|e| malformed(codec, e.to_string()))?;
            // The slice reader does not tell how far it read: measure the map
            // that was just decoded (so it is well formed and at most
            // `MAX_DECODE_DEPTH` deep).
            let used = crate::depth::msgpack_value_len(frame).unwrap_or(frame.len());
            if used < frame.len() {
                let extra = frame.len() - used;
                return Err(malformed(
                    codec,
                    format!("{extra} trailing bytes after the frame"),
                ));
            }
            Ok(f)
        }
    }
}

/// Encodes one frame.
pub fn encode(frame: &Frame, codec: Codec) -> Result<Vec<u8>, EncodeError> {
    encode_bytes(frame, codec).map(Vec::from)
}

/// Encodes one frame into `Bytes` of exactly its size: a small frame through
/// a per-thread buffer it is copied out of, a large one into a buffer of its
/// own (a copy of its payload would cost more than the buffer's allocations).
pub fn encode_bytes(frame: &Frame, codec: Codec) -> Result<Bytes, EncodeError> {
    let hint = size_hint(frame);
    if hint > DIRECT_ENCODE {
        let mut out = BytesMut::with_capacity(hint);
        encode_into(frame, codec, &mut out)?;
        return Ok(out.freeze());
    }
    crate::scratch::encode_exact(|out| encode_into(frame, codec, out))
}

/// Frames expected to be larger than this are encoded into a buffer of their own.
const DIRECT_ENCODE: usize = 16 * 1024;

/// Room for a frame: its payload plus what the fields of a busy frame take.
fn size_hint(frame: &Frame) -> usize {
    let payload = match frame {
        Frame::Call(c) => c.args.len(),
        Frame::Result(r) => match &r.outcome {
            crate::frame::Outcome::Ok { value, .. } => value.len(),
            crate::frame::Outcome::Err(_) => 0,
        },
        Frame::Item(i) => i.value.len(),
        _ => 0,
    };
    payload + 96
}

/// Appends the encoding of `frame` to `out`. On error `out` is left as it was.
pub fn encode_into(frame: &Frame, codec: Codec, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    let result = match codec {
        Codec::Json => {
            serde_json::to_writer((&mut *out).writer(), frame).map_err(EncodeError::from)
        }
        Codec::Msgpack if crate::direct::encode(frame, out) => Ok(()),
        Codec::Msgpack => {
            let mut ser = rmp_serde::Serializer::new((&mut *out).writer()).with_struct_map();
            frame.serialize(&mut ser).map_err(EncodeError::from)
        }
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}
