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

fn arb_path() -> impl Strategy<Value = Vec<PathSeg>> {
    prop::collection::vec(
        prop_oneof![
            "[a-z]{0,6}".prop_map(PathSeg::Key),
            any::<u64>().prop_map(PathSeg::Index)
        ],
        0..3,
    )
}

fn arb_caps() -> impl Strategy<Value = Vec<CapDescriptor>> {
    prop::collection::vec(
        prop_oneof![
            any::<u64>().prop_map(CapDescriptor::Export),
            any::<u64>().prop_map(CapDescriptor::Import),
            (any::<u64>(), arb_path()).prop_map(|(id, path)| CapDescriptor::Answer { id, path }),
        ],
        0..3,
    )
}

fn arb_status() -> impl Strategy<Value = Status> {
    (
        prop::sample::select(Code::ALL.to_vec()),
        ".{0,16}",
        prop::option::of("[a-z_]{1,12}"),
        prop::option::of(arb_json()),
    )
        .prop_map(|(code, message, reason, details)| Status {
            code,
            message,
            reason: reason.map(Reason::new),
            // `"details": null` means the same as no details.
            details: details.filter(|d| !d.is_null()),
        })
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        any::<u64>().prop_map(Target::Cap),
        (any::<u64>(), arb_path()).prop_map(|(id, path)| Target::Answer { id, path }),
    ]
}

fn arb_frame(codec: Codec) -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u32>(),
            prop::collection::vec("[a-z]{1,8}", 0..3),
            prop::option::of(any::<u32>()),
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
                peer,
                resume
            })),
        (
            any::<u64>(),
            arb_target(),
            "[a-zA-Z_.]{0,12}",
            arb_payload(codec),
            arb_caps(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            any::<bool>(),
            prop::option::of(any::<u32>())
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
        (any::<u64>(), arb_payload(codec), arb_caps()).prop_map(|(id, value, caps)| {
            Frame::Result(CallResult {
                id,
                outcome: Outcome::Ok { value, caps },
            })
        }),
        (any::<u64>(), arb_status()).prop_map(|(id, s)| Frame::Result(CallResult {
            id,
            outcome: Outcome::Err(s)
        })),
        (any::<u64>(), arb_payload(codec), arb_caps())
            .prop_map(|(id, value, caps)| Frame::Item(StreamItem { id, value, caps })),
        any::<u64>().prop_map(|id| Frame::End(StreamEnd { id })),
        (any::<u64>(), arb_status())
            .prop_map(|(id, err)| Frame::StreamError(StreamError { id, err })),
        (any::<u64>(), any::<u32>()).prop_map(|(id, n)| Frame::Credit(Credit { id, n })),
        any::<u64>().prop_map(|id| Frame::Cancel(Cancel { id })),
        any::<u64>().prop_map(|id| Frame::Finish(Finish { id })),
        (any::<u64>(), any::<u32>()).prop_map(|(cap, n)| Frame::Release(Release { cap, n })),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(|caps| Frame::Revoked(Revoked { caps })),
        (arb_status(), any::<u64>())
            .prop_map(|(status, grace_ms)| Frame::Goaway(Goaway { status, grace_ms })),
        any::<u64>().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Frame::Pong(Pong { nonce })),
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
