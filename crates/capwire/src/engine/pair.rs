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
    Cancel, Code, Codec, Credit, Finish, Frame, Goaway, Hello, PathSeg, Payload, Revoked, Status,
    StreamEnd, StreamItem, Target, BOOTSTRAP_CAP,
};
use tokio::time::Instant;

use super::questions::QuestionKind;
use super::{Action, AnswerHost, Core, Host, Limits, Outgoing, OutgoingCall, Route, Start};

/// An object one side serves.
#[derive(Debug)]
pub(super) struct Obj(#[allow(dead_code)] pub(super) &'static str);

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
    pub(super) payload: Payload,
    pub(super) caps: Vec<Cap>,
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
    fn promise(&self, answer: u64) -> (Cap, Waiting) {
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
    pub(super) out: VecDeque<Frame>,
}

pub(super) fn json(value: serde_json::Value) -> Payload {
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

    pub(super) fn deliver(&mut self, waiting: Waiting, resolved: Result<Cap, Status>) {
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
    pub(super) fn receive(&mut self, frame: Frame) {
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
