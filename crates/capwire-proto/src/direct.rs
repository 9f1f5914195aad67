//! The frames on the call path in MessagePack, without serde.
//!
//! `call`, `result` (a value), `item`, `credit`, `cancel`, `finish` and `end`
//! make up nearly all the traffic of a busy connection. Going through serde,
//! each frame's field names are validated as UTF-8 and matched as strings,
//! the payload is copied out of the frame, and the frame is scanned a second
//! time to find where it ends. Here they are written and read directly:
//!
//! - [`encode`] writes exactly the bytes the serde encoder writes (the same
//!   `rmp` primitives, in the same order), so the two are interchangeable;
//!   a test checks it frame by frame.
//! - [`decode`] reads a frame of those shapes and returns the same [`Frame`]
//!   serde would, with payloads sliced out of the received bytes (no copy).
//!   Anything it does not recognise exactly — another op, an unknown or
//!   repeated field, a type serde would have to convert, trailing bytes —
//!   returns `None`, and the caller decodes with serde, which accepts or
//!   rejects it with its precise error. So this is only ever a shortcut to
//!   the answer serde gives.

use bytes::{BufMut, Bytes, BytesMut};
use rmp::Marker;

use crate::frame::{
    Call, CallResult, Cancel, CapDescriptor, Credit, Finish, Frame, Outcome, PathSeg, StreamEnd,
    StreamItem, Target,
};
use crate::payload::Payload;

/// Appends `frame` to `out` if it is one of the call path's shapes (with
/// MessagePack payloads); returns false, writing nothing, otherwise.
pub(crate) fn encode(frame: &Frame, out: &mut BytesMut) -> bool {
    if !encodable(frame) {
        return false;
    }
    let mut w = out.writer();
    let w = &mut w;
    match frame {
        Frame::Call(c) => {
            map(w, 1);
            str(w, "call");
            let n = 4
                + usize::from(!c.caps.is_empty())
                + usize::from(c.parent.is_some())
                + usize::from(c.deadline_ms.is_some())
                + usize::from(c.keep)
                + usize::from(c.stream.is_some());
            map(w, n as u32);
            str(w, "id");
            uint(w, c.id);
            str(w, "target");
            target(w, &c.target);
            str(w, "method");
            str(w, &c.method);
            str(w, "args");
            payload(w, &c.args);
            if !c.caps.is_empty() {
                str(w, "caps");
                caps(w, &c.caps);
            }
            if let Some(p) = c.parent {
                str(w, "parent");
                uint(w, p);
            }
            if let Some(d) = c.deadline_ms {
                str(w, "deadline_ms");
                uint(w, d);
            }
            if c.keep {
                str(w, "keep");
                let _ = rmp::encode::write_bool(w, true);
            }
            if let Some(s) = c.stream {
                str(w, "stream");
                uint(w, u64::from(s));
            }
        }
        Frame::Result(CallResult {
            id,
            outcome: Outcome::Ok { value, caps: cs },
        }) => valued(w, "result", *id, "ok", value, cs),
        Frame::Item(StreamItem {
            id,
            value,
            caps: cs,
        }) => valued(w, "item", *id, "value", value, cs),
        Frame::Credit(Credit { id, n }) => {
            map(w, 1);
            str(w, "credit");
            map(w, 2);
            str(w, "id");
            uint(w, *id);
            str(w, "n");
            uint(w, u64::from(*n));
        }
        Frame::Cancel(Cancel { id }) => id_only(w, "cancel", *id),
        Frame::Finish(Finish { id }) => id_only(w, "finish", *id),
        Frame::End(StreamEnd { id }) => id_only(w, "end", *id),
        // `encodable` let nothing else through.
        _ => {}
    }
    true
}

/// The shapes [`encode`] writes: payloads must already be MessagePack
/// (a JSON payload in a binary frame is transcoded, which serde does).
fn encodable(frame: &Frame) -> bool {
    // Longer than a `bin` can say: serde reports it.
    let msgpack = |p: &Payload| matches!(p, Payload::Msgpack(b) if u32::try_from(b.len()).is_ok());
    match frame {
        Frame::Call(c) => msgpack(&c.args),
        Frame::Result(CallResult {
            outcome: Outcome::Ok { value, .. },
            ..
        }) => msgpack(value),
        Frame::Item(i) => msgpack(&i.value),
        Frame::Credit(_) | Frame::Cancel(_) | Frame::Finish(_) | Frame::End(_) => true,
        _ => false,
    }
}

type Writer<'a> = bytes::buf::Writer<&'a mut BytesMut>;

// Writing into a `BytesMut` cannot fail: the results below are `Ok` always.
// The small cases (short names, fixmaps, small integers) are written by hand,
// in the forms `rmp` picks for them; the rest goes through `rmp` itself.

fn map(w: &mut Writer<'_>, n: u32) {
    if n < 16 {
        w.get_mut().put_u8(0x80 | n as u8);
    } else {
        let _ = rmp::encode::write_map_len(w, n);
    }
}

fn str(w: &mut Writer<'_>, s: &str) {
    if s.len() < 32 {
        let out = w.get_mut();
        out.put_u8(0xa0 | s.len() as u8);
        out.put_slice(s.as_bytes());
    } else {
        let _ = rmp::encode::write_str(w, s);
    }
}

fn uint(w: &mut Writer<'_>, n: u64) {
    let out = w.get_mut();
    if n < 128 {
        out.put_u8(n as u8);
    } else if n < 1 << 8 {
        out.put_u8(0xcc);
        out.put_u8(n as u8);
    } else if n < 1 << 16 {
        out.put_u8(0xcd);
        out.put_u16(n as u16);
    } else if n < 1 << 32 {
        out.put_u8(0xce);
        out.put_u32(n as u32);
    } else {
        out.put_u8(0xcf);
        out.put_u64(n);
    }
}

fn id_only(w: &mut Writer<'_>, op: &str, id: u64) {
    map(w, 1);
    str(w, op);
    map(w, 1);
    str(w, "id");
    uint(w, id);
}

/// `{op: {id, <field>: payload, caps?}}`: `result` (field `ok`) and `item` (`value`).
fn valued(
    w: &mut Writer<'_>,
    op: &str,
    id: u64,
    field: &str,
    value: &Payload,
    cs: &[CapDescriptor],
) {
    map(w, 1);
    str(w, op);
    map(w, if cs.is_empty() { 2 } else { 3 });
    str(w, "id");
    uint(w, id);
    str(w, field);
    payload(w, value);
    if !cs.is_empty() {
        str(w, "caps");
        caps(w, cs);
    }
}

fn payload(w: &mut Writer<'_>, p: &Payload) {
    if let Payload::Msgpack(bytes) = p {
        let _ = rmp::encode::write_bin_len(w, bytes.len() as u32);
        w.get_mut().put_slice(bytes);
    }
}

fn path(w: &mut Writer<'_>, path: &[PathSeg]) {
    let _ = rmp::encode::write_array_len(w, path.len() as u32);
    for seg in path {
        match seg {
            PathSeg::Key(k) => str(w, k),
            PathSeg::Index(i) => uint(w, *i),
        }
    }
}

fn target(w: &mut Writer<'_>, t: &Target) {
    match t {
        Target::Cap(id) => {
            map(w, 1);
            str(w, "cap");
            uint(w, *id);
        }
        Target::Answer { id, path: p } => {
            map(w, 2);
            str(w, "answer");
            uint(w, *id);
            str(w, "path");
            path(w, p);
        }
    }
}

fn caps(w: &mut Writer<'_>, caps: &[CapDescriptor]) {
    let _ = rmp::encode::write_array_len(w, caps.len() as u32);
    for d in caps {
        match d {
            CapDescriptor::Export(id) => {
                map(w, 1);
                str(w, "export");
                uint(w, *id);
            }
            CapDescriptor::Import(id) => {
                map(w, 1);
                str(w, "import");
                uint(w, *id);
            }
            CapDescriptor::Answer { id, path: p } => {
                map(w, if p.is_empty() { 1 } else { 2 });
                str(w, "answer");
                uint(w, *id);
                if !p.is_empty() {
                    str(w, "path");
                    path(w, p);
                }
            }
        }
    }
}

/// Reads a frame of the call path's shapes from `frame`, or `None` to let
/// serde decode it (see the module docs).
pub(crate) fn decode(frame: &Bytes) -> Option<Frame> {
    let mut r = Reader { buf: frame, pos: 0 };
    if r.map_len()? != 1 {
        return None;
    }
    let op = r.str()?;
    let decoded = match op {
        b"call" => Frame::Call(r.call()?),
        b"result" => Frame::Result(r.result()?),
        b"item" => Frame::Item(r.item()?),
        b"credit" => Frame::Credit(r.credit()?),
        b"cancel" => Frame::Cancel(Cancel { id: r.id_only()? }),
        b"finish" => Frame::Finish(Finish { id: r.id_only()? }),
        b"end" => Frame::End(StreamEnd { id: r.id_only()? }),
        _ => return None,
    };
    // Trailing bytes: serde reports them.
    (r.pos == frame.len()).then_some(decoded)
}

/// The most entries reserved up front for an array whose length a frame
/// announces: a hostile length is paid for only as far as the frame backs it.
const PREALLOCATE: usize = 16;

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

/// Sets a field once: a repeated field is left to serde.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn be(&mut self, width: usize) -> Option<u64> {
        let bytes = self.buf.get(self.pos..self.pos + width)?;
        self.pos += width;
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn take(&mut self, len: usize) -> Option<std::ops::Range<usize>> {
        let end = self.pos.checked_add(len)?;
        if end > self.buf.len() {
            return None;
        }
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }

    fn map_len(&mut self) -> Option<usize> {
        let len = match Marker::from_u8(self.byte()?) {
            Marker::FixMap(n) => u64::from(n),
            Marker::Map16 => self.be(2)?,
            Marker::Map32 => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok()
    }

    fn array_len(&mut self) -> Option<usize> {
        let len = match Marker::from_u8(self.byte()?) {
            Marker::FixArray(n) => u64::from(n),
            Marker::Array16 => self.be(2)?,
            Marker::Array32 => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok()
    }

    /// A string's bytes (not validated: callers compare them with known
    /// names, or validate them).
    fn str(&mut self) -> Option<&[u8]> {
        let len = match Marker::from_u8(self.byte()?) {
            Marker::FixStr(n) => u64::from(n),
            Marker::Str8 => self.be(1)?,
            Marker::Str16 => self.be(2)?,
            Marker::Str32 => self.be(4)?,
            _ => return None,
        };
        let range = self.take(usize::try_from(len).ok()?)?;
        self.buf.get(range)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.str()?).ok().map(str::to_owned)
    }

    /// An unsigned integer in any of MessagePack's unsigned forms.
    fn uint(&mut self) -> Option<u64> {
        match Marker::from_u8(self.byte()?) {
            Marker::FixPos(n) => Some(u64::from(n)),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            _ => None,
        }
    }

    /// An optional unsigned integer: `nil` is absent.
    fn opt_uint(&mut self) -> Option<Option<u64>> {
        if self.buf.get(self.pos) == Some(&Marker::Null.to_u8()) {
            self.pos += 1;
            return Some(None);
        }
        self.uint().map(Some)
    }

    /// A `bin` payload, sliced out of the frame.
    fn payload(&mut self) -> Option<Payload> {
        let len = match Marker::from_u8(self.byte()?) {
            Marker::Bin8 => self.be(1)?,
            Marker::Bin16 => self.be(2)?,
            Marker::Bin32 => self.be(4)?,
            _ => return None,
        };
        let range = self.take(usize::try_from(len).ok()?)?;
        Some(Payload::Msgpack(self.buf.slice(range)))
    }

    fn path(&mut self) -> Option<Vec<PathSeg>> {
        let n = self.array_len()?;
        // Each segment takes at least a byte: a length beyond the frame is bad input.
        if n > self.buf.len() - self.pos {
            return None;
        }
        // The count is the peer's word: reserve a little, grow with what is read.
        let mut path = Vec::with_capacity(n.min(PREALLOCATE));
        for _ in 0..n {
            let seg = match self.buf.get(self.pos).copied().map(Marker::from_u8)? {
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                    PathSeg::Key(self.string()?)
                }
                _ => PathSeg::Index(self.uint()?),
            };
            path.push(seg);
        }
        Some(path)
    }

    /// A reference map (`target` or a capability descriptor): its id fields
    /// and path, as serde's `RefWire` reads them.
    fn reference(&mut self) -> Option<Ref> {
        let n = self.map_len()?;
        let mut r = Ref::default();
        for _ in 0..n {
            match self.str()? {
                b"cap" => once(&mut r.cap, self.uint()?)?,
                b"export" => once(&mut r.export, self.uint()?)?,
                b"import" => once(&mut r.import, self.uint()?)?,
                b"answer" => once(&mut r.answer, self.uint()?)?,
                b"path" => once(&mut r.path, self.path()?)?,
                _ => return None,
            }
        }
        let set = [r.cap, r.export, r.import, r.answer]
            .iter()
            .filter(|f| f.is_some())
            .count();
        let path_ok = r.answer.is_some() || r.path.as_ref().map_or(true, Vec::is_empty);
        (set == 1 && path_ok).then_some(r)
    }

    fn target(&mut self) -> Option<Target> {
        let r = self.reference()?;
        match (r.cap, r.answer) {
            (Some(id), None) => Some(Target::Cap(id)),
            (None, Some(id)) => Some(Target::Answer {
                id,
                path: r.path.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    fn caps(&mut self) -> Option<Vec<CapDescriptor>> {
        let n = self.array_len()?;
        if n > self.buf.len() - self.pos {
            return None;
        }
        let mut caps = Vec::with_capacity(n.min(PREALLOCATE));
        for _ in 0..n {
            let r = self.reference()?;
            caps.push(match (r.export, r.import, r.answer) {
                (Some(id), None, None) => CapDescriptor::Export(id),
                (None, Some(id), None) => CapDescriptor::Import(id),
                (None, None, Some(id)) => CapDescriptor::Answer {
                    id,
                    path: r.path.unwrap_or_default(),
                },
                _ => return None,
            });
        }
        Some(caps)
    }

    fn call(&mut self) -> Option<Call> {
        let n = self.map_len()?;
        let (mut id, mut target, mut method, mut args) = (None, None, None, None);
        let (mut caps, mut parent, mut deadline, mut keep, mut stream) =
            (None, None, None, None, None);
        for _ in 0..n {
            match self.str()? {
                b"id" => once(&mut id, self.uint()?)?,
                b"target" => once(&mut target, self.target()?)?,
                b"method" => once(&mut method, self.string()?)?,
                b"args" => once(&mut args, self.payload()?)?,
                b"caps" => once(&mut caps, self.caps()?)?,
                b"parent" => once(&mut parent, self.opt_uint()?)?,
                b"deadline_ms" => once(&mut deadline, self.opt_uint()?)?,
                b"keep" => once(
                    &mut keep,
                    match Marker::from_u8(self.byte()?) {
                        Marker::True => true,
                        Marker::False => false,
                        _ => return None,
                    },
                )?,
                b"stream" => once(&mut stream, self.opt_uint()?)?,
                _ => return None,
            }
        }
        let stream = match stream.flatten() {
            Some(s) => Some(u32::try_from(s).ok()?),
            None => None,
        };
        Some(Call {
            id: id?,
            target: target?,
            method: method?,
            args: args?,
            caps: caps.unwrap_or_default(),
            parent: parent.flatten(),
            deadline_ms: deadline.flatten(),
            keep: keep.unwrap_or(false),
            stream,
        })
    }

    /// `{id, <field>: payload, caps?}`: the body of `result` (field `ok`) and `item` (`value`).
    fn valued(&mut self, field: &[u8]) -> Option<(u64, Payload, Vec<CapDescriptor>)> {
        let n = self.map_len()?;
        let (mut id, mut value, mut caps) = (None, None, None);
        for _ in 0..n {
            let key = self.str()?;
            if key == field {
                once(&mut value, self.payload()?)?;
                continue;
            }
            match key {
                b"id" => once(&mut id, self.uint()?)?,
                b"caps" => once(&mut caps, self.caps()?)?,
                // `err`, unknown fields: serde.
                _ => return None,
            }
        }
        Some((id?, value?, caps.unwrap_or_default()))
    }

    fn result(&mut self) -> Option<CallResult> {
        let (id, value, caps) = self.valued(b"ok")?;
        Some(CallResult {
            id,
            outcome: Outcome::Ok { value, caps },
        })
    }

    fn item(&mut self) -> Option<StreamItem> {
        let (id, value, caps) = self.valued(b"value")?;
        Some(StreamItem { id, value, caps })
    }

    /// `{id}`.
    fn id_only(&mut self) -> Option<u64> {
        if self.map_len()? != 1 || self.str()? != b"id" {
            return None;
        }
        self.uint()
    }

    /// `{id, n}`, in either order.
    fn credit(&mut self) -> Option<Credit> {
        if self.map_len()? != 2 {
            return None;
        }
        let (mut id, mut n) = (None, None);
        for _ in 0..2 {
            match self.str()? {
                b"id" => once(&mut id, self.uint()?)?,
                b"n" => once(&mut n, u32::try_from(self.uint()?).ok()?)?,
                _ => return None,
            }
        }
        Some(Credit { id: id?, n: n? })
    }
}

#[derive(Default)]
struct Ref {
    cap: Option<u64>,
    export: Option<u64>,
    import: Option<u64>,
    answer: Option<u64>,
    path: Option<Vec<PathSeg>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_as, Codec};
    use serde::Serialize;

    fn serde_bytes(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        frame.serialize(&mut ser).expect("serde encodes");
        out
    }

    fn direct_bytes(frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        assert!(encode(frame, &mut out), "not a direct frame: {frame:?}");
        out.to_vec()
    }

    fn payload(len: usize) -> Payload {
        Payload::encode(Codec::Msgpack, &"x".repeat(len)).expect("payload")
    }

    fn path() -> Vec<PathSeg> {
        vec![PathSeg::Key("counter".into()), PathSeg::Index(300)]
    }

    fn frames() -> Vec<Frame> {
        let mut frames = Vec::new();
        for (id, len) in [
            (0, 0),
            (127, 10),
            (128, 200),
            (70_000, 70_000),
            (u64::MAX, 31),
        ] {
            frames.push(Frame::Call(Call {
                id,
                target: Target::Cap(id / 2),
                method: "m".repeat(len % 300),
                args: payload(len),
                caps: vec![],
                parent: None,
                deadline_ms: None,
                keep: false,
                stream: None,
            }));
            frames.push(Frame::Result(CallResult {
                id,
                outcome: Outcome::Ok {
                    value: payload(len),
                    caps: vec![],
                },
            }));
            frames.push(Frame::Item(StreamItem {
                id,
                value: payload(len),
                caps: vec![CapDescriptor::Export(id)],
            }));
            frames.push(Frame::Cancel(Cancel { id }));
            frames.push(Frame::Finish(Finish { id }));
            frames.push(Frame::End(StreamEnd { id }));
        }
        let caps = vec![
            CapDescriptor::Export(2),
            CapDescriptor::Import(3),
            CapDescriptor::Answer {
                id: 4,
                path: vec![],
            },
            CapDescriptor::Answer {
                id: 5,
                path: path(),
            },
        ];
        frames.push(Frame::Call(Call {
            id: 9,
            target: Target::Answer {
                id: 8,
                path: path(),
            },
            method: "increment".into(),
            args: payload(3),
            caps: caps.clone(),
            parent: Some(77),
            deadline_ms: Some(5_000),
            keep: true,
            stream: Some(32),
        }));
        frames.push(Frame::Call(Call {
            id: 10,
            target: Target::Answer {
                id: 8,
                path: vec![],
            },
            method: "next".into(),
            args: payload(0),
            caps: vec![],
            parent: None,
            deadline_ms: None,
            keep: true,
            stream: None,
        }));
        frames.push(Frame::Result(CallResult {
            id: 11,
            outcome: Outcome::Ok {
                value: payload(1),
                caps,
            },
        }));
        frames.push(Frame::Credit(Credit {
            id: 12,
            n: u32::MAX,
        }));
        frames
    }

    /// The direct encoder writes serde's bytes, and the direct decoder reads
    /// them back as serde does.
    #[test]
    fn direct_frames_are_byte_for_byte_serdes() {
        for frame in frames() {
            let bytes = direct_bytes(&frame);
            assert_eq!(bytes, serde_bytes(&frame), "{frame:?}");
            let back = decode(&Bytes::from(bytes.clone())).expect("direct decodes its own");
            assert_eq!(back, frame);
            assert_eq!(
                decode_as(Codec::Msgpack, &bytes).expect("serde decodes"),
                frame
            );
        }
    }

    /// Shapes the direct path leaves to serde: it writes nothing and reads
    /// nothing, and serde's answer (a frame or an error) stands.
    #[test]
    fn other_shapes_are_left_to_serde() {
        let err = Frame::Result(CallResult {
            id: 1,
            outcome: Outcome::Err(crate::Status::unavailable("gone")),
        });
        assert!(!encode(&err, &mut BytesMut::new()));
        assert!(decode(&Bytes::from(serde_bytes(&err))).is_none());
        let json_args = Frame::Call(Call {
            id: 1,
            target: Target::Cap(2),
            method: "m".into(),
            args: Payload::encode(Codec::Json, &[1]).expect("json"),
            caps: vec![],
            parent: None,
            deadline_ms: None,
            keep: false,
            stream: None,
        });
        assert!(!encode(&json_args, &mut BytesMut::new()));

        let base = serde_bytes(&frames()[0]);
        // Trailing bytes.
        let mut trailing = base.clone();
        trailing.push(0xc0);
        assert!(decode(&Bytes::from(trailing.clone())).is_none());
        assert!(decode_as(Codec::Msgpack, &trailing).is_err());
        // A repeated field, and an unknown one.
        let repeated = b"\x81\xa6cancel\x82\xa2id\x01\xa2id\x02";
        let unknown = b"\x81\xa6cancel\x82\xa2id\x01\xa1x\x02";
        for bytes in [&repeated[..], &unknown[..]] {
            assert!(decode(&Bytes::copy_from_slice(bytes)).is_none());
        }
        // Truncated at every length: never a frame, never a panic.
        for n in 0..base.len() {
            assert!(decode(&Bytes::copy_from_slice(&base[..n])).is_none());
        }
    }

    /// An array length the frame backs only with junk is not reserved up
    /// front: a megabyte of `nil`s claiming to be a million descriptors (40
    /// MB if reserved) is refused, and serde refuses it too.
    #[test]
    fn announced_lengths_are_not_reserved_up_front() {
        let n = 1usize << 20;
        let mut bytes = b"\x81\xa6result\x83\xa2id\x01\xa2ok\xc4\x01\xc0\xa4caps\xdd".to_vec();
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend_from_slice(&vec![0xc0u8; n]);
        assert!(decode(&Bytes::from(bytes.clone())).is_none());
        assert!(decode_as(Codec::Msgpack, &bytes).is_err());
    }
}
