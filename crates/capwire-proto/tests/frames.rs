//! Round trips of every frame in both codecs, and what bad input decodes to.

use capwire_proto::*;
use proptest::prelude::*;

fn arb_codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Json), Just(Codec::Msgpack)]
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        "[a-z\\u{e9}\\u{1F600} \"\\\\]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z$]{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_payload(codec: Codec) -> impl Strategy<Value = Payload> {
    arb_json().prop_map(move |v| Payload::encode(codec, &v).expect("encode payload"))
}

/// Integers of every MessagePack width: small ones are where encodings differ.
fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0..300u64, 300..70_000u64, any::<u64>()]
}

fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0..300u32, any::<u32>()]
}

fn arb_path() -> impl Strategy<Value = Vec<PathSeg>> {
    prop::collection::vec(
        prop_oneof![
            "[a-z]{0,6}".prop_map(PathSeg::Key),
            arb_u64().prop_map(PathSeg::Index)
        ],
        0..3,
    )
}

fn arb_caps() -> impl Strategy<Value = Vec<CapDescriptor>> {
    prop::collection::vec(
        prop_oneof![
            arb_u64().prop_map(CapDescriptor::Export),
            arb_u64().prop_map(CapDescriptor::Import),
            (arb_u64(), arb_path()).prop_map(|(id, path)| CapDescriptor::Answer { id, path }),
        ],
        0..3,
    )
}

fn arb_status() -> impl Strategy<Value = Status> {
    (
        prop::sample::select(Code::ALL.to_vec()),
        ".{0,16}",
        prop::option::of("[a-z_]{1,12}"),
        prop::option::of((arb_json(), arb_codec())),
    )
        .prop_map(|(code, message, reason, details)| Status {
            code,
            message,
            reason: reason.map(Reason::new),
            // Details in either codec, whatever the frame's: they are written
            // inline in the frame's codec, and compare as JSON values. A null
            // is kept here: it means the same as no details.
            details: details.map(|(d, codec)| Payload::encode(codec, &d).expect("encode details")),
        })
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        arb_u64().prop_map(Target::Cap),
        (arb_u64(), arb_path()).prop_map(|(id, path)| Target::Answer { id, path }),
    ]
}

fn arb_frame(codec: Codec) -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            arb_u32(),
            prop::collection::vec("[a-z]{1,8}", 0..3),
            prop::option::of(arb_u32()),
            prop::option::of(".{0,8}"),
            prop::option::of("[a-f0-9]{0,8}")
        )
            .prop_map(|(v, features, max, peer, resume)| Frame::Hello(Hello {
                v,
                features,
                limits: HelloLimits {
                    max_frame_bytes: max,
                    max_caps: max,
                    max_in_flight: None,
                    max_depth: max
                },
                token: resume.clone().map(|r| format!("t-{r}")),
                peer,
                resume,
            })),
        (
            arb_u64(),
            arb_target(),
            "[a-zA-Z_.]{0,12}",
            arb_payload(codec),
            arb_caps(),
            prop::option::of(arb_u64()),
            prop::option::of(arb_u64()),
            any::<bool>(),
            prop::option::of(arb_u32())
        )
            .prop_map(
                |(id, target, method, args, caps, parent, deadline_ms, keep, stream)| {
                    Frame::Call(Call {
                        id,
                        target,
                        method,
                        args,
                        caps,
                        parent,
                        deadline_ms,
                        keep,
                        stream,
                    })
                }
            ),
        (arb_u64(), arb_payload(codec), arb_caps()).prop_map(|(id, value, caps)| {
            Frame::Result(CallResult {
                id,
                outcome: Outcome::Ok { value, caps },
            })
        }),
        (arb_u64(), arb_status()).prop_map(|(id, s)| Frame::Result(CallResult {
            id,
            outcome: Outcome::Err(s)
        })),
        (arb_u64(), arb_payload(codec), arb_caps())
            .prop_map(|(id, value, caps)| Frame::Item(StreamItem { id, value, caps })),
        arb_u64().prop_map(|id| Frame::End(StreamEnd { id })),
        (arb_u64(), arb_status()).prop_map(|(id, err)| Frame::StreamError(StreamError { id, err })),
        (arb_u64(), arb_u32()).prop_map(|(id, n)| Frame::Credit(Credit { id, n })),
        arb_u64().prop_map(|id| Frame::Cancel(Cancel { id })),
        arb_u64().prop_map(|id| Frame::Finish(Finish { id })),
        (arb_u64(), arb_u32()).prop_map(|(cap, n)| Frame::Release(Release { cap, n })),
        prop::collection::vec(arb_u64(), 0..4).prop_map(|caps| Frame::Revoked(Revoked { caps })),
        (arb_status(), arb_u64())
            .prop_map(|(status, grace_ms)| Frame::Goaway(Goaway { status, grace_ms })),
        arb_u64().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        arb_u64().prop_map(|nonce| Frame::Pong(Pong { nonce })),
    ]
}

fn codec_and_frame() -> impl Strategy<Value = (Codec, Frame)> {
    arb_codec().prop_flat_map(|c| arb_frame(c).prop_map(move |f| (c, f)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips((codec, frame) in codec_and_frame()) {
        let bytes = codec::encode(&frame, codec).expect("encode");
        let (back, detected) = codec::decode(&bytes).expect("decode");
        prop_assert_eq!(detected, codec);
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn payloads_survive_the_other_codec((codec, frame) in codec_and_frame()) {
        // A payload encoded for one codec still decodes to the same value in a frame of the other.
        let other = match codec { Codec::Json => Codec::Msgpack, Codec::Msgpack => Codec::Json };
        if let Frame::Call(call) = &frame {
            let bytes = codec::encode(&frame, other).expect("encode");
            let (back, _) = codec::decode(&bytes).expect("decode");
            let Frame::Call(back) = back else { panic!("not a call") };
            prop_assert_eq!(back.args.to_json().expect("json"), call.args.to_json().expect("json"));
        }
    }

    /// Every MessagePack frame encodes to serde's bytes, whether the direct
    /// encoder (call path frames) or serde itself wrote it.
    #[test]
    fn msgpack_frames_are_serdes_bytes(frame in arb_frame(Codec::Msgpack)) {
        let mut serde_bytes = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut serde_bytes).with_struct_map();
        serde::Serialize::serialize(&frame, &mut ser).expect("serde encodes");
        prop_assert_eq!(&codec::encode_bytes(&frame, Codec::Msgpack).expect("encode")[..], &serde_bytes[..]);
    }

    /// The direct decoder is only a shortcut: on any frame, damaged or not,
    /// `decode_bytes` answers what serde answers.
    #[test]
    fn decode_bytes_answers_what_serde_answers(
        frame in arb_frame(Codec::Msgpack),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = codec::encode(&frame, Codec::Msgpack).expect("encode");
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let fast = codec::decode_bytes(&bytes::Bytes::from(bytes.clone())).map(|(f, _)| f);
        let slow = codec::decode_as(Codec::Msgpack, &bytes);
        prop_assert_eq!(fast.ok(), slow.ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode(&bytes);
        let _ = codec::decode_as(Codec::Json, &bytes);
        let _ = codec::decode_as(Codec::Msgpack, &bytes);
    }

    #[test]
    fn mutated_frames_never_panic((codec, frame) in codec_and_frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = codec::encode(&frame, codec).expect("encode");
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = codec::decode(&bytes);
    }
}

#[test]
fn json_frames_read_as_documented() {
    let frame = Frame::Result(CallResult {
        id: 9,
        outcome: Outcome::Err(Status::revoked("capability 4")),
    });
    let text =
        String::from_utf8(codec::encode(&frame, Codec::Json).expect("encode")).expect("utf8");
    assert_eq!(
        text,
        r#"{"result":{"id":9,"err":{"code":"failed_precondition","message":"capability 4 was revoked","reason":"revoked"}}}"#
    );
    let bin = codec::encode(&frame, Codec::Msgpack).expect("encode");
    assert_eq!(bin[0], 0x81, "a binary frame is a one-entry map");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "empty frame"),
        (b"   ", "empty frame"),
        (b"[\"push\"]", "unknown frame encoding: first byte 0x5b"),
        (b"{\"bogus\":{}}", "unknown op `bogus`"),
        (b"{}", "empty frame: expected one op"),
        (b"{\"ping\":{\"nonce\":1},\"pong\":{\"nonce\":1}}", "exactly one op"),
        (b"{\"ping\":{\"nonce\":-1}}", "malformed json frame"),
        (b"{\"ping\":{\"nonce\":1}} x", "malformed json frame"),
        (b"{\"call\":{\"id\":1,\"target\":{\"cap\":1,\"answer\":2},\"method\":\"m\",\"args\":null}}", "exactly one id field"),
        (b"{\"call\":{\"id\":1,\"target\":{\"cap\":1,\"path\":[\"x\"]},\"method\":\"m\",\"args\":null}}", "`path` is only allowed with `answer`"),
        (b"{\"result\":{\"id\":1}}", "needs `ok` or `err`"),
        (b"{\"result\":{\"id\":1,\"ok\":1,\"err\":{\"code\":\"internal\"}}}", "not both"),
        (b"{\"result\":{\"id\":1,\"err\":{\"code\":\"nope\"}}}", "unknown variant `nope`"),
        (b"{\"call\":{\"id\":1,\"target\":{\"answer\":2,\"path\":[-1]},\"method\":\"m\",\"args\":null}}", "negative array index"),
    ];
    for (input, want) in cases {
        let err = codec::decode(input).expect_err(&String::from_utf8_lossy(input));
        assert!(
            err.to_string().contains(want),
            "{:?}: got `{err}`, want `{want}`",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(
        codec::decode(b"{\"bogus\":{}}")
            .expect_err("unknown")
            .clone(),
        DecodeError::UnknownOp("bogus".into())
    );

    // The same mistakes in MessagePack.
    let mut trailing =
        codec::encode(&Frame::Ping(Ping { nonce: 1 }), Codec::Msgpack).expect("encode");
    trailing.push(0xc0);
    assert!(codec::decode(&trailing)
        .expect_err("trailing")
        .to_string()
        .contains("1 trailing bytes"));
    let unknown = [0x81, 0xa3, b'f', b'o', b'o', 0x80];
    assert_eq!(
        codec::decode(&unknown),
        Err(DecodeError::UnknownOp("foo".into()))
    );
    // Status details nested 100 000 deep are refused, not a stack overflow.
    let mut deep = vec![0x81, 0xa6];
    deep.extend_from_slice(b"result");
    deep.extend_from_slice(&[0x82, 0xa2, b'i', b'd', 0x01, 0xa3, b'e', b'r', b'r', 0x82]);
    deep.extend_from_slice(&[0xa4, b'c', b'o', b'd', b'e', 0xa8]);
    deep.extend_from_slice(b"internal");
    deep.extend_from_slice(&[0xa7]);
    deep.extend_from_slice(b"details");
    deep.extend(std::iter::repeat(0x91).take(100_000));
    deep.push(0xc0);
    assert!(codec::decode(&deep)
        .expect_err("too deep")
        .to_string()
        .contains("depth"));
    // A map of two ops is read as MessagePack and refused precisely.
    let two = [
        0x82, 0xa4, b'p', b'i', b'n', b'g', 0x81, 0xa5, b'n', b'o', b'n', b'c', b'e', 0x01, 0xa4,
        b'p', b'o', b'n', b'g', 0x81, 0xa5, b'n', b'o', b'n', b'c', b'e', 0x01,
    ];
    assert!(codec::decode(&two)
        .expect_err("two ops")
        .to_string()
        .contains("exactly one op"));
    // A bin claiming 4 GiB inside a 10-byte frame fails without allocating it.
    let huge = [
        0x81, 0xa4, b'p', b'i', b'n', b'g', 0xc6, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(codec::decode(&huge).is_err());
}

// ---------------------------------------------------------------------------
// Status details: kept encoded, checked like a `serde_json::Value`.

/// A MessagePack `result` frame whose error status has `details`.
fn mp_result_with_details(details: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, 0xa6];
    out.extend_from_slice(b"result");
    out.extend_from_slice(&[0x82, 0xa2, b'i', b'd', 0x01, 0xa3, b'e', b'r', b'r', 0x83]);
    out.extend_from_slice(&[0xa4, b'c', b'o', b'd', b'e', 0xa8]);
    out.extend_from_slice(b"internal");
    out.extend_from_slice(&[0xa7]);
    out.extend_from_slice(b"message");
    out.push(0xa0);
    out.extend_from_slice(&[0xa7]);
    out.extend_from_slice(b"details");
    out.extend_from_slice(details);
    out
}

fn json_result_with_details(details: &str) -> String {
    format!(
        r#"{{"result":{{"id":1,"err":{{"code":"internal","message":"","details":{details}}}}}}}"#
    )
}

fn status_of(frame: Frame) -> Status {
    match frame {
        Frame::Result(CallResult {
            outcome: Outcome::Err(status),
            ..
        }) => status,
        other => panic!("not an error result: {other:?}"),
    }
}

#[test]
fn msgpack_details_decode_exactly_when_a_json_value_would() {
    let cases: &[&[u8]] = &[
        &[0xc0],
        &[0x01],
        &[
            0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x92, 0xd0, 0x80, 0xa2, 0xc3, 0xa9,
        ],
        // f32, NaN, a 64-bit negative integer, a positive one written as i64.
        &[
            0x94, 0xca, 0x3f, 0xc0, 0x00, 0x00, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0xd3, 0xff,
            0xff, 0xff, 0xff, 0, 0, 0, 0, 0xd3, 0, 0, 0, 0, 0, 0, 0, 5,
        ],
        // A repeated key: the last one wins, as in a `Value`.
        &[0x82, 0xa1, b'k', 0x01, 0xa1, b'k', 0x02],
        // What a `Value` cannot hold, or cannot read.
        &[0xc4, 0x01, 0x00],
        &[0xd4, 0x01, 0x00],
        &[0x81, 0x01, 0x02],
        &[0xa1, 0xff],
        &[0x81, 0xa1, 0xff, 0x01],
        &[0x92, 0x01],
        &[0xc1],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'k'],
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'],
    ];
    for details in cases {
        let frame = mp_result_with_details(details);
        let mut de = rmp_serde::Deserializer::from_read_ref(details);
        let value = <serde_json::Value as serde::Deserialize>::deserialize(&mut de);
        match (codec::decode(&frame), value) {
            (Ok((frame, _)), Ok(value)) => {
                let status = status_of(frame);
                assert_eq!(
                    status.details_json(),
                    Some(value).filter(|v| !v.is_null()),
                    "{details:02x?}"
                );
            }
            (Err(e), Err(value_err)) => assert_eq!(
                e.to_string(),
                format!("malformed msgpack frame: {value_err}"),
                "{details:02x?}"
            ),
            (frame, value) => panic!("{details:02x?}: frame {frame:?}, value {value:?}"),
        }
    }
}

#[test]
fn json_details_decode_exactly_when_a_json_value_would() {
    let cases = [
        "null",
        "1",
        r#"{"b":1,"a":[1.5,-2,"\u00e9",true]}"#,
        r#"{"k":1,"k":2}"#,
        "1e308",
        // Refused values: numbers out of range, lone surrogates, control characters.
        "1e400",
        r#""\ud800""#,
        "\"\u{1}\"",
        // Syntax errors (their texts may differ: the value is skipped, not parsed).
        "[1,]",
        r#"{"a" 1}"#,
        "nul",
    ];
    for details in cases {
        let text = json_result_with_details(details);
        let value = serde_json::from_str::<serde_json::Value>(details);
        match (codec::decode(text.as_bytes()), value) {
            (Ok((frame, _)), Ok(value)) => {
                let status = status_of(frame);
                assert_eq!(
                    status.details_json(),
                    Some(value).filter(|v| !v.is_null()),
                    "{details}"
                );
            }
            (Err(e), Err(value_err)) => {
                let e = e.to_string();
                assert!(e.starts_with("malformed json frame: "), "{details}: {e}");
                if value_err.is_data() {
                    // Same reason; the position is the one in the frame.
                    let position = format!(
                        " at line {} column {}",
                        value_err.line(),
                        value_err.column()
                    );
                    let reason = value_err.to_string();
                    let reason = reason.strip_suffix(&position).expect("position");
                    assert!(e.contains(reason), "{details}: {e} vs {reason}");
                }
            }
            (frame, value) => panic!("{details}: frame {frame:?}, value {value:?}"),
        }
    }
}

#[test]
fn details_nest_as_deep_as_before_and_no_deeper() {
    // The frame depth limit leaves 124 levels below a status, in both codecs.
    for (depth, ok) in [(124, true), (125, false)] {
        let mut mp = vec![0x91; depth];
        mp.push(0x01);
        let json = "[".repeat(depth) + "1" + &"]".repeat(depth);
        let results = [
            codec::decode(&mp_result_with_details(&mp)).map(|_| ()),
            codec::decode(json_result_with_details(&json).as_bytes()).map(|_| ()),
        ];
        for result in results {
            match result {
                Ok(()) => assert!(ok, "depth {depth} accepted"),
                Err(e) => {
                    assert!(!ok, "depth {depth}: {e}");
                    let e = e.to_string();
                    assert!(
                        e.contains("depth limit exceeded")
                            || e.contains("recursion limit exceeded"),
                        "{e}"
                    );
                }
            }
        }
    }
}

#[test]
fn details_are_inline_in_both_codecs_and_keep_their_order() {
    // JSON: the exact text comes back out, key order and whitespace included.
    let text = json_result_with_details(r#"{"b": 1, "a": [2.5, "x"]}"#);
    let (frame, _) = codec::decode(text.as_bytes()).expect("decode");
    assert_eq!(
        codec::encode(&frame, Codec::Json).expect("encode"),
        text.as_bytes()
    );
    // MessagePack: a native value, never a `bin`, keys in the order received.
    let mp = codec::encode(&frame, Codec::Msgpack).expect("encode");
    let details = [
        0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x92, 0xcb, 0x40, 0x04, 0, 0, 0, 0, 0, 0, 0xa1, b'x',
    ];
    assert_eq!(mp, mp_result_with_details(&details));
    let (back, _) = codec::decode(&mp).expect("decode");
    assert_eq!(back, frame, "equal as JSON values");
    assert_eq!(
        String::from_utf8(codec::encode(&back, Codec::Json).expect("encode")).expect("utf8"),
        json_result_with_details(r#"{"b":1,"a":[2.5,"x"]}"#)
    );
    // `null` details read as absent and are not written.
    for frame in [
        codec::decode(json_result_with_details("null").as_bytes()),
        codec::decode(&mp_result_with_details(&[0xc0])),
    ] {
        let (frame, _) = frame.expect("decode");
        let status = status_of(frame.clone());
        assert!(status.details.is_none());
        let text = codec::encode(&frame, Codec::Json).expect("encode");
        assert!(!String::from_utf8_lossy(&text).contains("details"));
    }
}
