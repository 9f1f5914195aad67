//! Measuring how deeply an encoded value nests, without decoding it.

use crate::payload::Payload;

impl Payload {
    /// True when the value nests arrays and maps more than `limit` deep
    /// (a scalar has depth 0, `[1]` depth 1). Malformed input is left to the
    /// decoder to report and counts as not too deep.
    pub fn exceeds_depth(&self, limit: usize) -> bool {
        // Each level takes at least a byte, so a short value cannot be too
        // deep, and one that does not start with an array or a map is a
        // scalar: most payloads on the call path end here without a scan.
        if self.len() <= limit {
            return false;
        }
        match self {
            Payload::Msgpack(bytes)
                if !matches!(bytes.first(), Some(0x80..=0x9f | 0xdc..=0xdf)) =>
            {
                false
            }
            Payload::Json(raw)
                if !matches!(raw.get().trim_start().as_bytes().first(), Some(b'[' | b'{')) =>
            {
                false
            }
            Payload::Json(raw) => json_exceeds(raw.get().as_bytes(), limit),
            Payload::Msgpack(bytes) => msgpack_exceeds(bytes, limit),
        }
    }
}

/// True when JSON text nests arrays and objects more than `limit` deep,
/// found by scanning the bytes (no tree is built). Malformed text counts as
/// not too deep: the parser reports it.
pub fn json_exceeds_depth(text: &[u8], limit: usize) -> bool {
    json_exceeds(text, limit)
}

pub(crate) fn json_exceeds(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Some(head)
}

fn len_of(buf: &mut &[u8], width: usize) -> Option<u64> {
    let bytes = take(buf, width)?;
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn msgpack_exceeds(buf: &[u8], limit: usize) -> bool {
    matches!(msgpack_scan(buf, limit), Scan::TooDeep)
}

/// The length in bytes of the MessagePack value at the start of `buf`, or
/// `None` when it is malformed or truncated. Reads no more than the value and
/// allocates a word per level of nesting.
pub(crate) fn msgpack_value_len(buf: &[u8]) -> Option<usize> {
    match msgpack_scan(buf, usize::MAX) {
        Scan::Len(n) => Some(n),
        Scan::TooDeep | Scan::Malformed => None,
    }
}

enum Scan {
    /// The value ends after this many bytes.
    Len(usize),
    /// The value nests deeper than the limit.
    TooDeep,
    /// Malformed or truncated before the limit was reached.
    Malformed,
}

/// The values still to read at each level of nesting: the first levels in
/// place, deeper ones on the heap, so that a shallow value allocates nothing.
struct Levels {
    near: [u64; NEAR_LEVELS],
    len: usize,
    far: Vec<u64>,
}

const NEAR_LEVELS: usize = 16;

impl Levels {
    /// One value to read at the top level.
    fn new() -> Levels {
        let mut near = [0; NEAR_LEVELS];
        near[0] = 1;
        Levels {
            near,
            len: 1,
            far: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn last_mut(&mut self) -> Option<&mut u64> {
        match self.len {
            0 => None,
            n if n <= NEAR_LEVELS => Some(&mut self.near[n - 1]),
            _ => self.far.last_mut(),
        }
    }

    fn pop(&mut self) {
        if self.len > NEAR_LEVELS {
            self.far.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn push(&mut self, n: u64) {
        if self.len < NEAR_LEVELS {
            self.near[self.len] = n;
        } else {
            self.far.push(n);
        }
        self.len += 1;
    }
}

fn msgpack_scan(input: &[u8], limit: usize) -> Scan {
    let mut buf = input;
    // Each entry: values still to read at that level. Its length is the depth + 1.
    let mut pending = Levels::new();
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let Some(&marker) = buf.first() else {
            return Scan::Malformed;
        };
        buf = &buf[1..];
        let container = match marker {
            0x90..=0x9f => Some(u64::from(marker & 0x0f)),
            0x80..=0x8f => Some(2 * u64::from(marker & 0x0f)),
            0xdc => len_of(&mut buf, 2),
            0xdd => len_of(&mut buf, 4),
            0xde => len_of(&mut buf, 2).map(|n| 2 * n),
            0xdf => len_of(&mut buf, 4).map(|n| 2 * n),
            _ => {
                let skip = match marker {
                    0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(0),
                    0xa0..=0xbf => Some(u64::from(marker & 0x1f)),
                    0xcc | 0xd0 => Some(1),
                    0xcd | 0xd1 => Some(2),
                    0xce | 0xd2 | 0xca => Some(4),
                    0xcf | 0xd3 | 0xcb => Some(8),
                    0xd9 | 0xc4 => len_of(&mut buf, 1),
                    0xda | 0xc5 => len_of(&mut buf, 2),
                    0xdb | 0xc6 => len_of(&mut buf, 4),
                    0xd4 => Some(2),
                    0xd5 => Some(3),
                    0xd6 => Some(5),
                    0xd7 => Some(9),
                    0xd8 => Some(17),
                    0xc7 => len_of(&mut buf, 1).map(|n| n + 1),
                    0xc8 => len_of(&mut buf, 2).map(|n| n + 1),
                    0xc9 => len_of(&mut buf, 4).map(|n| n + 1),
                    _ => None, // 0xc1 is never used: malformed
                };
                match skip.and_then(|n| usize::try_from(n).ok()) {
                    Some(n) if take(&mut buf, n).is_some() => {}
                    _ => return Scan::Malformed,
                }
                None
            }
        };
        match container {
            Some(n) => {
                pending.push(n);
                if pending.len() - 1 > limit {
                    return Scan::TooDeep;
                }
            }
            // A container header cut short.
            None if matches!(marker, 0xdc..=0xdf) => return Scan::Malformed,
            None => {}
        }
    }
    Scan::Len(input.len() - buf.len())
}

#[cfg(test)]
mod tests {
    use crate::{Codec, Payload};
    use serde_json::json;

    fn nested(depth: usize) -> serde_json::Value {
        let mut v = json!("leaf \"[[[ ignored");
        for i in 0..depth {
            v = if i % 2 == 0 {
                json!([1, v])
            } else {
                json!({"k": v, "x": [] })
            };
        }
        v
    }

    #[test]
    fn depth_is_measured_the_same_in_both_codecs() {
        for codec in [Codec::Json, Codec::Msgpack] {
            for depth in [0usize, 1, 5, 64, 65] {
                let p = Payload::encode(codec, &nested(depth)).expect("encode");
                assert!(!p.exceeds_depth(depth), "{codec} depth {depth}");
                if depth > 0 {
                    assert!(p.exceeds_depth(depth - 1), "{codec} depth {depth}");
                }
            }
            let scalars = Payload::encode(
                codec,
                &json!([1.5, -3, 300, 70000, 5_000_000_000u64, "s", null, true, {"a": "b"}]),
            )
            .expect("encode");
            assert!(!scalars.exceeds_depth(2));
            assert!(scalars.exceeds_depth(1));
        }
    }

    #[test]
    fn truncated_or_malformed_input_is_not_reported_as_deep() {
        let p = Payload::Msgpack(bytes::Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff]));
        assert!(!p.exceeds_depth(4));
        let p = Payload::Msgpack(bytes::Bytes::from_static(&[0xc1, 0x91]));
        assert!(!p.exceeds_depth(0));
    }
}
