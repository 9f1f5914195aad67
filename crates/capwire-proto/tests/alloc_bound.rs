//! Decoding arbitrary bytes never panics, and never allocates on the word
//! of the input: lengths the input merely *claims* (MessagePack str/bin/
//! array/map headers, length prefixes) are trusted for allocation only up to
//! a fixed cap, whatever they say.
//!
//! A counting global allocator measures, per thread, the peak of live heap
//! bytes during one call. The bounds checked (all in bytes):
//!
//! * `codec::decode` of `len` bytes (`decode_bound`):
//!   `peak <= AMPLIFICATION * len + 2 * SERDE_PREALLOC_CAP + SLACK`
//!   = `4 * len + 2 MiB + 64 KiB`.
//!   - `SERDE_PREALLOC_CAP` (1 MiB) is serde's own cap on what a `Vec<T>`
//!     preallocates from a size hint (`size_hint::cautious`). rmp-serde
//!     passes the *claimed* array length as the hint, so an array header
//!     claiming 2^32-1 elements makes serde reserve 1 MiB before reading the
//!     first element. Frames nest at most two such vectors (`caps:
//!     Vec<CapDescriptor>` holding `path: Vec<PathSeg>`), hence 2 MiB: the
//!     73-byte frame `call.caps[0].path is array32` below reaches 2 MiB.
//!     Status `details` and payloads never preallocate.
//!   - `AMPLIFICATION` covers what is really present. Strings, payloads and
//!     status `details` are copied once, borrowed from the frame (no scratch
//!     buffer in between). `details` are kept encoded, not built into a
//!     `serde_json::Value` tree (which took ~315 bytes per input byte for
//!     nested one-entry maps, ~5 GiB for a 16 MiB frame): their re-encoding
//!     is never longer than the input, and the counter charges a growing
//!     `Vec`'s `realloc` as holding the old and the new block, so details
//!     peak at 3 bytes per byte (`hostile_details_decode_within_the_bound`).
//!   - Known gaps, where only `GAP_AMPLIFICATION * len + 2 MiB + SLACK`
//!     holds (`known_gaps_list_fields_and_error_messages`): list fields, whose
//!     element types are bigger than their shortest encoding (`PathSeg` and
//!     `String` take 24 bytes for a 1-byte MessagePack element, `u64` 8, and
//!     a growing `Vec` briefly holds 3 times its length), up to ~72 bytes per
//!     byte; and error messages that quote a mistyped string with its
//!     characters escaped (6 bytes for a 1-byte DEL), up to ~24. Closing them
//!     takes limits on list lengths (a protocol change) and bounded error
//!     texts. Below ~28 KiB of input the 2 MiB term covers them, so generated
//!     input (at most a few KiB) is checked against `decode_bound`.
//! * `Payload::to_json` builds a `serde_json::Value` tree, which is inherently
//!   bigger than its encoding (`tree_bound`: `320 * len + 2 MiB + 64 KiB`;
//!   measured worst ~315 bytes per byte, one-entry maps nested 2 bytes a
//!   level each becoming a 632-byte B-tree leaf node). Frame decoding never
//!   calls it.
//! * Crafted hostile frames: `peak <= n * SERDE_PREALLOC_CAP + ERROR_OVERHEAD`
//!   where `n` (0 to 2) is the number of `Vec` fields on the way to the claim.
//! * `FrameDecoder`: a prefix over the limit allocates under `ERROR_OVERHEAD`;
//!   a prefix at the limit reserves the frame (by design), at most
//!   `max + PREFIX_LEN + SLACK`.

// The workspace denies `unsafe_code`. The only unsafe here is the
// `GlobalAlloc` impl below, which is sound because every method forwards its
// arguments (same pointer, same layout, same new size) unchanged to
// `std::alloc::System`, which upholds the `GlobalAlloc` contract itself; the
// wrapper only adds bookkeeping in allocation-free `const` thread-locals
// (plain `Cell`s with no destructor), so it never re-enters the allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use capwire_proto::framing::PREFIX_LEN;
use capwire_proto::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// The counting allocator.

struct Counting;

thread_local! {
    /// Live bytes allocated minus freed by this thread (may go negative when
    /// the thread frees memory another thread allocated).
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    /// Highest `CURRENT` seen since the last [`measure`] started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: never panic inside the allocator, even during thread teardown.
    let _ = CURRENT.try_with(|c| {
        let now = c.get().saturating_add(size as isize);
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(size as isize)));
}

// SAFETY: see the comment on `#![allow(unsafe_code)]` at the top of the file:
// every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, forwarded to `System`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, forwarded to `System`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` came from `System` (through us); `new_size`
        // is passed on unchanged, with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Charged as "allocate the new block, then free the old one": a
            // moving realloc really holds both for a moment.
            note_alloc(new_size);
            note_free(layout.size());
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the peak number of heap bytes this
/// thread held during the call, above what it held when the call started.
/// Whatever `f` returns is still live at the end, so it is counted too.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - base).unwrap_or(0))
}

// ---------------------------------------------------------------------------
// Bounds.

/// serde's cap on preallocation from a size hint (`serde::__private::size_hint::cautious`).
const SERDE_PREALLOC_CAP: usize = 1024 * 1024;

/// Heap bytes a frame decode may hold per input byte (see the module docs).
///
/// Measured worst cases (`hostile_details_decode_within_the_bound`): 3.0 for
/// status details that end just past a power of two (their re-encoding
/// `Vec` growing), ~2 for the hostile nested one-entry maps, 1.0 for long
/// strings and payloads.
const AMPLIFICATION: usize = 4;

/// Heap bytes per input byte for the known gaps (see the module docs).
///
/// Measured worst case (`known_gaps_list_fields_and_error_messages`): ~72,
/// a `Vec<String>` of empty MessagePack strings (1 byte each, 24 bytes once
/// decoded) caught growing from 43 690 · 2^k to twice that.
const GAP_AMPLIFICATION: usize = 80;

/// Heap bytes per input byte of a `serde_json::Value` tree (`Payload::to_json`).
///
/// Measured worst case (`payload_to_json_amplification_is_inherent`): ~315
/// bytes per input byte, for one-entry maps nested 120 deep: `81 a0` (two
/// bytes) becomes a whole `BTreeMap<String, Value>` leaf node (632 bytes)
/// each level.
const TREE_AMPLIFICATION: usize = 320;

/// Fixed overhead: error messages, `Bytes` headers, small-vector minimum
/// capacities.
const SLACK: usize = 64 * 1024;

/// What a failed decode may allocate besides serde's preallocations: error
/// messages (a few hundred bytes measured).
const ERROR_OVERHEAD: usize = 4 * 1024;

/// The most a frame decode of `len` bytes may allocate.
fn decode_bound(len: usize) -> usize {
    AMPLIFICATION * len + 2 * SERDE_PREALLOC_CAP + SLACK
}

/// The most `Payload::to_json` of `len` bytes may allocate.
fn tree_bound(len: usize) -> usize {
    TREE_AMPLIFICATION * len + 2 * SERDE_PREALLOC_CAP + SLACK
}

/// `Err` with a description when `peak` is over `bound`.
fn check_bounded(what: &str, input: &[u8], peak: usize, bound: usize) -> Result<(), String> {
    if peak <= bound {
        return Ok(());
    }
    Err(format!(
        "{what}: decoding {} bytes allocated {peak} bytes at peak ({:.1} per byte), over the \
         bound {bound}; input starts {:02x?}",
        input.len(),
        peak as f64 / input.len().max(1) as f64,
        &input[..input.len().min(64)],
    ))
}

/// `Err` with a description when `peak` is over [`decode_bound`] for `input`.
fn check_decode_bounded(what: &str, input: &[u8], peak: usize) -> Result<(), String> {
    check_bounded(what, input, peak, decode_bound(input.len()))
}

#[track_caller]
fn assert_decode_bounded(what: &str, input: &[u8], peak: usize) {
    if let Err(e) = check_decode_bounded(what, input, peak) {
        panic!("{e}");
    }
}

#[track_caller]
fn assert_tree_bounded(what: &str, input: &[u8], peak: usize) {
    if let Err(e) = check_bounded(what, input, peak, tree_bound(input.len())) {
        panic!("{e}");
    }
}

/// Decodes `input` under measurement; panics are caught and reported with the input.
fn decode_measured(input: &[u8]) -> (Result<(Frame, Codec), DecodeError>, usize) {
    let caught = std::panic::catch_unwind(|| measure(|| codec::decode(input)));
    match caught {
        Ok(r) => r,
        Err(_) => panic!(
            "codec::decode panicked on {} bytes: {:02x?}",
            input.len(),
            input
        ),
    }
}

// ---------------------------------------------------------------------------
// MessagePack building blocks for crafted input.

/// A MessagePack string header + bytes (fixstr or str8).
fn mp_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else {
        assert!(len < 256);
        out.extend_from_slice(&[0xd9, len as u8]);
    }
    out.extend_from_slice(s.as_bytes());
}

/// A fixmap header of `n` entries.
fn mp_map(out: &mut Vec<u8>, n: u8) {
    assert!(n < 16);
    out.push(0x80 | n);
}

/// A 32-bit-length header (`marker` is dd array32, df map32, db str32,
/// c6 bin32, c9 ext32) claiming `u32::MAX` elements or bytes.
fn huge(marker: u8) -> [u8; 5] {
    [marker, 0xff, 0xff, 0xff, 0xff]
}

/// The header markers that claim a 2^32-1 length.
const HUGE_MARKERS: [(u8, &str); 5] = [
    (0xdd, "array32"),
    (0xdf, "map32"),
    (0xdb, "str32"),
    (0xc6, "bin32"),
    (0xc9, "ext32"),
];

/// `{op: <body prefix>}` in MessagePack.
fn mp_frame(op: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mp_map(&mut out, 1);
    mp_str(&mut out, op);
    out.extend_from_slice(body);
    out
}

/// A status map `{code: "internal", message: "", details: <tail>}`.
fn mp_status_with_details(tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mp_map(&mut out, 3);
    mp_str(&mut out, "code");
    mp_str(&mut out, "internal");
    mp_str(&mut out, "message");
    mp_str(&mut out, "");
    mp_str(&mut out, "details");
    out.extend_from_slice(tail);
    out
}

// ---------------------------------------------------------------------------
// Sanity: the counter works, so the assertions below can fail.

#[test]
fn counter_registers_a_deliberate_allocation() {
    const MIB: usize = 1024 * 1024;
    let (v, peak) = measure(|| black_box(vec![1u8; MIB]));
    assert!(peak >= MIB, "a 1 MiB Vec was counted as {peak} bytes");
    assert!(
        peak < MIB + SLACK,
        "a 1 MiB Vec was counted as {peak} bytes"
    );
    drop(v);

    // Freed before the end of the call: the peak still sees it.
    let ((), peak) = measure(|| drop(black_box(vec![1u8; MIB])));
    assert!(
        peak >= MIB,
        "a transient 1 MiB Vec was counted as {peak} bytes"
    );

    // Growth through realloc is counted.
    let (v, peak) = measure(|| {
        let mut v = black_box(Vec::<u8>::with_capacity(16));
        v.resize(MIB, 7);
        v
    });
    assert!(
        peak >= MIB,
        "a Vec grown to 1 MiB was counted as {peak} bytes"
    );
    drop(v);

    // Other threads' allocations are not charged to this thread.
    let (_, peak) = measure(|| {
        std::thread::spawn(|| drop(black_box(vec![1u8; 8 * MIB])))
            .join()
            .expect("thread")
    });
    assert!(
        peak < MIB,
        "another thread's 8 MiB were charged here: {peak}"
    );

    // And an allocation just over the bound would be reported.
    let len = 4096;
    let (v, peak) = measure(|| black_box(vec![0u8; decode_bound(len) + 1]));
    assert!(peak > decode_bound(len));
    assert!(
        check_decode_bounded("sanity", &[0; 4096], peak).is_err(),
        "the bound check accepted {peak} bytes"
    );
    drop(v);
}

// ---------------------------------------------------------------------------
// 1. Arbitrary input.

/// Valid frames of several shapes, encoded in both codecs, to mutate.
fn seed_frames() -> Vec<Vec<u8>> {
    let path = vec![PathSeg::Key("a".into()), PathSeg::Index(3)];
    let caps = vec![
        CapDescriptor::Export(2),
        CapDescriptor::Import(3),
        CapDescriptor::Answer {
            id: 4,
            path: path.clone(),
        },
    ];
    let details = serde_json::json!({"limit": 5, "list": [1, "two", null, {"x": []}]});
    let status = Status::new(Code::ResourceExhausted, "too much")
        .with_reason(Reason::MAX_FRAME_BYTES)
        .with_details(details.clone());
    let mut out = Vec::new();
    for codec in [Codec::Json, Codec::Msgpack] {
        let value = Payload::encode(codec, &details).expect("payload");
        let frames = vec![
            Frame::Hello(Hello {
                features: vec!["resume".into(), "x".into()],
                peer: Some("peer".into()),
                ..Hello::new()
            }),
            Frame::Call(Call {
                id: 1,
                target: Target::Answer {
                    id: 9,
                    path: path.clone(),
                },
                method: "method".into(),
                args: value.clone(),
                caps: caps.clone(),
                parent: Some(1),
                deadline_ms: Some(10),
                keep: true,
                stream: Some(4),
            }),
            Frame::Result(CallResult {
                id: 1,
                outcome: Outcome::Ok {
                    value: value.clone(),
                    caps: caps.clone(),
                },
            }),
            Frame::Result(CallResult {
                id: 1,
                outcome: Outcome::Err(status.clone()),
            }),
            Frame::Item(StreamItem {
                id: 1,
                value: value.clone(),
                caps: caps.clone(),
            }),
            Frame::StreamError(StreamError {
                id: 1,
                err: status.clone(),
            }),
            Frame::Revoked(Revoked {
                caps: vec![1, 2, 3],
            }),
            Frame::Goaway(Goaway {
                status: status.clone(),
                grace_ms: 5,
            }),
            Frame::Release(Release { cap: 2, n: 1 }),
            Frame::Ping(Ping { nonce: 7 }),
        ];
        for f in &frames {
            out.push(codec::encode(f, codec).expect("encode"));
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite one byte.
    Set(usize, u8),
    /// Insert a header claiming 2^32-1 elements/bytes.
    InsertHuge(usize, u8),
    /// Overwrite with a header claiming 2^32-1 elements/bytes.
    OverwriteHuge(usize, u8),
    /// Cut the input short.
    Truncate(usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let marker = prop::sample::select(HUGE_MARKERS.iter().map(|m| m.0).collect::<Vec<_>>());
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), marker.clone()).prop_map(|(i, m)| Mutation::InsertHuge(i, m)),
        (any::<usize>(), marker).prop_map(|(i, m)| Mutation::OverwriteHuge(i, m)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Set(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] = b;
                }
            }
            Mutation::InsertHuge(i, m) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, huge(m));
            }
            Mutation::OverwriteHuge(i, m) => {
                let at = i % n;
                let end = (at + 5).min(bytes.len());
                bytes.splice(at..end, huge(m));
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
        }
    }
    bytes
}

/// Field names (and a few code names) of capwire frames, so that generated
/// maps reach the fields' deserializers.
const NAMES: &[&str] = &[
    "id",
    "v",
    "features",
    "limits",
    "peer",
    "resume",
    "target",
    "method",
    "args",
    "caps",
    "parent",
    "deadline_ms",
    "keep",
    "stream",
    "ok",
    "err",
    "value",
    "code",
    "message",
    "reason",
    "details",
    "status",
    "grace_ms",
    "n",
    "cap",
    "nonce",
    "export",
    "import",
    "answer",
    "path",
    "max_frame_bytes",
    "internal",
    "cancelled",
];

/// The length a generated array or map header claims.
fn claim(real: usize, lie: u8) -> u32 {
    let real = real as u32;
    match lie % 8 {
        0 => u32::MAX,
        1 => real + 1,
        2 => real.saturating_add(0x1_0000),
        _ => real,
    }
}

/// MessagePack values built from frame vocabulary, whose array and map
/// headers sometimes claim more elements than follow.
fn arb_mp_value() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(vec![0xc0]),
        (0u8..0x80).prop_map(|b| vec![b]),
        Just(vec![0xc3]),
        prop::sample::select(NAMES.to_vec()).prop_map(|n| {
            let mut v = Vec::new();
            mp_str(&mut v, n);
            v
        }),
        Just(vec![0xc4, 0x01, 0xc0]),
        prop::sample::select(HUGE_MARKERS.iter().map(|m| m.0).collect::<Vec<_>>())
            .prop_map(|m| huge(m).to_vec()),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), any::<u8>()).prop_map(|(items, lie)| {
                let mut v = vec![0xdd];
                v.extend_from_slice(&claim(items.len(), lie).to_be_bytes());
                v.extend(items.concat());
                v
            }),
            (
                prop::collection::vec((prop::sample::select(NAMES.to_vec()), inner), 0..6),
                any::<u8>()
            )
                .prop_map(|(entries, lie)| {
                    let mut v = vec![0xdf];
                    v.extend_from_slice(&claim(entries.len(), lie).to_be_bytes());
                    for (k, val) in entries {
                        mp_str(&mut v, k);
                        v.extend(val);
                    }
                    v
                }),
        ]
    })
}

type Mp = BoxedStrategy<Vec<u8>>;

/// `ok`, or (one time in five) a huge length claim or an arbitrary value.
fn or_hostile(ok: Mp) -> Mp {
    prop_oneof![
        8 => ok,
        1 => prop::sample::select(HUGE_MARKERS.iter().map(|m| m.0).collect::<Vec<_>>())
            .prop_map(|m| huge(m).to_vec()),
        1 => arb_mp_value().boxed(),
    ]
    .boxed()
}

fn mp_int() -> Mp {
    or_hostile(
        prop_oneof![
            (0u8..0x80).prop_map(|b| vec![b]),
            any::<u64>().prop_map(|n| [&[0xcf][..], &n.to_be_bytes()[..]].concat()),
        ]
        .boxed(),
    )
}

fn mp_text() -> Mp {
    or_hostile(
        "[a-z_]{0,12}"
            .prop_map(|t| {
                let mut v = Vec::new();
                mp_str(&mut v, &t);
                v
            })
            .boxed(),
    )
}

/// A payload: a bin holding (possibly hostile) MessagePack.
fn mp_payload() -> Mp {
    or_hostile(
        arb_mp_value()
            .prop_map(|inner| {
                let mut v = vec![0xc6];
                v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
                v.extend(inner);
                v
            })
            .boxed(),
    )
}

/// An array of `elem`, whose header may lie about the length.
fn mp_list(elem: Mp) -> Mp {
    or_hostile(
        (prop::collection::vec(elem, 0..5), any::<u8>())
            .prop_map(|(items, lie)| {
                let mut v = vec![0xdd];
                v.extend_from_slice(&claim(items.len(), lie).to_be_bytes());
                v.extend(items.concat());
                v
            })
            .boxed(),
    )
}

/// A map with some of `fields`, in any order, whose header may lie.
fn mp_struct(fields: Vec<(&'static str, Mp)>) -> Mp {
    let entries: Vec<_> = fields
        .into_iter()
        .map(|(k, st)| (Just(k), st, prop::bool::weighted(0.8)))
        .collect();
    or_hostile(
        (entries.prop_shuffle(), any::<u8>())
            .prop_map(|(entries, lie)| {
                let present: Vec<_> = entries.into_iter().filter(|e| e.2).collect();
                let mut v = vec![0xdf];
                v.extend_from_slice(&claim(present.len(), lie).to_be_bytes());
                for (k, val, _) in present {
                    mp_str(&mut v, k);
                    v.extend(val);
                }
                v
            })
            .boxed(),
    )
}

fn mp_ref() -> Mp {
    let path = mp_list(prop_oneof![mp_int(), mp_text()].boxed());
    mp_struct(vec![
        ("cap", mp_int()),
        ("export", mp_int()),
        ("import", mp_int()),
        ("answer", mp_int()),
        ("path", path),
    ])
}

fn mp_status() -> Mp {
    let code = prop::sample::select(vec!["ok", "internal", "cancelled", "bogus"])
        .prop_map(|c| {
            let mut v = Vec::new();
            mp_str(&mut v, c);
            v
        })
        .boxed();
    mp_struct(vec![
        ("code", or_hostile(code)),
        ("message", mp_text()),
        ("reason", mp_text()),
        ("details", arb_mp_value().boxed()),
    ])
}

/// `{op: body}` where the body follows the op's schema, any part of which
/// may be missing, mistyped, or claim a huge length.
fn arb_mp_frame() -> impl Strategy<Value = Vec<u8>> {
    let caps = || mp_list(mp_ref());
    let bodies: Vec<(&str, Mp)> = vec![
        (
            "hello",
            mp_struct(vec![
                ("v", mp_int()),
                ("features", mp_list(mp_text())),
                (
                    "limits",
                    mp_struct(vec![("max_frame_bytes", mp_int()), ("max_depth", mp_int())]),
                ),
                ("peer", mp_text()),
                ("resume", mp_text()),
            ]),
        ),
        (
            "call",
            mp_struct(vec![
                ("id", mp_int()),
                ("target", mp_ref()),
                ("method", mp_text()),
                ("args", mp_payload()),
                ("caps", caps()),
                ("parent", mp_int()),
                ("stream", mp_int()),
            ]),
        ),
        (
            "result",
            mp_struct(vec![
                ("id", mp_int()),
                ("ok", mp_payload()),
                ("caps", caps()),
                ("err", mp_status()),
            ]),
        ),
        (
            "item",
            mp_struct(vec![
                ("id", mp_int()),
                ("value", mp_payload()),
                ("caps", caps()),
            ]),
        ),
        (
            "stream_error",
            mp_struct(vec![("id", mp_int()), ("err", mp_status())]),
        ),
        ("revoked", mp_struct(vec![("caps", mp_list(mp_int()))])),
        (
            "goaway",
            mp_struct(vec![("status", mp_status()), ("grace_ms", mp_int())]),
        ),
        (
            "release",
            mp_struct(vec![("cap", mp_int()), ("n", mp_int())]),
        ),
        ("ping", mp_struct(vec![("nonce", mp_int())])),
    ];
    let bodies = bodies
        .into_iter()
        .map(|(op, body)| body.prop_map(move |b| mp_frame(op, &b)).boxed())
        .collect::<Vec<_>>();
    proptest::strategy::Union::new(bodies)
}

fn arb_input() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seed_frames();
    prop_oneof![
        // Anything at all (almost always rejected at the first byte or two).
        1 => prop::collection::vec(any::<u8>(), 0..4096),
        // A valid op name, then arbitrary body bytes.
        1 => (
            prop::sample::select(Frame::OPS.to_vec()),
            prop::collection::vec(any::<u8>(), 0..4096)
        )
            .prop_map(|(op, body)| mp_frame(op, &body)),
        // A valid op name, then a status, then arbitrary details.
        1 => (
            prop::sample::select(vec!["result", "stream_error", "goaway"]),
            prop::collection::vec(any::<u8>(), 0..4096)
        )
            .prop_map(|(op, tail)| {
                let mut body = Vec::new();
                mp_map(&mut body, 2);
                mp_str(&mut body, "id");
                body.push(1);
                mp_str(&mut body, if op == "goaway" { "status" } else { "err" });
                body.extend(mp_status_with_details(&tail));
                mp_frame(op, &body)
            }),
        // JSON-looking input.
        1 => (
            prop::sample::select(Frame::OPS.to_vec()),
            prop::collection::vec(
                prop::sample::select(b"{}[]\",:0123456789.eE-+ntrufalsecapsid\\".to_vec()),
                0..4096
            )
        )
            .prop_map(|(op, body)| {
                let mut out = format!("{{\"{op}\":").into_bytes();
                out.extend(body);
                out
            }),
        // Frames following the schema, any part of which may be hostile.
        4 => arb_mp_frame().boxed(),
        // Valid frames, damaged.
        2 => (
            prop::sample::select(seeds),
            prop::collection::vec(arb_mutation(), 1..4)
        )
            .prop_map(|(seed, muts)| mutate(seed, &muts)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        // Only this file may be added to the repository: no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Generated frames are at most a few KiB, so `decode_bound` holds even
    /// for the known gaps (see the module docs).
    #[test]
    fn decode_of_arbitrary_bytes_is_bounded(input in arb_input()) {
        let (result, peak) = decode_measured(&input);
        drop(result);
        assert_decode_bounded("arbitrary input", &input, peak);
    }

    #[test]
    fn payload_to_json_of_arbitrary_bytes_is_bounded(
        input in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..4096),
            (prop::sample::select(HUGE_MARKERS.iter().map(|m| m.0).collect::<Vec<_>>()),
             prop::collection::vec(any::<u8>(), 0..4096))
                .prop_map(|(m, tail)| { let mut v = huge(m).to_vec(); v.extend(tail); v }),
        ]
    ) {
        let payload = Payload::Msgpack(Bytes::from(input.clone()));
        let caught = std::panic::catch_unwind(|| measure(|| payload.to_json()));
        let Ok((result, peak)) = caught else {
            panic!("Payload::to_json panicked on {:02x?}", input);
        };
        drop(result);
        assert_tree_bounded("payload to_json", &input, peak);
    }
}

// ---------------------------------------------------------------------------
// 2. Crafted hostile frames.

/// One crafted hostile frame.
struct Hostile {
    name: String,
    input: Vec<u8>,
    /// How many `Vec` fields on the way to the claim get a serde preallocation
    /// from a claimed length (each at most [`SERDE_PREALLOC_CAP`]).
    prealloc_vecs: usize,
}

/// Hostile MessagePack frames: each claims a 2^32-1 length somewhere with
/// only a few bytes present.
fn hostile_frames() -> Vec<Hostile> {
    let mut out = Vec::new();
    let mut push = |name: String, input: Vec<u8>, prealloc_vecs: usize| {
        out.push(Hostile {
            name,
            input,
            prealloc_vecs,
        })
    };
    for (marker, kind) in HUGE_MARKERS {
        let h = huge(marker);
        let tail = [&h[..], &[0xc0, 0x01, 0x02][..]].concat();
        // A claimed array where the frame has a `Vec<T>` field.
        let seq = usize::from(marker == 0xdd);

        // The frame map itself, and the op name.
        push(
            format!("frame map is {kind}"),
            [&h[..], b"\xa4ping"].concat(),
            0,
        );
        push(
            format!("op name is {kind}"),
            [&[0x81][..], &h[..], b"ping"].concat(),
            0,
        );

        // The op body.
        for op in Frame::OPS {
            push(format!("{op} body is {kind}"), mp_frame(op, &tail), 0);
        }

        // Fields that are strings, vectors, payloads, statuses.
        let field = |op: &str, prefix: &[(&str, &[u8])], name: &str| {
            let mut body = Vec::new();
            mp_map(&mut body, prefix.len() as u8 + 1);
            for (k, v) in prefix {
                mp_str(&mut body, k);
                body.extend_from_slice(v);
            }
            mp_str(&mut body, name);
            body.extend_from_slice(&tail);
            (format!("{op}.{name} is {kind}"), mp_frame(op, &body))
        };
        let cap2: &[u8] = b"\x81\xa3cap\x02";
        let bin_nil: &[u8] = b"\xc4\x01\xc0";
        let cases = [
            (field("hello", &[("v", &[1])], "features"), seq),
            (field("hello", &[("v", &[1])], "peer"), 0),
            (field("hello", &[("v", &[1])], "resume"), 0),
            (field("hello", &[("v", &[1])], "limits"), 0),
            (field("call", &[("id", &[1])], "target"), 0),
            (
                field("call", &[("id", &[1]), ("target", cap2)], "method"),
                0,
            ),
            (
                field(
                    "call",
                    &[("id", &[1]), ("target", cap2), ("method", b"\xa1m")],
                    "args",
                ),
                0,
            ),
            (
                field(
                    "call",
                    &[
                        ("id", &[1]),
                        ("target", cap2),
                        ("method", b"\xa1m"),
                        ("args", bin_nil),
                    ],
                    "caps",
                ),
                seq,
            ),
            (field("result", &[("id", &[1])], "ok"), 0),
            (
                field("result", &[("id", &[1]), ("ok", bin_nil)], "caps"),
                seq,
            ),
            (field("result", &[("id", &[1])], "err"), 0),
            (field("item", &[("id", &[1])], "value"), 0),
            (
                field("item", &[("id", &[1]), ("value", bin_nil)], "caps"),
                seq,
            ),
            (field("stream_error", &[("id", &[1])], "err"), 0),
            (field("revoked", &[], "caps"), seq),
            (field("goaway", &[], "status"), 0),
        ];
        for ((name, input), vecs) in cases {
            push(name, input, vecs);
        }

        // Paths: in the target, and in a capability descriptor inside caps
        // (two nested vectors: caps claims 2^16 elements, its first path the huge length).
        let mut target = Vec::new();
        mp_map(&mut target, 2);
        mp_str(&mut target, "answer");
        target.push(1);
        mp_str(&mut target, "path");
        target.extend_from_slice(&tail);
        let mut body = Vec::new();
        mp_map(&mut body, 4);
        mp_str(&mut body, "id");
        body.push(1);
        mp_str(&mut body, "method");
        mp_str(&mut body, "m");
        mp_str(&mut body, "args");
        body.extend_from_slice(bin_nil);
        mp_str(&mut body, "target");
        body.extend_from_slice(&target);
        push(
            format!("call.target.path is {kind}"),
            mp_frame("call", &body),
            seq,
        );

        let mut body = Vec::new();
        mp_map(&mut body, 5);
        mp_str(&mut body, "id");
        body.push(1);
        mp_str(&mut body, "method");
        mp_str(&mut body, "m");
        mp_str(&mut body, "args");
        body.extend_from_slice(bin_nil);
        mp_str(&mut body, "target");
        body.extend_from_slice(cap2);
        mp_str(&mut body, "caps");
        body.extend_from_slice(&[0xdd, 0x00, 0x01, 0x00, 0x00]);
        body.extend_from_slice(&target);
        push(
            format!("call.caps[0].path is {kind}"),
            mp_frame("call", &body),
            1 + seq,
        );

        // Status details (re-encoded as they are read, which never
        // preallocates), in all three ops that carry a status.
        for (op, key) in [
            ("result", "err"),
            ("stream_error", "err"),
            ("goaway", "status"),
        ] {
            let status = |details: &[u8]| {
                let mut body = Vec::new();
                mp_map(&mut body, 2);
                mp_str(&mut body, "id");
                body.push(1);
                mp_str(&mut body, key);
                body.extend(mp_status_with_details(details));
                mp_frame(op, &body)
            };
            push(format!("{op}.{key}.details is {kind}"), status(&tail), 0);
            // Nested: details is an array claiming 2^32-1 elements, whose
            // first element is again a huge claim, 40 levels deep.
            let mut nested = Vec::new();
            for _ in 0..40 {
                nested.extend_from_slice(&huge(0xdd));
            }
            nested.extend_from_slice(&h);
            push(
                format!("{op}.{key}.details is 40 x array32 then {kind}"),
                status(&nested),
                0,
            );
            // A map claiming 2^32-1 entries whose first value is the claim.
            let map_then = [&huge(0xdf)[..], b"\xa1k", &h[..]].concat();
            push(
                format!("{op}.{key}.details is map32 {{k: {kind}}}"),
                status(&map_then),
                0,
            );
        }
    }
    out
}

#[test]
fn hostile_length_claims_fail_within_the_bound() {
    let mut worst = (0usize, String::new());
    for Hostile {
        name,
        input,
        prealloc_vecs,
    } in hostile_frames()
    {
        let (result, peak) = decode_measured(&input);
        assert!(
            result.is_err(),
            "{name}: {:02x?} decoded as {result:?}",
            input
        );
        drop(result);
        assert_decode_bounded(&name, &input, peak);
        // Tighter: nothing but serde's capped preallocations and small change.
        let tight = prealloc_vecs * SERDE_PREALLOC_CAP + ERROR_OVERHEAD;
        assert!(
            peak <= tight,
            "{name}: {peak} bytes allocated for a {}-byte frame, expected at most {tight} \
             ({prealloc_vecs} capped preallocations); input {:02x?}",
            input.len(),
            input
        );
        if peak > worst.0 {
            worst = (peak, name);
        }
    }
    // Measured worst case: `call.caps[0].path is array32`, two nested vectors
    // each preallocated by serde to its 1 MiB cap, for a 73-byte frame.
    eprintln!("worst hostile frame: {} bytes for {}", worst.0, worst.1);
}

#[test]
fn hostile_json_frames_fail_within_the_bound() {
    let inputs: Vec<&[u8]> = vec![
        b"{\"hello\":{\"v\":1,\"features\":[",
        b"{\"revoked\":{\"caps\":[1,2,3,",
        b"{\"result\":{\"id\":1,\"err\":{\"code\":\"internal\",\"details\":[[[[[[[[",
        b"{\"result\":{\"id\":1,\"ok\":\"",
        b"{\"call\":{\"id\":1,\"target\":{\"answer\":1,\"path\":[\"",
        b"{\"goaway\":{\"status\":{\"code\":\"ok\",\"message\":\"\\u",
    ];
    for input in inputs {
        let (result, peak) = decode_measured(input);
        assert!(
            result.is_err(),
            "{:?} decoded",
            String::from_utf8_lossy(input)
        );
        drop(result);
        assert_decode_bounded("hostile json", input, peak);
    }
}

// ---------------------------------------------------------------------------
// 3. Length-prefixed framing.

#[test]
fn prefix_over_the_limit_is_refused_without_allocating() {
    let max = DEFAULT_MAX_FRAME_BYTES;
    for announced in [u32::MAX, (max + 1) as u32] {
        let mut buf = BytesMut::new();
        buf.put_u32(announced);
        buf.put_slice(b"\x81\xa4ping");
        let mut dec = FrameDecoder::new(Framing::LengthPrefixed, max);
        let (result, peak) = measure(|| dec.decode(&mut buf));
        assert_eq!(
            result,
            Err(FramingError::TooLarge {
                len: announced as usize,
                max
            })
        );
        assert!(
            peak <= ERROR_OVERHEAD,
            "refusing a {announced}-byte prefix allocated {peak} bytes"
        );
    }
}

#[test]
fn prefix_at_the_limit_reserves_at_most_the_limit() {
    let max = DEFAULT_MAX_FRAME_BYTES;
    let mut buf = BytesMut::new();
    buf.put_u32(max as u32);
    buf.put_slice(b"\x81\xa4ping\x81");
    let mut dec = FrameDecoder::new(Framing::LengthPrefixed, max);
    let (result, peak) = measure(|| dec.decode(&mut buf));
    assert_eq!(result, Ok(None));
    assert!(
        peak <= max + PREFIX_LEN + SLACK,
        "waiting for a {max}-byte frame allocated {peak} bytes"
    );
    // Feeding the rest in chunks does not grow the buffer further.
    let chunk = vec![0u8; 64 * 1024];
    let ((), peak) = measure(|| {
        while buf.len() < PREFIX_LEN + max - chunk.len() {
            buf.put_slice(&chunk);
            assert_eq!(dec.decode(&mut buf), Ok(None));
        }
    });
    assert!(
        peak <= ERROR_OVERHEAD,
        "filling the reserved buffer allocated {peak} bytes"
    );
}

#[test]
fn small_limits_bound_the_reservation() {
    for max in [0usize, 1, 100, 4096, 1 << 20] {
        for announced in [max, max + 1, u32::MAX as usize] {
            let mut buf = BytesMut::new();
            buf.put_u32(announced as u32);
            buf.put_u8(0x81);
            let mut dec = FrameDecoder::new(Framing::LengthPrefixed, max);
            let (result, peak) = measure(|| dec.decode(&mut buf));
            if announced > max {
                assert!(
                    matches!(result, Err(FramingError::TooLarge { .. })),
                    "{result:?}"
                );
                assert!(peak <= ERROR_OVERHEAD, "max {max}: allocated {peak} bytes");
            } else {
                assert!(result.is_ok(), "{result:?}");
            }
            assert!(
                peak <= max + PREFIX_LEN + SLACK,
                "max {max}, announced {announced}: allocated {peak} bytes"
            );
        }
    }
}

#[test]
fn ndjson_without_newline_is_refused_without_allocating() {
    let max = 4096;
    let mut buf = BytesMut::from(&vec![b'x'; max + 1][..]);
    let mut dec = FrameDecoder::new(Framing::Ndjson, max);
    let (result, peak) = measure(|| dec.decode(&mut buf));
    assert_eq!(result, Err(FramingError::TooLarge { len: max + 1, max }));
    assert!(peak <= ERROR_OVERHEAD, "allocated {peak} bytes");
}

// ---------------------------------------------------------------------------
// 4. Payload::to_json on hostile payloads.

#[test]
fn payload_to_json_of_hostile_claims_is_bounded() {
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for (marker, kind) in HUGE_MARKERS {
        let h = huge(marker);
        inputs.push((kind.into(), h.to_vec()));
        inputs.push((format!("{kind} + nil"), [&h[..], &[0xc0][..]].concat()));
        inputs.push((
            format!("array32 of {kind}"),
            [&huge(0xdd)[..], &h[..]].concat(),
        ));
        inputs.push((
            format!("map32 key {kind}"),
            [&huge(0xdf)[..], &h[..]].concat(),
        ));
        inputs.push((
            format!("map32 value {kind}"),
            [&huge(0xdf)[..], b"\xa1k", &h[..]].concat(),
        ));
        let mut nested = Vec::new();
        for _ in 0..100 {
            nested.extend_from_slice(&huge(0xdd));
        }
        nested.extend_from_slice(&h);
        inputs.push((format!("100 x array32 then {kind}"), nested));
    }
    for (name, input) in inputs {
        let payload = Payload::Msgpack(Bytes::from(input.clone()));
        let (result, peak) = measure(|| payload.to_json());
        assert!(result.is_err(), "{name}: decoded as {result:?}");
        drop(result);
        assert_tree_bounded(&name, &input, peak);
        // Tighter: `serde_json::Value` never preallocates from a claimed length.
        assert!(
            peak <= ERROR_OVERHEAD,
            "{name}: {peak} bytes allocated for a {}-byte payload",
            input.len()
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Calibration: the densest structure we know of, at sizes up to the frame limit.

/// An array of `chains` chains of one-entry maps `{"": {"": ... nil}}`
/// nested `levels_per_chain` deep: two bytes a level. Decoded into
/// `serde_json::Value` each level is a whole B-tree leaf node (632 bytes), the
/// worst found; status details used to be decoded so.
fn dense_details(levels_per_chain: usize, chains: u16) -> Vec<u8> {
    let mut tail = vec![0xdc];
    tail.extend_from_slice(&chains.to_be_bytes());
    for _ in 0..chains {
        for _ in 0..levels_per_chain {
            tail.extend_from_slice(&[0x81, 0xa0]);
        }
        tail.push(0xc0);
    }
    tail
}

/// An array32 header claiming exactly `n` elements.
fn array32(n: usize) -> Vec<u8> {
    let mut v = vec![0xdd];
    v.extend_from_slice(&u32::try_from(n).expect("fits u32").to_be_bytes());
    v
}

/// A MessagePack `str32` holding `bytes`.
fn mp_str32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(0xdb);
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("fits u32").to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A MessagePack `result` frame whose error status has `details`.
fn mp_result_with_details(details: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mp_map(&mut body, 2);
    mp_str(&mut body, "id");
    body.push(1);
    mp_str(&mut body, "err");
    body.extend(mp_status_with_details(details));
    mp_frame("result", &body)
}

/// A JSON `result` frame whose error status has `details`.
fn json_result_with_details(details: &str) -> Vec<u8> {
    format!(r#"{{"result":{{"id":1,"err":{{"code":"internal","details":{details}}}}}}}"#)
        .into_bytes()
}

/// Decodes the frame `input` (which claims nothing it does not contain, so
/// serde's capped preallocations do not apply) and returns the peak per byte
/// after checking it against `factor * len + SLACK`.
fn check_frame_amplification(name: &str, input: &[u8], factor: usize) -> f64 {
    let (result, peak) = decode_measured(input);
    let per_byte = peak as f64 / input.len() as f64;
    eprintln!(
        "{name}: {} bytes -> {peak} bytes ({per_byte:.2}x), {}",
        input.len(),
        if result.is_ok() { "decoded" } else { "refused" }
    );
    drop(result);
    if let Err(e) = check_bounded(name, input, peak, factor * input.len() + SLACK) {
        panic!("{e}");
    }
    per_byte
}

/// The hostile frame of the finding: status details made of thousands of
/// chains of nested one-entry maps (`81 a0 81 a0 ... c0`), and every other
/// shape of details or value found dense, in both codecs, up to the 16 MiB
/// frame limit. All stay within `AMPLIFICATION * len + SLACK`.
#[test]
fn hostile_details_decode_within_the_bound() {
    const MIB: usize = 1024 * 1024;
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    let mut details = |name: &str, d: Vec<u8>| {
        frames.push((
            format!("msgpack result.err.details = {name}"),
            mp_result_with_details(&d),
        ))
    };
    details("4096 nils", [&array32(4096)[..], &[0xc0; 4096]].concat());
    // One element past a power of two: the re-encoding `Vec` has just doubled.
    details("65537 nils", [&array32(65537)[..], &[0xc0; 65537]].concat());
    details(
        "2048 x [[]]",
        [&array32(2048)[..], &[0x91, 0x90].repeat(2048)].concat(),
    );
    details("32 x fixarray(1) nested 120 deep", {
        let mut v = array32(32);
        for _ in 0..32 {
            v.extend(std::iter::repeat(0x91).take(120));
            v.push(0xc0);
        }
        v
    });
    details("32 x {\"\": ...} nested 120 deep", dense_details(120, 32));
    details("1000 x {\"\": nil}", dense_details(1, 1000));
    details(
        "4000 x {\"\": ...} nested 120 deep",
        dense_details(120, 4000),
    );
    // The largest such frame under the 16 MiB limit: ~5 GiB when details
    // were decoded into a `serde_json::Value`.
    details(
        "65535 x {\"\": ...} nested 120 deep",
        dense_details(120, u16::MAX),
    );
    details("a 1 MiB string", {
        let mut v = Vec::new();
        mp_str32(&mut v, &vec![b'y'; MIB]);
        v
    });
    details("[1 MiB string, 16384 x {\"\": nil}]", {
        let mut v = array32(1 + 16384);
        mp_str32(&mut v, &vec![b'y'; MIB]);
        v.extend([0x81, 0xa0, 0xc0].repeat(16384));
        v
    });

    // The same shapes in JSON (serde_json stops at 128 levels, the frame uses 4).
    let chain = "{\"\":".repeat(100) + "null" + &"}".repeat(100);
    for chains in [32, 16_000] {
        frames.push((
            format!("json result.err.details = {chains} x {{\"\": ...}} nested 100 deep"),
            json_result_with_details(&format!("[{}]", vec![chain.as_str(); chains].join(","))),
        ));
    }
    frames.push((
        "json result.err.details = a string of 2^19 escapes".into(),
        json_result_with_details(&format!("\"{}\"", "\\n".repeat(MIB / 2))),
    ));

    // Other values: strings and payloads are copied once.
    let mut body = Vec::new();
    mp_map(&mut body, 2);
    mp_str(&mut body, "v");
    body.push(1);
    mp_str(&mut body, "peer");
    mp_str32(&mut body, &vec![b'x'; MIB]);
    frames.push((
        "msgpack hello.peer = 1 MiB".into(),
        mp_frame("hello", &body),
    ));
    let args = Payload::Msgpack(Bytes::from(vec![0xc0; MIB]));
    let call = |args: Payload| {
        Frame::Call(Call {
            id: 1,
            target: Target::Cap(2),
            method: "m".into(),
            args,
            caps: vec![],
            parent: None,
            deadline_ms: None,
            keep: false,
            stream: None,
        })
    };
    frames.push((
        "msgpack call.args = 1 MiB bin".into(),
        codec::encode(&call(args), Codec::Msgpack).expect("encode"),
    ));
    let args = Payload::encode(Codec::Json, &vec![0u8; MIB / 2]).expect("payload");
    frames.push((
        "json call.args = [0,0,...] 1 MiB".into(),
        codec::encode(&call(args), Codec::Json).expect("encode"),
    ));

    let mut worst = (0.0f64, String::new());
    for (name, input) in frames {
        let per_byte = check_frame_amplification(&name, &input, AMPLIFICATION);
        if per_byte > worst.0 {
            worst = (per_byte, name);
        }
    }
    eprintln!("worst: {:.2} bytes per input byte for {}", worst.0, worst.1);
}

/// `Payload::to_json` builds a tree: amplification is inherent there
/// (documented on the method), and bounded by `TREE_AMPLIFICATION`.
#[test]
fn payload_to_json_amplification_is_inherent() {
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("4096 nils", [&array32(4096)[..], &[0xc0; 4096]].concat()),
        (
            "2048 x [[]]",
            [&array32(2048)[..], &[0x91, 0x90].repeat(2048)].concat(),
        ),
        ("32 x {\"\": ...} nested 120 deep", dense_details(120, 32)),
        ("1000 x {\"\": nil}", dense_details(1, 1000)),
    ];
    for (name, input) in shapes {
        let payload = Payload::Msgpack(Bytes::from(input.clone()));
        let (result, peak) = measure(|| payload.to_json());
        assert!(result.is_ok(), "{name}: {result:?}");
        drop(result);
        eprintln!(
            "payload {name}: {} bytes -> {peak} bytes ({:.1}x)",
            input.len(),
            peak as f64 / input.len() as f64
        );
        if let Err(e) = check_bounded(name, &input, peak, TREE_AMPLIFICATION * input.len() + SLACK)
        {
            panic!("{e}");
        }
    }
}

/// The known gaps of the module docs, measured at sizes where they exceed
/// `decode_bound`: list fields, and error messages quoting a mistyped string.
/// They stay within `GAP_AMPLIFICATION * len + SLACK`.
#[test]
fn known_gaps_list_fields_and_error_messages() {
    // serde preallocates 1 MiB of elements from an honest length; one element
    // more than 16 times that catches the `Vec` growing from 16 to 32 times.
    let past = |elem_size: usize| 16 * (SERDE_PREALLOC_CAP / elem_size) + 1;
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();

    let n = past(24);
    let mut body = Vec::new();
    mp_map(&mut body, 2);
    mp_str(&mut body, "v");
    body.push(1);
    mp_str(&mut body, "features");
    body.extend(array32(n));
    body.extend(std::iter::repeat(0xa0).take(n));
    frames.push((
        format!("msgpack hello.features = {n} x \"\""),
        mp_frame("hello", &body),
    ));

    let mut body = Vec::new();
    mp_map(&mut body, 4);
    mp_str(&mut body, "id");
    body.push(1);
    mp_str(&mut body, "method");
    mp_str(&mut body, "m");
    mp_str(&mut body, "args");
    body.extend_from_slice(b"\xc4\x01\xc0");
    mp_str(&mut body, "target");
    mp_map(&mut body, 2);
    mp_str(&mut body, "answer");
    body.push(1);
    mp_str(&mut body, "path");
    body.extend(array32(n));
    body.extend(std::iter::repeat(0x00).take(n));
    frames.push((
        format!("msgpack call.target.path = {n} x 0"),
        mp_frame("call", &body),
    ));

    let n = past(8);
    let mut body = Vec::new();
    mp_map(&mut body, 1);
    mp_str(&mut body, "caps");
    body.extend(array32(n));
    body.extend(std::iter::repeat(0x05).take(n));
    frames.push((
        format!("msgpack revoked.caps = {n} x 5"),
        mp_frame("revoked", &body),
    ));

    let path = vec!["0"; 1 << 19].join(",");
    frames.push((
        "json call.target.path = 2^19 x 0".into(),
        format!(
            r#"{{"call":{{"id":1,"target":{{"answer":1,"path":[{path}]}},"method":"m","args":null}}}}"#
        )
        .into_bytes(),
    ));

    // A string where the schema has something else is quoted whole in the
    // error, each DEL (one byte) escaped as `\u{7f}` (six).
    let del = vec![0x7fu8; 1 << 20];
    let del_text = String::from_utf8(del.clone()).expect("ASCII");
    frames.push((
        "json ping.nonce = 1 MiB of DEL".into(),
        format!(r#"{{"ping":{{"nonce":"{del_text}"}}}}"#).into_bytes(),
    ));
    let mut body = Vec::new();
    mp_map(&mut body, 1);
    mp_str(&mut body, "target");
    mp_str32(&mut body, &del);
    frames.push((
        "msgpack call.target = 1 MiB of DEL".into(),
        mp_frame("call", &body),
    ));
    let mut op = vec![0x81];
    mp_str32(&mut op, &vec![0x01; 1 << 20]);
    op.push(0x80);
    frames.push(("msgpack op name = 1 MiB of U+0001".into(), op));

    for (name, input) in frames {
        check_frame_amplification(&name, &input, GAP_AMPLIFICATION);
    }
}
