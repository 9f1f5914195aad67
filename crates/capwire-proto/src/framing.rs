//! Splitting byte streams into frames: u32 big-endian length prefixes,
//! newline-delimited JSON for stdio peers that speak it, or LSP-style
//! `Content-Length` header blocks.
//!
//! The size limit is checked against the announced (or accumulated) length
//! before any buffer grows to hold the frame, so a peer cannot make the
//! receiver allocate more than `max_frame_bytes` plus one read's worth.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Default largest frame, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// How frames are delimited on a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Each frame is preceded by its length as a big-endian `u32`.
    #[default]
    LengthPrefixed,
    /// Each frame is one line of JSON ending in `\n` (a trailing `\r` is ignored,
    /// blank lines are skipped). Only the JSON codec can be carried this way.
    Ndjson,
    /// Each frame is preceded by a header block as the Language Server
    /// Protocol frames its messages: `Content-Length: N\r\n`, other headers
    /// (ignored), an empty line, then `N` bytes.
    ContentLength,
}

/// A framing failure. After one, the stream is out of sync and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length (for ndjson: the bytes seen so far without a newline).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed mid-frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        have: usize,
        /// Bytes the frame needed (for ndjson: unknown, reported as `have + 1`).
        need: usize,
    },
    /// A `Content-Length` header block is malformed (no length, a length
    /// that is not a number, or a block over its size bound).
    #[error("bad Content-Length header block: {0}")]
    BadHeader(&'static str),
    /// An ndjson frame would contain a newline.
    #[error("a newline-delimited frame cannot contain a raw newline")]
    NewlineInFrame,
    /// Where a frame's length belongs there is text: the peer speaks
    /// another protocol (HTTP, a WebSocket handshake) or another framing
    /// (newline-delimited JSON). `hint` says which, and what to do.
    #[error("{hint} (the first bytes, {shown}, are not a frame length)")]
    NotAFrame {
        /// What the bytes look like, and what to do about it.
        hint: &'static str,
        /// The bytes, as text.
        shown: String,
    },
}

/// What four bytes that do not make a plausible length look like, if they
/// look like something: an HTTP request or response, or JSON text.
fn misframed(prefix: &[u8]) -> Option<&'static str> {
    const METHODS: [&[u8]; 9] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC",
    ];
    if METHODS.iter().any(|m| prefix.starts_with(m)) {
        return Some(
            "an HTTP request arrived where length-prefixed capwire/1 frames were expected: \
             this port speaks raw capwire/1 (use a tcp:// or unix:// client), and WebSocket \
             clients need the server's ws:// address",
        );
    }
    if matches!(prefix, [0x16, 3, ..]) {
        return Some(
            "a TLS handshake arrived on a plain port: this port speaks capwire/1 without TLS \
             (use tcp:// or unix://), or the server needs a certificate to serve tls://",
        );
    }
    if prefix.starts_with(b"HTTP") {
        return Some(
            "an HTTP response arrived where length-prefixed capwire/1 frames were expected: \
             the peer is an HTTP or WebSocket server (use its ws:// address)",
        );
    }
    match prefix.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => Some(
            "JSON text arrived where length-prefixed frames were expected: \
             newline-delimited input needs the ndjson framing (`--framing ndjson`), \
             and WebSocket or capnweb clients need the server's ws:// address",
        ),
        _ => None,
    }
}

/// Incremental frame splitter for one direction of a byte stream.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    framing: Framing,
    max_frame_bytes: usize,
    /// Ndjson: bytes already searched for a newline.
    scanned: usize,
}

impl FrameDecoder {
    /// A decoder with the given framing and limit.
    pub fn new(framing: Framing, max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder {
            framing,
            max_frame_bytes,
            scanned: 0,
        }
    }

    /// The framing this decoder splits.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The frame size limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Takes the next complete frame out of `buf`, if there is one.
    ///
    /// When the next frame is incomplete, `buf` may be grown to hold it (never
    /// past the limit) and `Ok(None)` is returned: read more and call again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        match self.framing {
            Framing::LengthPrefixed => self.decode_prefixed(buf),
            Framing::Ndjson => self.decode_line(buf),
            Framing::ContentLength => self.decode_headed(buf),
        }
    }

    /// Like [`decode`](Self::decode), at end of stream: leftover bytes are an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        match self.framing {
            _ if buf.is_empty() => Ok(None),
            // Text framings: trailing blank space is no frame.
            Framing::Ndjson | Framing::ContentLength
                if buf.iter().all(|b| b.is_ascii_whitespace()) =>
            {
                buf.clear();
                Ok(None)
            }
            Framing::Ndjson | Framing::ContentLength => Err(FramingError::Truncated {
                have: buf.len(),
                need: buf.len() + 1,
            }),
            Framing::LengthPrefixed => {
                let need = if buf.len() >= PREFIX_LEN {
                    PREFIX_LEN + prefix_len(buf)
                } else {
                    PREFIX_LEN
                };
                Err(FramingError::Truncated {
                    have: buf.len(),
                    need,
                })
            }
        }
    }

    fn decode_prefixed(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = prefix_len(buf);
        if len > self.max_frame_bytes {
            if let Some(hint) = misframed(&buf[..PREFIX_LEN]) {
                return Err(FramingError::NotAFrame {
                    hint,
                    shown: format!("{:?}", String::from_utf8_lossy(&buf[..PREFIX_LEN])),
                });
            }
            return Err(FramingError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = PREFIX_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(PREFIX_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }

    fn decode_line(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        loop {
            let start = self.scanned.min(buf.len());
            let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') else {
                self.scanned = buf.len();
                if buf.len() > self.max_frame_bytes {
                    return Err(FramingError::TooLarge {
                        len: buf.len(),
                        max: self.max_frame_bytes,
                    });
                }
                return Ok(None);
            };
            let end = start + pos;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max_frame_bytes {
                return Err(FramingError::TooLarge {
                    len: line.len(),
                    max: self.max_frame_bytes,
                });
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Ok(Some(line.freeze()));
        }
    }
}

/// Longest `Content-Length` header block accepted.
const MAX_HEADER_BLOCK: usize = 8 * 1024;

impl FrameDecoder {
    fn decode_headed(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        // Blank lines between messages are tolerated.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.advance(blank);
        let searched = buf.len().min(MAX_HEADER_BLOCK + 4);
        let Some(end) = buf[..searched].windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > MAX_HEADER_BLOCK {
                return Err(FramingError::BadHeader("header block over 8 KiB"));
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&buf[..end])
            .map_err(|_| FramingError::BadHeader("header block is not UTF-8"))?;
        let mut len = None;
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                return Err(FramingError::BadHeader("a header line without `:`"));
            };
            if name.trim().eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| FramingError::BadHeader("Content-Length is not a number"))?;
                len = Some(n);
            }
        }
        let len = len.ok_or(FramingError::BadHeader("no Content-Length header"))?;
        if len > self.max_frame_bytes {
            return Err(FramingError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = end + 4 + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(end + 4);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

fn prefix_len(buf: &[u8]) -> usize {
    let mut prefix = [0u8; PREFIX_LEN];
    prefix.copy_from_slice(&buf[..PREFIX_LEN]);
    // u32 always fits in usize on the 32- and 64-bit targets capwire supports.
    u32::from_be_bytes(prefix) as usize
}

/// Appends the length prefix of a frame of `len` bytes (length-prefixed
/// framing), for a writer that sends the frame's bytes from where they are.
pub fn encode_prefix(
    len: usize,
    max_frame_bytes: usize,
    out: &mut BytesMut,
) -> Result<(), FramingError> {
    let too_large = FramingError::TooLarge {
        len,
        max: max_frame_bytes,
    };
    if len > max_frame_bytes {
        return Err(too_large);
    }
    out.put_u32(u32::try_from(len).map_err(|_| too_large)?);
    Ok(())
}

/// Appends `frame` to `out` with the given framing.
///
/// Fails, leaving `out` unchanged, when the frame exceeds `max_frame_bytes`
/// (or `u32::MAX`), or when an ndjson frame contains a newline.
pub fn encode_frame(
    framing: Framing,
    frame: &[u8],
    max_frame_bytes: usize,
    out: &mut BytesMut,
) -> Result<(), FramingError> {
    let too_large = FramingError::TooLarge {
        len: frame.len(),
        max: max_frame_bytes,
    };
    if frame.len() > max_frame_bytes {
        return Err(too_large);
    }
    match framing {
        Framing::LengthPrefixed => {
            out.reserve(PREFIX_LEN + frame.len());
            encode_prefix(frame.len(), max_frame_bytes, out)?;
            out.put_slice(frame);
        }
        Framing::Ndjson => {
            if frame.contains(&b'\n') {
                return Err(FramingError::NewlineInFrame);
            }
            out.reserve(frame.len() + 1);
            out.put_slice(frame);
            out.put_u8(b'\n');
        }
        Framing::ContentLength => {
            let head = format!("Content-Length: {}\r\n\r\n", frame.len());
            out.reserve(head.len() + frame.len());
            out.put_slice(head.as_bytes());
            out.put_slice(frame);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(frames: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        for f in frames {
            encode_frame(Framing::LengthPrefixed, f, 1024, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn splits_prefixed_frames_fed_byte_by_byte() {
        let wire = prefixed(&[b"hello", b"", b"world!"]);
        let mut dec = FrameDecoder::new(Framing::LengthPrefixed, 1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        assert_eq!(dec.decode_eof(&mut buf), Ok(None));
    }

    #[test]
    fn content_length_frames_split_byte_by_byte_and_bad_heads_fail() {
        let mut wire = BytesMut::new();
        for f in [&b"{\"a\":1}"[..], b"", b"x\ny"] {
            encode_frame(Framing::ContentLength, f, 64, &mut wire).expect("encode");
        }
        // Another header is ignored; a blank line between messages is skipped.
        wire.put_slice(b"\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n[]");
        let mut dec = FrameDecoder::new(Framing::ContentLength, 64);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![&b"{\"a\":1}"[..], &b""[..], &b"x\ny"[..], &b"[]"[..]]
        );
        assert_eq!(dec.decode_eof(&mut buf), Ok(None));
        for (bad, want) in [
            (&b"Content-Length: x\r\n\r\n"[..], "not a number"),
            (b"Content-Type: a\r\n\r\n", "no Content-Length"),
            (b"nonsense\r\n\r\n", "without"),
        ] {
            let mut buf = BytesMut::from(bad);
            let err = dec.decode(&mut buf).expect_err("bad head");
            assert!(err.to_string().contains(want), "{err}");
        }
        let mut buf = BytesMut::from(&b"Content-Length: 65\r\n\r\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FramingError::TooLarge { len: 65, max: 64 })
        );
        let mut buf = BytesMut::from(&vec![b'a'; MAX_HEADER_BLOCK + 1][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FramingError::BadHeader(_))
        ));
        let mut buf = BytesMut::from(&b"Content-Length: 5\r\n\r\nab"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(matches!(
            dec.decode_eof(&mut buf),
            Err(FramingError::Truncated { .. })
        ));
    }

    #[test]
    fn frame_exactly_at_limit_passes_and_one_more_byte_fails() {
        let at = vec![7u8; 64];
        let mut dec = FrameDecoder::new(Framing::LengthPrefixed, 64);
        let mut buf = prefixed(&[&at]);
        assert_eq!(
            dec.decode(&mut buf).expect("at limit").as_deref(),
            Some(&at[..])
        );

        let over = vec![7u8; 65];
        let mut buf = prefixed(&[&over]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FramingError::TooLarge { len: 65, max: 64 })
        );
        let mut out = BytesMut::new();
        assert!(encode_frame(Framing::LengthPrefixed, &over, 64, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn huge_announced_length_is_rejected_before_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2][..]);
        let cap_before = buf.capacity();
        let mut dec = FrameDecoder::new(Framing::LengthPrefixed, DEFAULT_MAX_FRAME_BYTES);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FramingError::TooLarge { .. })
        ));
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let mut buf = prefixed(&[b"0123456789"]);
        buf.truncate(PREFIX_LEN + 3);
        let mut dec = FrameDecoder::new(Framing::LengthPrefixed, 1024);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(
            dec.decode_eof(&mut buf),
            Err(FramingError::Truncated { have: 7, need: 14 })
        );
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(
            dec.decode_eof(&mut buf),
            Err(FramingError::Truncated { have: 2, need: 4 })
        );
    }

    #[test]
    fn ndjson_lines_crlf_and_blank_lines() {
        let mut buf = BytesMut::from(&b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\""[..]);
        let mut dec = FrameDecoder::new(Framing::Ndjson, 1024);
        assert_eq!(
            dec.decode(&mut buf).expect("line").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(
            dec.decode(&mut buf).expect("line").as_deref(),
            Some(&b"{\"b\":2}"[..])
        );
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.put_slice(b":3}\n");
        assert_eq!(
            dec.decode(&mut buf).expect("line").as_deref(),
            Some(&b"{\"c\":3}"[..])
        );
        buf.put_slice(b"{\"d\"");
        assert!(matches!(
            dec.decode_eof(&mut buf),
            Err(FramingError::Truncated { .. })
        ));
    }

    #[test]
    fn ndjson_line_over_limit_without_newline_is_rejected() {
        let mut dec = FrameDecoder::new(Framing::Ndjson, 8);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FramingError::TooLarge { len: 10, max: 8 })
        );
        let mut out = BytesMut::new();
        assert_eq!(
            encode_frame(Framing::Ndjson, b"a\nb", 8, &mut out),
            Err(FramingError::NewlineInFrame)
        );
    }

    #[test]
    fn text_where_a_length_belongs_says_what_it_looks_like() {
        let mut d = FrameDecoder::new(Framing::LengthPrefixed, 1 << 24);
        for (input, needle) in [
            (&b"GET / HTTP/1.1\r\n"[..], "an HTTP request"),
            (&b"HTTP/1.1 400 Bad Request\r\n"[..], "an HTTP response"),
            (&b"{\"hello\":{\"v\":1}}\n"[..], "ndjson"),
            (&b"  [\"push\"]"[..], "ndjson"),
            (&[0x16, 3, 1, 2, 0, 1, 0, 1][..], "TLS handshake"),
        ] {
            let mut buf = BytesMut::from(input);
            match d.decode(&mut buf) {
                Err(FramingError::NotAFrame { hint, .. }) => {
                    assert!(hint.contains(needle), "{hint}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        // A plain oversize length is still `TooLarge`.
        let mut buf = BytesMut::from(&[0x7f, 0, 0, 0][..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FramingError::TooLarge { .. })
        ));
    }
}
