//! The capwire/1 wire protocol, without I/O.
//!
//! This crate owns what travels between two capwire peers: the [`Frame`]s,
//! the [`Status`] codes errors carry, the two [`Codec`]s (JSON and
//! MessagePack) and the [`framing`] of byte streams. It has no tokio and no
//! sockets, so everything in it can be tested and fuzzed in isolation.
//! `docs/protocol.md` in the repository is the normative description.
//!
//! ```
//! use capwire_proto::{codec, Call, Codec, Frame, Payload, Target};
//!
//! let call = Frame::Call(Call {
//!     id: 1,
//!     target: Target::Cap(0),
//!     method: "square".into(),
//!     args: Payload::encode(Codec::Json, &[7])?,
//!     caps: vec![],
//!     parent: None,
//!     deadline_ms: Some(5_000),
//!     keep: false,
//!     stream: None,
//! });
//! let bytes = codec::encode(&call, Codec::Json)?;
//! assert_eq!(
//!     std::str::from_utf8(&bytes)?,
//!     r#"{"call":{"id":1,"target":{"cap":0},"method":"square","args":[7],"deadline_ms":5000}}"#
//! );
//! // A receiver detects the codec of every frame by itself.
//! let (back, codec) = codec::decode(&codec::encode(&call, Codec::Msgpack)?)?;
//! assert_eq!(codec, Codec::Msgpack);
//! assert_eq!(back.op(), "call");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
mod depth;
mod details;
mod direct;
pub mod frame;
pub mod framing;
mod path;
pub mod payload;
mod scratch;
pub mod status;

pub use codec::{Codec, DecodeError, EncodeError, MAX_DECODE_DEPTH};
pub use depth::json_exceeds_depth;
pub use frame::{
    Call, CallResult, Cancel, CapDescriptor, Credit, Finish, Frame, Goaway, Hello, HelloLimits,
    Outcome, PathSeg, Ping, Pong, Release, Revoked, StreamEnd, StreamError, StreamItem, Target,
    BOOTSTRAP_CAP, FIRST_EXPORT_CAP, PROTOCOL_VERSION, RUNTIME_CAP,
};
pub use framing::{FrameDecoder, Framing, FramingError, DEFAULT_MAX_FRAME_BYTES};
pub use payload::Payload;
pub use status::{Code, Reason, Status};
