//! The frames of capwire/1.
//!
//! On the wire a frame is a map with exactly one entry: the op name and the
//! op's body, e.g. `{"call": {"id": 1, ...}}`. `docs/protocol.md` is the
//! normative description of each op and of what a receiver does with bad input.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::payload::Payload;
use crate::status::Status;

/// The protocol version this crate speaks, sent in `hello.v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capability id of the bootstrap object on every connection.
pub const BOOTSTRAP_CAP: u64 = 0;
/// Capability id of the framework's runtime capability (ping, names, stats).
pub const RUNTIME_CAP: u64 = 1;
/// The first capability id available for exported objects.
pub const FIRST_EXPORT_CAP: u64 = 2;

macro_rules! frames {
    ($($(#[$doc:meta])* $variant:ident($body:ident) = $op:literal,)*) => {
        /// One capwire/1 frame.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Frame {
            $($(#[$doc])* $variant($body),)*
        }

        impl Frame {
            /// Every op name, in the order of the enum.
            pub const OPS: &'static [&'static str] = &[$($op),*];

            /// The op name of this frame, e.g. `"call"`.
            pub fn op(&self) -> &'static str {
                match self {
                    $(Frame::$variant(_) => $op,)*
                }
            }
        }

        impl Serialize for Frame {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                match self {
                    $(Frame::$variant(body) => map.serialize_entry($op, body)?,)*
                }
                map.end()
            }
        }

        impl<'de> Visitor<'de> for FrameVisitor {
            type Value = Frame;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame: a map with one entry, op name to body")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Frame, A::Error> {
                let op: OpName = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("empty frame: expected one op"))?;
                let frame = match op.0 {
                    $($op => Frame::$variant(map.next_value()?),)*
                    // OpName only yields names from OPS.
                    _ => return Err(de::Error::custom("unknown op")),
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("a frame has exactly one op"));
                }
                Ok(frame)
            }
        }

        $(impl From<$body> for Frame {
            fn from(body: $body) -> Frame {
                Frame::$variant(body)
            }
        })*
    };
}

frames! {
    /// First frame each side sends.
    Hello(Hello) = "hello",
    /// A method call.
    Call(Call) = "call",
    /// The single answer to a call.
    Result(CallResult) = "result",
    /// One item of a streamed answer.
    Item(StreamItem) = "item",
    /// A streamed answer ended normally.
    End(StreamEnd) = "end",
    /// A streamed answer ended with an error.
    StreamError(StreamError) = "stream_error",
    /// The receiver of a stream grants more items.
    Credit(Credit) = "credit",
    /// The caller no longer wants the answer to a running call.
    Cancel(Cancel) = "cancel",
    /// The caller is done with a kept answer.
    Finish(Finish) = "finish",
    /// The importer drops references to a capability.
    Release(Release) = "release",
    /// The exporter revoked capabilities.
    Revoked(Revoked) = "revoked",
    /// The sender is closing the connection.
    Goaway(Goaway) = "goaway",
    /// Liveness probe.
    Ping(Ping) = "ping",
    /// Answer to a ping.
    Pong(Pong) = "pong",
}

struct FrameVisitor;

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Frame, D::Error> {
        deserializer.deserialize_map(FrameVisitor)
    }
}

/// A known op name, read without allocating.
struct OpName(&'static str);

impl<'de> Deserialize<'de> for OpName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OpName, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OpName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an op name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OpName, E> {
                Frame::OPS
                    .iter()
                    .find(|op| **op == v)
                    .map(|op| OpName(op))
                    .ok_or_else(|| E::custom(format_args!("unknown op `{}`", v.escape_debug())))
            }
        }
        deserializer.deserialize_str(V)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `hello`: protocol version, features and limits of the sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; this crate speaks [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Optional features the sender supports (e.g. `"resume"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The limits the sender enforces on what it receives.
    #[serde(default, skip_serializing_if = "HelloLimits::is_empty")]
    pub limits: HelloLimits,
    /// A name for logs and events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// A token to resume an earlier session (when `"resume"` is negotiated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// A bearer token, for servers that require one (protocol.md §1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Hello {
    /// A hello for this protocol version with default limits and no features.
    pub fn new() -> Hello {
        Hello {
            v: PROTOCOL_VERSION,
            features: Vec::new(),
            limits: HelloLimits::default(),
            peer: None,
            resume: None,
            token: None,
        }
    }
}

impl Default for Hello {
    fn default() -> Hello {
        Hello::new()
    }
}

/// Limits a peer announces so the other side can avoid tripping them.
///
/// Absent fields mean "not announced"; the receiver still enforces its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloLimits {
    /// Largest frame the sender accepts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<u32>,
    /// Most capabilities the sender will export to this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_caps: Option<u32>,
    /// Most calls the sender accepts in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Deepest value nesting the sender accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

impl HelloLimits {
    /// True when no limit is announced.
    pub fn is_empty(&self) -> bool {
        *self == HelloLimits::default()
    }
}

/// `call`: invoke `method` on `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Question id chosen by the caller; unique among its unfinished questions.
    pub id: u64,
    /// What is called: a capability, or a property path of an unsettled answer.
    pub target: Target,
    /// Method name.
    pub method: String,
    /// The arguments, one encoded value.
    pub args: Payload,
    /// Capabilities referenced by `{"$cap": n}` placeholders in `args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<CapDescriptor>,
    /// The caller's own answer id this call was made on behalf of (cancellation cascades).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Relative deadline in milliseconds from receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Keep the answer after sending the result, for pipelining, until `finish`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep: bool,
    /// The caller expects a stream and grants this many items up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
}

/// `result`: the outcome of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// The question id of the call.
    pub id: u64,
    /// Value or error.
    pub outcome: Outcome,
}

/// The outcome carried by a `result` frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The call returned a value.
    Ok {
        /// The returned value.
        value: Payload,
        /// Capabilities referenced by placeholders in `value`.
        caps: Vec<CapDescriptor>,
    },
    /// The call failed.
    Err(Status),
}

impl Serialize for CallResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.outcome {
            Outcome::Ok { value, caps } => {
                let n = if caps.is_empty() { 2 } else { 3 };
                let mut s = serializer.serialize_struct("CallResult", n)?;
                s.serialize_field("id", &self.id)?;
                s.serialize_field("ok", value)?;
                if !caps.is_empty() {
                    s.serialize_field("caps", caps)?;
                }
                s.end()
            }
            Outcome::Err(status) => {
                let mut s = serializer.serialize_struct("CallResult", 2)?;
                s.serialize_field("id", &self.id)?;
                s.serialize_field("err", status)?;
                s.end()
            }
        }
    }
}

#[derive(Deserialize)]
struct CallResultWire {
    id: u64,
    // `"ok": null` is a present null value, not an absent field.
    #[serde(default, deserialize_with = "present_payload")]
    ok: Option<Payload>,
    #[serde(default)]
    caps: Vec<CapDescriptor>,
    #[serde(default)]
    err: Option<Status>,
}

fn present_payload<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Payload>, D::Error> {
    Payload::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for CallResult {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CallResult, D::Error> {
        let wire = CallResultWire::deserialize(deserializer)?;
        let outcome = match (wire.ok, wire.err) {
            (Some(value), None) => Outcome::Ok {
                value,
                caps: wire.caps,
            },
            (None, Some(status)) if wire.caps.is_empty() => Outcome::Err(status),
            (None, Some(_)) => return Err(de::Error::custom("an error result carries no caps")),
            (Some(_), Some(_)) => {
                return Err(de::Error::custom("a result has `ok` or `err`, not both"))
            }
            (None, None) => return Err(de::Error::custom("a result needs `ok` or `err`")),
        };
        Ok(CallResult {
            id: wire.id,
            outcome,
        })
    }
}

/// `item`: one item of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamItem {
    /// The question id of the streaming call.
    pub id: u64,
    /// The item.
    pub value: Payload,
    /// Capabilities referenced by placeholders in `value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<CapDescriptor>,
}

/// `end`: a streamed answer finished normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// The question id of the streaming call.
    pub id: u64,
}

/// `stream_error`: a streamed answer finished with an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamError {
    /// The question id of the streaming call.
    pub id: u64,
    /// Why the stream failed.
    pub err: Status,
}

/// `credit`: the receiver of a stream allows `n` more items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The question id of the streaming call.
    pub id: u64,
    /// Additional items the sender may send.
    pub n: u32,
}

/// `cancel`: the caller no longer wants the answer to question `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The question id.
    pub id: u64,
}

/// `finish`: the caller will not pipeline on answer `id` any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// The question id.
    pub id: u64,
}

/// `release`: the importer drops `n` references to capability `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The capability id, in the receiver's export table.
    pub cap: u64,
    /// How many introductions are released.
    pub n: u32,
}

/// `revoked`: the sender revoked these of its exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Capability ids, in the sender's export table.
    pub caps: Vec<u64>,
}

/// `goaway`: the sender is closing the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goaway {
    /// Why the connection closes.
    pub status: Status,
    /// How long in-flight calls may still finish, in milliseconds.
    #[serde(default)]
    pub grace_ms: u64,
}

/// `ping`: please answer with a `pong` carrying the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Opaque value echoed by the pong.
    pub nonce: u64,
}

/// `pong`: answer to a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the ping.
    pub nonce: u64,
}

/// One step of a property path into a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    /// A map key.
    Key(String),
    /// An array index.
    Index(u64),
}

impl From<&str> for PathSeg {
    fn from(key: &str) -> PathSeg {
        PathSeg::Key(key.to_owned())
    }
}

impl From<String> for PathSeg {
    fn from(key: String) -> PathSeg {
        PathSeg::Key(key)
    }
}

impl From<usize> for PathSeg {
    fn from(index: usize) -> PathSeg {
        PathSeg::Index(index as u64)
    }
}

impl Serialize for PathSeg {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PathSeg::Key(k) => serializer.serialize_str(k),
            PathSeg::Index(i) => serializer.serialize_u64(*i),
        }
    }
}

impl<'de> Deserialize<'de> for PathSeg {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PathSeg, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PathSeg;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map key (string) or an array index (non-negative integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PathSeg, E> {
                Ok(PathSeg::Key(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PathSeg, E> {
                Ok(PathSeg::Index(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PathSeg, E> {
                u64::try_from(v)
                    .map(PathSeg::Index)
                    .map_err(|_| E::custom("negative array index in path"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// What a call is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A capability in the receiver's export table: `{"cap": id}`.
    Cap(u64),
    /// A property path of an answer the receiver holds for the sender:
    /// `{"answer": id, "path": [...]}` (promise pipelining).
    Answer {
        /// The sender's question id.
        id: u64,
        /// Path into the answer's value; empty for the value itself.
        path: Vec<PathSeg>,
    },
}

/// A capability reference inside a value, as listed in a frame's `caps` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapDescriptor {
    /// Hosted by the sender, id in the sender's export table: `{"export": id}`.
    Export(u64),
    /// Hosted by the receiver (its own object coming back), id in the
    /// receiver's export table: `{"import": id}`.
    Import(u64),
    /// A property path of an answer the receiver holds for the sender:
    /// `{"answer": id, "path": [...]}`.
    Answer {
        /// The sender's question id.
        id: u64,
        /// Path into the answer's value.
        path: Vec<PathSeg>,
    },
}

#[derive(Serialize, Deserialize)]
struct RefWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cap: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    export: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    import: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    path: Vec<PathSeg>,
}

impl RefWire {
    fn empty() -> RefWire {
        RefWire {
            cap: None,
            export: None,
            import: None,
            answer: None,
            path: Vec::new(),
        }
    }

    /// The single id field that is set, or an error naming the problem.
    fn only_one(&self) -> Result<(), &'static str> {
        let set = [self.cap, self.export, self.import, self.answer]
            .iter()
            .filter(|f| f.is_some())
            .count();
        match set {
            1 if self.answer.is_none() && !self.path.is_empty() => {
                Err("`path` is only allowed with `answer`")
            }
            1 => Ok(()),
            0 => Err("a reference needs one id field"),
            _ => Err("a reference has exactly one id field"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::Cap(id) => {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("cap", id)?;
                m.end()
            }
            Target::Answer { id, path } => {
                let mut m = serializer.serialize_map(Some(2))?;
                m.serialize_entry("answer", id)?;
                m.serialize_entry("path", path)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Target, D::Error> {
        let w = RefWire::deserialize(deserializer)?;
        w.only_one().map_err(de::Error::custom)?;
        match (w.cap, w.answer) {
            (Some(id), None) => Ok(Target::Cap(id)),
            (None, Some(id)) => Ok(Target::Answer { id, path: w.path }),
            _ => Err(de::Error::custom("a target is `cap` or `answer`")),
        }
    }
}

impl Serialize for CapDescriptor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut w = RefWire::empty();
        match self {
            CapDescriptor::Export(id) => w.export = Some(*id),
            CapDescriptor::Import(id) => w.import = Some(*id),
            CapDescriptor::Answer { id, path } => {
                w.answer = Some(*id);
                w.path.clone_from(path);
            }
        }
        w.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CapDescriptor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CapDescriptor, D::Error> {
        let w = RefWire::deserialize(deserializer)?;
        w.only_one().map_err(de::Error::custom)?;
        match (w.export, w.import, w.answer) {
            (Some(id), None, None) => Ok(CapDescriptor::Export(id)),
            (None, Some(id), None) => Ok(CapDescriptor::Import(id)),
            (None, None, Some(id)) => Ok(CapDescriptor::Answer { id, path: w.path }),
            _ => Err(de::Error::custom(
                "a capability descriptor is `export`, `import` or `answer`",
            )),
        }
    }
}
