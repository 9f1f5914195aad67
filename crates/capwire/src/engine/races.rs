//! The races of the protocol, stepped frame by frame between two engines
//! ([`super::pair`]): no runtime, the same interleaving every run.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use capwire_proto::{
    CapDescriptor, Code, Codec, Frame, Reason, Release, Status, StreamEnd, Target, BOOTSTRAP_CAP,
};
use tokio::time::Instant;

use super::answers::Life;
use super::pair::{json, Cap, Dir, Heard, Obj, Pair, Test, Val};
use super::questions::QuestionKind;
use super::{Core, Limits};

fn status_of(heard: &Heard, q: u64) -> Option<&Result<serde_json::Value, Status>> {
    heard
        .settled
        .iter()
        .find(|(id, _)| *id == q)
        .map(|(_, r)| r)
}

fn is_revoked(status: &Status) -> bool {
    status.code == Code::FailedPrecondition && status.reason == Some(Reason::REVOKED)
}

// ---- the races -----------------------------------------------------------

/// Cancel vs result, in both orders: the caller forgets the question, the
/// callee ignores a late cancel, and a capability in a result nobody wants
/// goes back to its exporter.
#[test]
fn cancel_vs_result() {
    for result_first in [true, false] {
        let mut p = Pair::new();
        let cap = p.serve("calc", 1);
        let exports_before = p.b.core.exports.len();
        let q =
            p.a.call(
                Target::Cap(cap),
                "make",
                serde_json::json!([]),
                &[],
                QuestionKind::Plain,
            )
            .expect("call");
        assert_eq!(p.step(Dir::AtoB), "call");
        // B's handler returns a fresh capability; A stops waiting meanwhile.
        let fresh = Cap::Local(Arc::new(Obj("fresh")), None);
        p.b.answer(q, Ok((serde_json::json!({ "$cap": 0 }), vec![fresh])));
        p.a.cancel(q);
        if result_first {
            assert_eq!(p.step(Dir::BtoA), "result");
            assert_eq!(p.step(Dir::AtoB), "cancel");
        } else {
            assert_eq!(p.step(Dir::AtoB), "cancel");
            assert_eq!(p.step(Dir::BtoA), "result");
        }
        // The unwanted result's introduction comes back as a release.
        assert_eq!(
            p.peek(Dir::AtoB),
            Some("release"),
            "result_first={result_first}"
        );
        p.drive();
        p.assert_clean();
        assert_eq!(p.a.core.questions.len(), 0);
        assert_eq!(p.b.core.answers.len(), 0);
        assert!(
            status_of(&p.a.heard, q).is_none(),
            "a cancelled call settles nothing"
        );
        assert_eq!(
            p.b.core.exports.len(),
            exports_before,
            "the fresh export was released"
        );
    }
}

/// Release vs call: a call sent before the release is answered; the export
/// is freed after it; a call after the release finds nothing.
#[test]
fn release_vs_call() {
    let mut p = Pair::new();
    let cap = p.serve("calc", 1);
    let q =
        p.a.call(
            Target::Cap(cap),
            "square",
            serde_json::json!([3]),
            &[],
            QuestionKind::Plain,
        )
        .expect("call");
    let imp = p.a.heard.imports.pop().expect("the import");
    p.a.drop_import(imp);
    assert_eq!(p.step(Dir::AtoB), "call");
    assert_eq!(p.step(Dir::AtoB), "release");
    assert!(p.b.core.exports.get(cap).is_none(), "released to 0: gone");
    // The call that crossed first still runs and is answered.
    p.b.answer(q, Ok((serde_json::json!(9), vec![])));
    p.drive();
    assert_eq!(status_of(&p.a.heard, q), Some(&Ok(serde_json::json!(9))));
    // A peer that calls it now (a bug or a hostile peer) hears not_found.
    let late =
        p.a.call(
            Target::Cap(cap),
            "square",
            serde_json::json!([3]),
            &[],
            QuestionKind::Plain,
        )
        .expect("the engine does not police its own side's ids");
    p.drive();
    match status_of(&p.a.heard, late) {
        Some(Err(s)) => assert_eq!(s.code, Code::NotFound, "{s}"),
        other => panic!("expected not_found, got {other:?}"),
    }
    p.assert_clean();
}

/// Revoke vs pipelined: a kept call and a call pipelined on it are held on
/// the wire while the exporter revokes; both fail `revoked`, neither hangs.
#[test]
fn revoke_vs_pipelined() {
    let mut p = Pair::new();
    let cap = p.serve("factory", 7);
    let kept =
        p.a.call(
            Target::Cap(cap),
            "make",
            serde_json::json!([]),
            &[],
            QuestionKind::Kept,
        )
        .expect("kept call");
    let piped =
        p.a.call(
            Target::Answer {
                id: kept,
                path: Vec::new(),
            },
            "use",
            serde_json::json!([]),
            &[],
            QuestionKind::Plain,
        )
        .expect("pipelined call");
    p.b.revoke(7);
    assert_eq!(p.step(Dir::BtoA), "revoked");
    // A already failed the kept call locally; the frames in flight still
    // reach B, which answers each one.
    p.drive();
    p.assert_clean();
    for q in [kept, piped] {
        match status_of(&p.a.heard, q) {
            Some(Err(s)) => assert!(is_revoked(s), "question {q}: {s}"),
            other => panic!("question {q}: expected revoked, got {other:?}"),
        }
    }
    assert_eq!(p.a.core.questions.len(), 0);
}

/// Finish vs pipelined delivery: the caller's `finish` arrives while the
/// kept answer delivers its queue; the queued calls still run and the
/// answer is freed once delivery ends.
#[test]
fn finish_vs_pipelined_delivery() {
    let mut p = Pair::new();
    let cap = p.serve("factory", 1);
    let kept =
        p.a.call(
            Target::Cap(cap),
            "make",
            serde_json::json!([]),
            &[],
            QuestionKind::Kept,
        )
        .expect("kept call");
    let on = |id| Target::Answer {
        id,
        path: Vec::new(),
    };
    let p1 =
        p.a.call(
            on(kept),
            "one",
            serde_json::json!([]),
            &[],
            QuestionKind::Plain,
        )
        .expect("p1");
    let p2 =
        p.a.call(
            on(kept),
            "two",
            serde_json::json!([]),
            &[],
            QuestionKind::Plain,
        )
        .expect("p2");
    for _ in 0..3 {
        p.step(Dir::AtoB);
    }
    assert_eq!(
        p.b.core.answers.pending_pipelined(),
        2,
        "both wait for the kept answer"
    );
    // The handler returns; settling starts the delivery, and before the
    // delivery ends the caller's finish arrives.
    let made = Cap::Local(Arc::new(Obj("made")), None);
    let at =
        p.b.running
            .iter()
            .position(|(s, _)| s.id == kept)
            .expect("kept runs");
    let (start, _) = p.b.running.remove(at);
    let answering =
        p.b.core
            .answer(
                start.id,
                Some(Ok(Val {
                    payload: json(serde_json::json!({ "$cap": 0 })),
                    caps: vec![made],
                })),
            )
            .expect("answered");
    p.b.out.push_back(answering.frame);
    let outcome = answering.kept.expect("kept");
    let batch = p.b.core.answers.settle(kept, outcome.clone());
    assert!(matches!(
        p.b.core.answers.life(kept),
        Some(Life::Delivering(_))
    ));
    p.a.finish(kept);
    assert_eq!(p.step(Dir::AtoB), "finish");
    assert!(p.b.core.answers.contains(kept), "delivering: not freed yet");
    for pending in batch {
        p.b.deliver(
            pending.waiting,
            super::value_at(&Test, &outcome, &pending.path),
        );
    }
    assert!(
        matches!(p.b.core.answers.next_batch(kept), Err(Some(_))),
        "freed at the end"
    );
    assert!(!p.b.core.answers.contains(kept));
    p.b.answer(p1, Ok((serde_json::json!(1), vec![])));
    p.b.answer(p2, Ok((serde_json::json!(2), vec![])));
    p.drive();
    p.assert_clean();
    assert_eq!(status_of(&p.a.heard, p1), Some(&Ok(serde_json::json!(1))));
    assert_eq!(status_of(&p.a.heard, p2), Some(&Ok(serde_json::json!(2))));
    assert_eq!(p.b.core.answers.len(), 0);
}

/// Goaway vs new calls: a call that crossed the `goaway` on the wire gets
/// exactly one terminal frame (`unavailable`); after the `goaway` arrives,
/// the caller refuses new calls locally and nothing reaches the peer.
#[test]
fn goaway_vs_new_calls() {
    let mut p = Pair::new();
    let cap = p.serve("calc", 1);
    let crossing =
        p.a.call(
            Target::Cap(cap),
            "square",
            serde_json::json!([2]),
            &[],
            QuestionKind::Plain,
        )
        .expect("call");
    p.b.goaway();
    assert_eq!(p.step(Dir::AtoB), "call");
    assert_eq!(p.step(Dir::BtoA), "goaway");
    let refused = p.a.call(
        Target::Cap(cap),
        "square",
        serde_json::json!([3]),
        &[],
        QuestionKind::Plain,
    );
    match refused {
        Err(s) => assert_eq!(s.code, Code::Unavailable, "{s}"),
        Ok(q) => panic!("question {q} was asked after goaway"),
    }
    assert_eq!(p.peek(Dir::AtoB), None, "nothing reaches B");
    p.drive();
    match status_of(&p.a.heard, crossing) {
        Some(Err(s)) => assert_eq!(s.code, Code::Unavailable, "{s}"),
        other => panic!("the crossing call must end unavailable, got {other:?}"),
    }
    p.assert_clean();
    assert_eq!(p.a.core.questions.len(), 0);
}

/// Credit vs cancel, in both orders: the consumer's `credit` and its
/// `cancel` cross the producer's items; items after the cancel are
/// discarded, the stream ends once, and nobody sees a violation.
#[test]
fn credit_vs_cancel() {
    for credit_first in [true, false] {
        let mut p = Pair::new();
        let cap = p.serve("numbers", 1);
        let q =
            p.a.call(
                Target::Cap(cap),
                "count",
                serde_json::json!([]),
                &[],
                QuestionKind::stream(2),
            )
            .expect("stream call");
        p.step(Dir::AtoB);
        // The producer uses its window of 2.
        p.b.send_item(q, serde_json::json!(0));
        p.b.send_item(q, serde_json::json!(1));
        p.step(Dir::BtoA);
        p.step(Dir::BtoA);
        assert_eq!(p.a.heard.items.len(), 2);
        // The consumer takes both (credit 2 goes out) and then goes away.
        p.a.grant(q, 2);
        p.a.cancel_stream(q);
        if credit_first {
            assert_eq!(p.step(Dir::AtoB), "credit");
            // The producer sends on the new credit before the cancel lands.
            p.b.send_item(q, serde_json::json!(2));
            assert_eq!(p.step(Dir::AtoB), "cancel");
        } else {
            // The producer sends on the new credit, and the item reaches the
            // consumer (which already went away) before the cancel lands.
            assert_eq!(p.step(Dir::AtoB), "credit");
            p.b.send_item(q, serde_json::json!(2));
            assert_eq!(p.step(Dir::BtoA), "item");
            assert_eq!(p.step(Dir::AtoB), "cancel");
        }
        assert_eq!(p.b.handler(q), Some(true), "the producer was told to stop");
        p.b.end_stream(q, Some(Status::new(Code::Cancelled, "cancelled")));
        p.drive();
        p.assert_clean();
        assert_eq!(
            p.a.heard.items.len(),
            2,
            "the item after the cancel was discarded"
        );
        assert_eq!(p.a.heard.ended.len(), 1, "one terminal frame");
        assert_eq!(p.a.core.questions.len(), 0);
        assert_eq!(p.b.core.answers.len(), 0);
    }
}

/// Items past the credit granted are a violation, never buffered.
#[test]
fn items_beyond_credit_are_a_violation() {
    let mut p = Pair::new();
    let cap = p.serve("numbers", 1);
    let q =
        p.a.call(
            Target::Cap(cap),
            "count",
            serde_json::json!([]),
            &[],
            QuestionKind::stream(1),
        )
        .expect("stream call");
    p.step(Dir::AtoB);
    p.b.send_item(q, serde_json::json!(0));
    p.b.send_item(q, serde_json::json!(1));
    p.step(Dir::BtoA);
    p.step(Dir::BtoA);
    let v =
        p.a.violation
            .as_ref()
            .expect("the second item is one too many");
    assert_eq!(v.reason, Some(Reason::PROTOCOL_VIOLATION));
}

/// A `result` for a stream question, or an `end` for a plain one, is a
/// violation; the first frame must be `hello`.
#[test]
fn frames_for_the_wrong_kind_of_question_are_violations() {
    let mut p = Pair::new();
    let cap = p.serve("numbers", 1);
    let q =
        p.a.call(
            Target::Cap(cap),
            "count",
            serde_json::json!([]),
            &[],
            QuestionKind::stream(4),
        )
        .expect("stream call");
    p.a.receive(Frame::Result(capwire_proto::CallResult {
        id: q,
        outcome: capwire_proto::Outcome::Err(Status::new(Code::Internal, "x")),
    }));
    assert!(p.a.violation.is_some(), "result for a stream");

    let mut fresh = Core::new(Test, Limits::default(), Codec::Json);
    let early = fresh.on_frame(Frame::End(StreamEnd { id: 1 }), Instant::now, |_| {
        Arc::new(AtomicBool::new(false))
    });
    assert!(early.is_err(), "a frame before hello");
    let mut p = Pair::new();
    p.a.receive(Frame::End(StreamEnd { id: 99 }));
    assert!(p.a.violation.is_some(), "end for no stream");
}

/// A call that reuses the id of a call still running ends the connection;
/// a received value whose descriptors introduce id 0 or 1 is refused.
#[test]
fn id_reuse_and_reserved_ids_are_violations() {
    let mut p = Pair::new();
    let cap = p.serve("calc", 1);
    let call = |id| {
        Frame::Call(capwire_proto::Call {
            id,
            target: Target::Cap(cap),
            method: "hang".into(),
            args: json(serde_json::json!([])),
            caps: vec![],
            parent: None,
            deadline_ms: None,
            keep: false,
            stream: None,
        })
    };
    p.b.receive(call(50));
    assert!(p.b.violation.is_none());
    p.b.receive(call(50));
    assert!(p.b.violation.is_some(), "id 50 is still running");

    let mut p = Pair::new();
    let q =
        p.a.call(
            Target::Cap(BOOTSTRAP_CAP),
            "bootstrap",
            serde_json::json!({}),
            &[],
            QuestionKind::Plain,
        )
        .expect("call");
    p.a.receive(Frame::Result(capwire_proto::CallResult {
        id: q,
        outcome: capwire_proto::Outcome::Ok {
            value: json(serde_json::json!({ "$cap": 0 })),
            caps: vec![CapDescriptor::Export(1)],
        },
    }));
    // The value is refused (its question fails), the connection stays.
    match status_of(&p.a.heard, q) {
        Some(Err(s)) => assert_eq!(s.reason, Some(Reason::PROTOCOL_VIOLATION), "{s}"),
        other => panic!("capability 1 cannot be introduced, got {other:?}"),
    }
    p.assert_clean();
}

/// Over-releasing an export is the peer's violation; a release that crossed
/// `revoked` is not.
#[test]
fn releases_are_counted() {
    let mut p = Pair::new();
    let cap = p.serve("calc", 3);
    p.b.receive(Frame::Release(Release { cap, n: 2 }));
    assert!(p.b.violation.is_some(), "one introduction, two releases");

    let mut p = Pair::new();
    p.serve("calc", 3);
    // A drops its handle (a release goes out) while B revokes: the release
    // crosses the `revoked` on the wire.
    let imp = p.a.heard.imports.pop().expect("the import");
    p.a.drop_import(imp);
    p.b.revoke(3);
    p.drive();
    p.assert_clean();
    assert_eq!(
        p.b.core.exports.len(),
        0,
        "the revoked entry is gone once released"
    );
}

/// The introductions of a value nobody receives go back as one `release`
/// per id with its count; ids 0 and 1 are never released; a value with
/// many descriptors is counted in one pass.
#[test]
fn unwanted_introductions_are_counted_per_id() {
    let caps: Vec<CapDescriptor> = (0..50_000u64)
        .map(|i| CapDescriptor::Export(2 + i % 3))
        .chain([
            CapDescriptor::Export(0),
            CapDescriptor::Export(1),
            CapDescriptor::Import(9),
        ])
        .collect();
    let mut releases = Core::<Test>::unwanted(&caps);
    releases.sort_by_key(|r| r.cap);
    let counts: Vec<(u64, u32)> = releases.iter().map(|r| (r.cap, r.n)).collect();
    assert_eq!(counts, vec![(2, 16_667), (3, 16_667), (4, 16_666)]);
}
