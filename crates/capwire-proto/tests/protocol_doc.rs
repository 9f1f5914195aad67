//! Keeps `docs/protocol.md` true to the code.
//!
//! The document follows a few machine-readable conventions (its Appendix A
//! describes them for human readers):
//!
//! - A fenced block with info string `json` followed, with only blank lines in
//!   between, by a fenced block with info string `hex` is an example frame. The
//!   JSON must be the exact compact text the JSON encoder emits for the frame it
//!   decodes to, and the hex the exact MessagePack encoding of that frame; the
//!   hex must decode back to the same frame.
//! - Info string `hex length-prefixed` instead of `hex`: the hex is the
//!   MessagePack encoding preceded by its u32 big-endian length prefix.
//! - In hex blocks, whitespace is ignored and `#` starts a comment.
//! - A fenced block with info string `text decode-errors` holds one case per
//!   line, `INPUT => ERROR`: INPUT is a JSON frame, or `hex:` followed by
//!   bytes; ERROR is the exact text of the error `codec::decode` returns.
//! - The status table has one row per code starting `| n | `name` |`; the
//!   reason table one row per reason starting `| `reason` | `code` |`.
//!
//! Mismatches are collected and reported together, with the expected text or
//! hex, so a changed encoding can be fixed in the document in one pass.

use std::collections::BTreeSet;

use bytes::BytesMut;
use capwire_proto::framing::{self, Framing, FramingError};
use capwire_proto::*;

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");

fn doc() -> String {
    std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("cannot read {DOC_PATH}: {e}"))
}

/// A fenced code block of the document.
struct Block {
    info: String,
    body: String,
    /// 1-based line of the opening fence.
    open: usize,
    /// 1-based line of the closing fence.
    close: usize,
}

fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let open = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            body.push_str(lines[i]);
            body.push('\n');
            i += 1;
        }
        assert!(i < lines.len(), "unclosed code block at line {}", open + 1);
        out.push(Block {
            info: info.trim().to_owned(),
            body,
            open: open + 1,
            close: i + 1,
        });
        i += 1;
    }
    out
}

/// Parses hex with whitespace and `#` comments.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits: {digits}"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|e| format!("bad hex `{}`: {e}", &digits[i..i + 2]))
        })
        .collect()
}

/// Hex as the document writes it: 16 bytes a line, bytes separated by spaces.
fn pretty_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The frame with every payload transcoded to MessagePack, which is what a
/// MessagePack decoder produces.
fn with_msgpack_payloads(frame: Frame) -> Frame {
    let t = |p: Payload| p.transcode(Codec::Msgpack).expect("transcode payload");
    match frame {
        Frame::Call(mut call) => {
            call.args = t(call.args);
            Frame::Call(call)
        }
        Frame::Result(CallResult {
            id,
            outcome: Outcome::Ok { value, caps },
        }) => Frame::Result(CallResult {
            id,
            outcome: Outcome::Ok {
                value: t(value),
                caps,
            },
        }),
        Frame::Item(mut item) => {
            item.value = t(item.value);
            Frame::Item(item)
        }
        other => other,
    }
}

/// Checks one example pair; returns the op of the frame.
fn check_example(
    json_block: &Block,
    hex_block: &Block,
    errors: &mut Vec<String>,
) -> Option<&'static str> {
    let at = format!("docs/protocol.md:{}", json_block.open);
    let text = json_block.body.trim();
    let (frame, codec) = match codec::decode(text.as_bytes()) {
        Ok(decoded) => decoded,
        Err(e) => {
            errors.push(format!("{at}: example does not decode: {e}\n  {text}"));
            return None;
        }
    };
    if codec != Codec::Json {
        errors.push(format!("{at}: example is not JSON"));
        return None;
    }
    let json = String::from_utf8(codec::encode(&frame, Codec::Json).expect("encode JSON"))
        .expect("JSON is UTF-8");
    if json != text {
        errors.push(format!(
            "{at}: JSON is not in canonical form; the encoder emits\n  {json}"
        ));
    }

    let bin = codec::encode(&frame, Codec::Msgpack).expect("encode MessagePack");
    let (expected, what) = match hex_block.info.as_str() {
        "hex" => (bin.clone(), "MessagePack encoding"),
        "hex length-prefixed" => {
            let mut out = BytesMut::new();
            framing::encode_frame(
                Framing::LengthPrefixed,
                &bin,
                DEFAULT_MAX_FRAME_BYTES,
                &mut out,
            )
            .expect("frame fits");
            (out.to_vec(), "length-prefixed MessagePack encoding")
        }
        other => {
            errors.push(format!(
                "docs/protocol.md:{}: unknown hex block kind `{other}`",
                hex_block.open
            ));
            return None;
        }
    };
    match parse_hex(&hex_block.body) {
        Err(e) => errors.push(format!("docs/protocol.md:{}: {e}", hex_block.open)),
        Ok(given) if given != expected => errors.push(format!(
            "docs/protocol.md:{}: hex is not the {what} of the JSON above; expected\n{}",
            hex_block.open,
            pretty_hex(&expected)
        )),
        Ok(_) => {}
    }

    // The binary form decodes back to the same frame, and to the same JSON text.
    match codec::decode(&bin) {
        Ok((back, Codec::Msgpack)) => {
            if back != with_msgpack_payloads(frame.clone()) {
                errors.push(format!("{at}: MessagePack decodes to {back:?}"));
            }
            let again = codec::encode(&back, Codec::Json).expect("encode JSON");
            if again != text.as_bytes() {
                errors.push(format!(
                    "{at}: MessagePack form reads back as {}",
                    String::from_utf8_lossy(&again)
                ));
            }
        }
        Ok((_, c)) => errors.push(format!("{at}: MessagePack detected as {c}")),
        Err(e) => errors.push(format!("{at}: MessagePack form does not decode: {e}")),
    }
    Some(frame.op())
}

#[test]
fn examples_match_both_encodings_and_cover_every_op() {
    let doc = doc();
    let blocks = blocks(&doc);
    let lines: Vec<&str> = doc.lines().collect();
    let mut errors = Vec::new();
    let mut ops = BTreeSet::new();
    let mut paired_hex = BTreeSet::new();
    let mut examples = 0;

    for pair in blocks.windows(2) {
        let (json, hex) = (&pair[0], &pair[1]);
        let adjacent = lines[json.close..hex.open - 1]
            .iter()
            .all(|l| l.trim().is_empty());
        if json.info == "json" && hex.info.starts_with("hex") && adjacent {
            examples += 1;
            paired_hex.insert(hex.open);
            if let Some(op) = check_example(json, hex, &mut errors) {
                ops.insert(op);
            }
        }
    }
    for b in blocks.iter().filter(|b| b.info.starts_with("hex")) {
        if !paired_hex.contains(&b.open) {
            errors.push(format!(
                "docs/protocol.md:{}: hex block without a JSON block right before it",
                b.open
            ));
        }
    }
    for op in Frame::OPS {
        if !ops.contains(op) {
            errors.push(format!("no example of the `{op}` frame"));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {examples} examples checked, problems:\n\n{}",
        examples,
        errors.join("\n\n")
    );
}

#[test]
fn decode_error_texts_are_exact() {
    let doc = doc();
    let mut errors = Vec::new();
    let mut cases = 0;
    for block in blocks(&doc)
        .iter()
        .filter(|b| b.info == "text decode-errors")
    {
        for (n, line) in block.body.lines().enumerate() {
            let at = format!("docs/protocol.md:{}", block.open + 1 + n);
            if line.trim().is_empty() {
                continue;
            }
            let Some((input, want)) = line.split_once(" => ") else {
                errors.push(format!("{at}: expected `INPUT => ERROR`"));
                continue;
            };
            let bytes = match input.trim().strip_prefix("hex:") {
                Some(hex) => match parse_hex(hex) {
                    Ok(b) => b,
                    Err(e) => {
                        errors.push(format!("{at}: {e}"));
                        continue;
                    }
                },
                None => input.trim().as_bytes().to_vec(),
            };
            cases += 1;
            match codec::decode(&bytes) {
                Ok((frame, _)) => errors.push(format!("{at}: decodes fine: {frame:?}")),
                Err(e) if e.to_string() != want.trim() => {
                    errors.push(format!("{at}: the decoder says\n  {e}"))
                }
                Err(_) => {}
            }
        }
    }
    assert!(cases >= 10, "only {cases} decode-error cases found");
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn framing_texts_and_constants_match() {
    let doc = doc();
    let texts = [
        FramingError::TooLarge {
            len: 16_777_217,
            max: DEFAULT_MAX_FRAME_BYTES,
        }
        .to_string(),
        FramingError::Truncated { have: 7, need: 14 }.to_string(),
        FramingError::NewlineInFrame.to_string(),
        DecodeError::Empty.to_string(),
    ];
    for text in texts {
        assert!(
            doc.contains(&text),
            "docs/protocol.md does not quote `{text}`"
        );
    }
    assert_eq!(DEFAULT_MAX_FRAME_BYTES, 16 * 1024 * 1024);
    assert!(doc.contains("16 MiB") && doc.contains(&DEFAULT_MAX_FRAME_BYTES.to_string()));
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!((BOOTSTRAP_CAP, RUNTIME_CAP, FIRST_EXPORT_CAP), (0, 1, 2));
    assert_eq!(Hello::new().v, PROTOCOL_VERSION);
}

#[test]
fn status_and_reason_tables_are_complete() {
    let doc = doc();
    let mut errors = Vec::new();
    for code in Code::ALL {
        let row = format!("| {} | `{}` |", code.as_u8(), code.as_str());
        if !doc.lines().any(|l| l.starts_with(&row)) {
            errors.push(format!("no status table row starting `{row}`"));
        }
    }
    // Rows of the form `| n | `name` |` in section 6 only (section 1 has a table of ids).
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("6. "))
        .expect("docs/protocol.md has a section 6");
    let numbered_rows = section
        .lines()
        .filter(|l| {
            l.strip_prefix("| ")
                .and_then(|rest| rest.split_once(" | `"))
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .count();
    if numbered_rows != Code::ALL.len() {
        errors.push(format!(
            "the status table has {numbered_rows} rows, Code::ALL has {}",
            Code::ALL.len()
        ));
    }

    let reasons = [
        Reason::VERSION_MISMATCH,
        Reason::REVOKED,
        Reason::UNAUTHORIZED,
        Reason::NAME_COLLISION,
        Reason::RESERVED_NAMESPACE,
        Reason::MAX_CAPS_PER_CONNECTION,
        Reason::MAX_CONCURRENT_CALLS,
        Reason::MAX_FRAME_BYTES,
        Reason::MAX_VALUE_DEPTH,
        Reason::MAX_OPEN_STREAMS,
        Reason::MAX_PENDING_PIPELINED,
        Reason::PROTOCOL_VIOLATION,
    ];
    for reason in reasons {
        let prefix = format!("| `{reason}` | `");
        let row = doc.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        match row.and_then(|rest| rest.split_once('`')) {
            None => errors.push(format!("no reason table row starting `{prefix}`")),
            Some((code, _)) if Code::from_name(code).is_none() => {
                errors.push(format!("reason `{reason}` goes with unknown code `{code}`"))
            }
            Some(_) => {}
        }
    }
    // The helpers that build statuses agree with the table.
    let row_of = |reason: &Reason| {
        let prefix = format!("| `{reason}` | `");
        doc.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split_once('`'))
            .map(|(code, _)| code.to_owned())
    };
    for status in [
        Status::revoked("capability 5"),
        Status::protocol_violation("unknown op `bogus`"),
        Status::limit(Reason::MAX_FRAME_BYTES, 16),
        Status::limit(Reason::MAX_CONCURRENT_CALLS, 256),
    ] {
        let reason = status.reason.clone().expect("helpers set a reason");
        if row_of(&reason).as_deref() != Some(status.code.as_str()) {
            errors.push(format!(
                "the reason table does not pair `{reason}` with `{}`",
                status.code
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
