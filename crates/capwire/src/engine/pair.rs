//! Two engines wired to each other, stepped by hand: no runtime, no clock
//! beyond a fixed `now`, no tasks. The test decides which frame crosses
//! when, and when a handler answers, so every interleaving of a race is a
//! few lines to write and runs the same way every time.
//!
//! The host here is plain structs: objects are named, imports are `Arc`s
//! the test holds, replies are question ids, a handler's stop is a flag.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use capwire_proto::{
    Cancel, CapDescriptor, Code, Codec, Credit, Finish, Frame, Goaway, Hello, PathSeg, Payload,
    Reason, Release, Revoked, Status, StreamEnd, StreamItem, Target, BOOTSTRAP_CAP,
};
use tokio::time::Instant;

use super::answers::Life;
use super::questions::QuestionKind;
use super::{Action, AnswerHost, Core, Host, Limits, Outgoing, OutgoingCall, Route, Start};

/// An object one side serves.
#[derive(Debug)]
pub(super) struct Obj(#[allow(dead_code)] &'static str);

/// The local handle of an import.
#[derive(Debug)]
pub(super) struct Imp {
    id: u64,
    serial: u64,
}

#[derive(Clone, Debug)]
pub(super) enum Cap {
    /// A local object (served under a registry generation, if any).
    Local(Arc<Obj>, Option<u64>),
    /// One of the peer's objects.
    Import(Arc<Imp>),
    /// A promise on one of this side's answers (received as `answer`).
    Promise(u64),
}

#[derive(Clone, Debug)]
pub(super) struct Val {
    payload: Payload,
    caps: Vec<Cap>,
}

pub(super) enum Waiting {
    Call(Start<Test>),
    Promise,
}

pub(super) struct Test;

impl AnswerHost for Test {
    type Running = Arc<AtomicBool>;
    type Value = Val;
    type Waiting = Waiting;
}

impl Host for Test {
    type Object = Arc<Obj>;
    type Cap = Cap;
    type Import = Weak<Imp>;
    type Reply = u64;
    type ItemSink = u64;

    fn object_key(object: &Arc<Obj>) -> u64 {
        Arc::as_ptr(object) as usize as u64
    }
    fn new_import(&self, id: u64, serial: u64) -> Arc<Imp> {
        Arc::new(Imp { id, serial })
    }
    fn import_cap(&self, handle: Arc<Imp>) -> Cap {
        Cap::Import(handle)
    }
    fn local_cap(&self, object: &Arc<Obj>) -> Cap {
        Cap::Local(object.clone(), None)
    }
    fn cap_at(&self, value: &Val, path: &[PathSeg]) -> Result<Cap, Status> {
        let n = value.payload.cap_at(path)?;
        value
            .caps
            .get(n)
            .cloned()
            .ok_or_else(|| Status::new(Code::InvalidArgument, "no such capability"))
    }
    fn promise(&self, answer: u64, _path: Vec<PathSeg>) -> (Cap, Waiting) {
        (Cap::Promise(answer), Waiting::Promise)
    }
    fn value(&self, payload: Payload, caps: Vec<Cap>) -> Val {
        Val { payload, caps }
    }
    fn into_parts(value: Val) -> (Payload, Vec<Cap>) {
        (value.payload, value.caps)
    }
    fn classify<'a>(&self, cap: &'a Cap) -> Outgoing<'a, Arc<Obj>> {
        match cap {
            Cap::Local(object, generation) => Outgoing::Export(Cow::Borrowed(object), *generation),
            Cap::Import(imp) => Outgoing::Import(imp.id),
            Cap::Promise(answer) => Outgoing::Answer(*answer, Cow::Owned(Vec::new())),
        }
    }
    fn queued_call(&self, start: Start<Test>) -> Waiting {
        Waiting::Call(start)
    }
    fn item_sink(&self, reply: &u64) -> Option<u64> {
        Some(*reply)
    }
}

/// What a peer's caller side heard.
#[derive(Debug, Default)]
pub(super) struct Heard {
    /// Settled questions, in order: (question, outcome).
    pub(super) settled: Vec<(u64, Result<serde_json::Value, Status>)>,
    /// Stream items delivered: (question, item).
    pub(super) items: Vec<(u64, serde_json::Value)>,
    /// Streams ended: (question, error).
    pub(super) ended: Vec<(u64, Option<Status>)>,
    /// Capabilities the peer revoked.
    pub(super) revoked: Vec<u64>,
    /// Imports received, kept alive until the test drops them.
    pub(super) imports: Vec<Arc<Imp>>,
}

/// One side: its engine, the handlers it started, and what it heard.
pub(super) struct Peer {
    pub(super) core: Core<Test>,
    /// Handlers started and not yet answered, by answer id.
    pub(super) running: Vec<(Start<Test>, Route<Test>)>,
    pub(super) heard: Heard,
    /// The violation that ended this side, if one did.
    pub(super) violation: Option<Status>,
    out: VecDeque<Frame>,
}

fn json(value: serde_json::Value) -> Payload {
    Payload::encode(Codec::Json, &value).expect("test values encode")
}

fn plain(value: &Val) -> serde_json::Value {
    value.payload.decode().expect("test values decode")
}

impl Peer {
    fn new(limits: Limits) -> Peer {
        let mut core = Core::new(Test, limits, Codec::Json);
        let hello = core.on_frame(Frame::Hello(Hello::new()), Instant::now, |_| {
            unreachable!("hello admits no call")
        });
        assert!(matches!(hello, Ok(Action::Hello { .. })));
        Peer {
            core,
            running: Vec::new(),
            heard: Heard::default(),
            violation: None,
            out: VecDeque::new(),
        }
    }

    /// Asks a question; the frame waits on the wire.
    pub(super) fn call(
        &mut self,
        target: Target,
        method: &str,
        args: serde_json::Value,
        caps: &[Cap],
        kind: QuestionKind,
    ) -> Result<u64, Status> {
        let call = OutgoingCall {
            target,
            method,
            payload: json(args),
            caps,
            parent: None,
            deadline_ms: None,
            kind,
        };
        // The reply is the question id itself.
        let next = self.core.questions.next_id();
        let (id, frame) = self.core.call(call, next)?;
        assert_eq!(id, next);
        self.out.push_back(frame);
        Ok(id)
    }

    /// The handler of answer `id` returns `value` (with `caps`).
    pub(super) fn answer(
        &mut self,
        id: u64,
        result: Result<(serde_json::Value, Vec<Cap>), Status>,
    ) {
        let at = self
            .running
            .iter()
            .position(|(s, _)| s.id == id)
            .expect("a running handler with that id");
        let (start, _) = self.running.remove(at);
        let result = result.map(|(v, caps)| Val {
            payload: json(v),
            caps,
        });
        self.finish_handler(start.id, Some(result));
    }

    fn finish_handler(&mut self, id: u64, result: Option<Result<Val, Status>>) {
        let Some(answering) = self.core.answer(id, result) else {
            return;
        };
        self.out.push_back(answering.frame);
        match answering.kept {
            Some(outcome) => self.settle(id, outcome),
            None => {
                self.core.answers.remove(id);
            }
        }
    }

    /// A kept answer settled: deliver its queue, batch by batch.
    fn settle(&mut self, id: u64, outcome: Result<Val, Status>) {
        let mut batch = self.core.answers.settle(id, outcome.clone());
        loop {
            for pending in batch {
                self.deliver(
                    pending.waiting,
                    super::value_at(&Test, &outcome, &pending.path),
                );
            }
            match self.core.answers.next_batch(id) {
                Ok(more) => batch = more,
                Err(_freed) => return,
            }
        }
    }

    fn deliver(&mut self, waiting: Waiting, resolved: Result<Cap, Status>) {
        match waiting {
            Waiting::Promise => {}
            Waiting::Call(start) => {
                if self.core.answers.dequeue(start.id, start.serial) {
                    match resolved {
                        Ok(cap) => self.running.push((start, Route::Cap(cap))),
                        Err(status) => self.finish_handler(start.id, Some(Err(status))),
                    }
                }
            }
        }
    }

    /// The consumer of stream question `id` took `n` items.
    pub(super) fn grant(&mut self, id: u64, n: u32) {
        if self.core.questions.grant(id, n) {
            self.out.push_back(Frame::Credit(Credit { id, n }));
        }
    }

    /// The caller stops waiting on plain question `id`.
    pub(super) fn cancel(&mut self, id: u64) {
        if self.core.questions.remove(id).is_some() {
            self.out.push_back(Frame::Cancel(Cancel { id }));
        }
    }

    /// The consumer of stream question `id` goes away.
    pub(super) fn cancel_stream(&mut self, id: u64) {
        if self.core.questions.close_stream(id) {
            self.out.push_back(Frame::Cancel(Cancel { id }));
        }
    }

    /// The last handle of kept question `id` is dropped.
    pub(super) fn finish(&mut self, id: u64) {
        self.core.questions.remove(id);
        self.out.push_back(Frame::Finish(Finish { id }));
    }

    /// The test drops its handle of an import.
    pub(super) fn drop_import(&mut self, imp: Arc<Imp>) {
        let (id, serial) = (imp.id, imp.serial);
        self.heard.imports.retain(|i| !Arc::ptr_eq(i, &imp));
        drop(imp);
        if let Some(release) = self.core.on_import_dropped(id, serial) {
            self.out.push_back(Frame::Release(release));
        }
    }

    /// The registry unserves `generation`.
    pub(super) fn revoke(&mut self, generation: u64) {
        let (caps, stop) = self.core.revoke_generation(generation);
        for running in stop {
            running.store(true, Ordering::SeqCst);
        }
        if !caps.is_empty() {
            self.out.push_back(Frame::Revoked(Revoked { caps }));
        }
    }

    /// This side starts closing.
    pub(super) fn goaway(&mut self) {
        self.core.drain(Status::unavailable("closing"));
        self.out.push_back(Frame::Goaway(Goaway {
            status: Status::new(Code::Ok, "closing"),
            grace_ms: 1000,
        }));
    }

    /// A stream handler sends an item (if the engine's credit allows it,
    /// which the callee's pump checks in the runtime: here the test does).
    pub(super) fn send_item(&mut self, id: u64, value: serde_json::Value) {
        self.out.push_back(Frame::Item(StreamItem {
            id,
            value: json(value),
            caps: Vec::new(),
        }));
    }

    /// A stream handler ends its stream.
    pub(super) fn end_stream(&mut self, id: u64, err: Option<Status>) {
        let at = self.running.iter().position(|(s, _)| s.id == id);
        if let Some(at) = at {
            self.running.remove(at);
        }
        self.core.answers.remove(id);
        self.out.push_back(match err {
            None => Frame::End(StreamEnd { id }),
            Some(err) => Frame::StreamError(capwire_proto::StreamError { id, err }),
        });
    }

    /// Receives one frame and does what the engine says.
    fn receive(&mut self, frame: Frame) {
        if self.violation.is_some() {
            return;
        }
        let action = match self
            .core
            .on_frame(frame, Instant::now, |_| Arc::new(AtomicBool::new(false)))
        {
            Ok(action) => action,
            Err(status) => {
                self.violation = Some(status);
                return;
            }
        };
        match action {
            Action::None | Action::Hello { .. } | Action::Pong(_) | Action::Goaway(_) => {}
            Action::Send(frame) => self.out.push_back(frame),
            Action::Release(releases) => {
                self.out.extend(releases.into_iter().map(Frame::Release));
            }
            Action::Reject { id, stream, status } => {
                self.out.push_back(if stream {
                    Frame::StreamError(capwire_proto::StreamError { id, err: status })
                } else {
                    Frame::Result(capwire_proto::CallResult {
                        id,
                        outcome: capwire_proto::Outcome::Err(status),
                    })
                });
            }
            Action::Run(start, route) => self.running.push((start, route)),
            Action::Stop(flag) => flag.store(true, Ordering::SeqCst),
            Action::Freed(_) => {}
            Action::Settle { id, outcome, .. } => {
                if let Ok(value) = &outcome {
                    for cap in &value.caps {
                        if let Cap::Import(imp) = cap {
                            self.heard.imports.push(imp.clone());
                        }
                    }
                }
                self.heard.settled.push((id, outcome.map(|v| plain(&v))));
            }
            Action::Item { sink, item } => {
                let item = item.expect("test items are well-formed");
                self.heard.items.push((sink, plain(&item)));
            }
            Action::StreamEnd { id, err, .. } => self.heard.ended.push((id, err)),
            Action::Revoked {
                caps,
                releases,
                failed,
                ..
            } => {
                for q in failed {
                    let status = Status::revoked("the capability");
                    self.heard.settled.push((q.reply, Err(status)));
                }
                self.heard.revoked.extend(caps);
                self.out.extend(releases.into_iter().map(Frame::Release));
            }
            Action::Credit(..) => {}
        }
    }

    /// Is handler `id` running, and was it told to stop?
    pub(super) fn handler(&self, id: u64) -> Option<bool> {
        self.running
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, _)| s.running.load(Ordering::SeqCst))
    }
}

/// Two peers and the frames in flight between them.
pub(super) struct Pair {
    pub(super) a: Peer,
    pub(super) b: Peer,
}

/// Which way a frame crosses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dir {
    AtoB,
    BtoA,
}

impl Pair {
    pub(super) fn new() -> Pair {
        Pair {
            a: Peer::new(Limits::default()),
            b: Peer::new(Limits::default()),
        }
    }

    /// The op of the next frame waiting in `dir`, if any.
    pub(super) fn peek(&self, dir: Dir) -> Option<&'static str> {
        let out = match dir {
            Dir::AtoB => &self.a.out,
            Dir::BtoA => &self.b.out,
        };
        out.front().map(Frame::op)
    }

    /// Moves the next frame in `dir` across; returns its op.
    pub(super) fn step(&mut self, dir: Dir) -> &'static str {
        let (from, to) = match dir {
            Dir::AtoB => (&mut self.a, &mut self.b),
            Dir::BtoA => (&mut self.b, &mut self.a),
        };
        let frame = from.out.pop_front().expect("a frame in flight");
        let op = frame.op();
        to.receive(frame);
        op
    }

    /// Moves frames both ways until none is in flight.
    pub(super) fn drive(&mut self) {
        while !self.a.out.is_empty() || !self.b.out.is_empty() {
            if !self.a.out.is_empty() {
                self.step(Dir::AtoB);
            }
            if !self.b.out.is_empty() {
                self.step(Dir::BtoA);
            }
        }
    }

    /// B serves an object under `generation`; A bootstraps it and holds an
    /// import of it. Returns the export id.
    pub(super) fn serve(&mut self, name: &'static str, generation: u64) -> u64 {
        let q = self
            .a
            .call(
                Target::Cap(BOOTSTRAP_CAP),
                "bootstrap",
                serde_json::json!({ "name": name }),
                &[],
                QuestionKind::Plain,
            )
            .expect("bootstrap");
        self.drive();
        let (start, route) = self.b.running.pop().expect("bootstrap runs on B");
        assert!(matches!(route, Route::Bootstrap));
        self.b.running.push((start, route));
        let obj = Cap::Local(Arc::new(Obj(name)), Some(generation));
        self.b
            .answer(q, Ok((serde_json::json!({ "$cap": 0 }), vec![obj])));
        self.drive();
        match self.a.heard.imports.last() {
            Some(imp) => imp.id,
            None => panic!("A holds no import after bootstrap: {:?}", self.a.heard),
        }
    }

    /// Neither side saw a violation.
    pub(super) fn assert_clean(&self) {
        assert_eq!(self.a.violation, None, "A saw a violation");
        assert_eq!(self.b.violation, None, "B saw a violation");
    }
}

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
