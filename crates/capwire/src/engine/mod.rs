//! The protocol engine: one connection's capability state, with no I/O, no
//! clock and no tasks.
//!
//! [`Core`] owns the four tables of the protocol (exports, imports,
//! questions, answers), the revoked-id memories, the limits and the
//! connection's phase. Its methods take what happened (a received frame's
//! contents, a call this side wants to make, a handle dropped, a handler
//! finished) and the time where it matters, change the tables, and return
//! what the driver must do: the frame to transmit, the handler to start, the
//! caller to settle, the handlers to stop. Every rule of the protocol's
//! state — limits, id reuse, revocation, pipelining queues, credit, the
//! lifecycles of questions and answers — is decided here, in one place.
//!
//! The engine never names the runtime's handle types (`Capability`,
//! `Value`, channels, tokens): they are the associated types of a [`Host`],
//! stored in the tables and handed back, never looked into. The session
//! (`crate::session`) is the driver for tokio; the engine's own tests drive
//! it with a host of plain structs and two engines wired to each other
//! (`pair`), stepping frames by hand, with no runtime.

pub(crate) mod answers;
pub(crate) mod deadline;
mod dispatch;
pub(crate) mod exports;
pub(crate) mod id_map;
pub(crate) mod imports;
mod limits;
mod names;
mod outgoing;
#[cfg(test)]
mod pair;
pub(crate) mod questions;
#[cfg(test)]
mod races;

pub(crate) use dispatch::{Action, Start};
pub use limits::Limits;
pub(crate) use names::MethodNames;
pub(crate) use outgoing::{Answering, OutgoingCall};

use std::borrow::Cow;
use std::sync::Arc;

use capwire_proto::{
    CapDescriptor, Code, Codec, PathSeg, Payload, Reason, Release, Status, Target, BOOTSTRAP_CAP,
    RUNTIME_CAP,
};

use answers::{AnswerKind, Answers, Life, Refusal};
use exports::Exports;
use imports::{Imports, RevokedIds};
use questions::Questions;

/// The driver's types, as the engine stores them: it keeps them in its
/// tables and hands them back, and asks the host for the few things it must
/// make or look into (a handle for a new import, the capability at a path of
/// a settled value).
pub(crate) trait Host: AnswerHost {
    /// A local object the peer may call: what an export holds.
    type Object: Clone;
    /// A capability, as the driver hands it to application code.
    type Cap;
    /// The driver's weak reference to the local handle of an import.
    type Import: WeakHandle;
    /// How the caller of a question hears its outcome.
    type Reply;
    /// Where a stream question's items go.
    type ItemSink;

    /// Identifies `object` for the export table: the same object exported
    /// twice gets the same id.
    fn object_key(object: &Self::Object) -> u64;
    /// A fresh local handle for import `id`, told apart from earlier ones by `serial`.
    fn new_import(&self, id: u64, serial: u64) -> <Self::Import as WeakHandle>::Strong;
    /// The capability an import's handle stands for.
    fn import_cap(&self, handle: <Self::Import as WeakHandle>::Strong) -> Self::Cap;
    /// A local object, as a capability received back.
    fn local_cap(&self, object: &Self::Object) -> Self::Cap;
    /// The capability at `path` of a settled value.
    fn cap_at(&self, value: &Self::Value, path: &[PathSeg]) -> Result<Self::Cap, Status>;
    /// A capability that resolves when kept answer `answer` settles, and what
    /// waits in that answer's queue to resolve it.
    fn promise(&self, answer: u64) -> (Self::Cap, Self::Waiting);
    /// A received value: its payload and the capabilities its descriptors became.
    fn value(&self, payload: Payload, caps: Vec<Self::Cap>) -> Self::Value;
    /// An outgoing value's payload and capabilities.
    fn into_parts(value: Self::Value) -> (Payload, Vec<Self::Cap>);
    /// How `cap` travels on this connection.
    fn classify<'a>(&self, cap: &'a Self::Cap) -> Outgoing<'a, Self::Object>;
    /// A call that waits in a kept answer's queue until it settles.
    fn queued_call(&self, start: Start<Self>) -> Self::Waiting
    where
        Self: Sized;
    /// Where the items of a stream question with `reply` go, while its
    /// consumer listens.
    fn item_sink(&self, reply: &Self::Reply) -> Option<Self::ItemSink>;
}

/// The driver's types an answer table holds: the answer table is the one
/// piece every dialect shares (capnweb keeps its pushes in one).
pub(crate) trait AnswerHost {
    /// The driver's part of a running answer: how to stop its handler.
    type Running: Clone;
    /// A value with its capabilities (a kept answer's outcome).
    type Value: Clone;
    /// What waits for a kept answer to settle (a queued call, a promise).
    type Waiting;
}

/// A weak reference to a shared handle (`std::sync::Weak` for the runtime).
pub(crate) trait WeakHandle {
    /// The handle itself.
    type Strong;
    /// The handle, if it is still alive.
    fn upgrade(&self) -> Option<Self::Strong>;
    /// A weak reference to `strong`.
    fn downgrade(strong: &Self::Strong) -> Self;
}

impl<T> WeakHandle for std::sync::Weak<T> {
    type Strong = Arc<T>;
    fn upgrade(&self) -> Option<Arc<T>> {
        std::sync::Weak::upgrade(self)
    }
    fn downgrade(strong: &Arc<T>) -> Self {
        Arc::downgrade(strong)
    }
}

/// A capability in an outgoing value, as the driver classified it.
pub(crate) enum Outgoing<'a, O: Clone> {
    /// A local object: exported (with its registry generation, if served).
    Export(Cow<'a, O>, Option<u64>),
    /// One of the peer's own capabilities, sent back.
    Import(u64),
    /// The capability at `path` of one of this side's kept questions.
    Answer(u64, Cow<'a, [PathSeg]>),
}

/// Where a received call goes, once admitted.
pub(crate) enum Route<H: Host> {
    /// The bootstrap object (capability 0), which the driver answers itself.
    Bootstrap,
    /// The runtime capability (capability 1).
    Runtime,
    /// An exported object, or the capability a settled kept answer holds at a path.
    Object(H::Object),
    /// A capability found at a path of a settled answer (not an export).
    Cap(H::Cap),
    /// The call waits in the queue of kept answer `.0` for the capability at `.1`.
    Queue(u64, Vec<PathSeg>),
}

/// The connection's phase.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Calls go both ways.
    Open,
    /// A `goaway` was sent or received: no new calls; running ones finish.
    Draining(Status),
    /// The session ended; what is left fails with this.
    Ended(Status),
}

/// One connection's protocol state.
pub(crate) struct Core<H: Host> {
    host: H,
    limits: Limits,
    /// The codec this side sends.
    codec: Codec,
    pub(crate) exports: Exports<H::Object>,
    pub(crate) imports: Imports<H::Import>,
    pub(crate) questions: Questions<H::Reply>,
    pub(crate) answers: Answers<H>,
    /// Ids the peer revoked (imports) and ids this side revoked (exports).
    revoked_imports: RevokedIds,
    revoked_exports: RevokedIds,
    phase: Phase,
    /// The status of the peer's `goaway`, which the end of the session reports.
    peer_goaway: Option<Status>,
    /// The peer's method names, shared by the calls that use them.
    method_names: MethodNames,
    /// The peer's `hello` arrived.
    hello_seen: bool,
}

/// What an admitted call needs to start (now, or when its queue delivers).
pub(crate) struct Admitted<H: Host> {
    /// Tells this answer from a later one with the same id.
    pub(crate) serial: u64,
    /// The capability called (`None` for a call on a promised answer).
    pub(crate) cap: Option<u64>,
    pub(crate) method: Arc<str>,
    /// The capabilities of the arguments.
    pub(crate) caps: Vec<H::Cap>,
    pub(crate) route: Route<H>,
    /// The driver's part, as recorded in the table.
    pub(crate) running: H::Running,
}

/// A received call that passed the checks, before it is recorded.
struct Routed<H: Host> {
    kind: AnswerKind,
    method: Arc<str>,
    caps: Vec<H::Cap>,
    route: Route<H>,
}

/// A received call, as the engine needs it.
pub(crate) struct Incoming {
    pub(crate) id: u64,
    pub(crate) target: Target,
    pub(crate) method: String,
    pub(crate) caps: Vec<CapDescriptor>,
    pub(crate) keep: bool,
    pub(crate) stream: bool,
    pub(crate) depth_exceeded: bool,
    /// `deadline_ms` was 0 (protocol.md §5.3: expired on arrival).
    pub(crate) expired: bool,
}

impl<H: Host> Core<H> {
    /// A connection's state, empty.
    pub(crate) fn new(host: H, limits: Limits, codec: Codec) -> Core<H> {
        Core {
            codec,
            revoked_imports: RevokedIds::new(limits.max_revoked_remembered),
            revoked_exports: RevokedIds::new(limits.max_revoked_remembered),
            host,
            limits,
            exports: Exports::default(),
            imports: Imports::default(),
            questions: Questions::default(),
            answers: Answers::default(),
            phase: Phase::Open,
            peer_goaway: None,
            method_names: MethodNames::default(),
            hello_seen: false,
        }
    }

    /// Why the session ended, if it did.
    pub(crate) fn ended(&self) -> Option<&Status> {
        match &self.phase {
            Phase::Ended(s) => Some(s),
            _ => None,
        }
    }

    /// Why no new call may start, if none may (draining or ended).
    pub(crate) fn closing(&self) -> Option<&Status> {
        match &self.phase {
            Phase::Open => None,
            Phase::Draining(s) | Phase::Ended(s) => Some(s),
        }
    }

    /// This side starts closing: no new calls either way.
    pub(crate) fn drain(&mut self, why: Status) {
        if let Phase::Open = self.phase {
            self.phase = Phase::Draining(why);
        }
    }

    /// The peer sent `goaway`.
    pub(crate) fn on_goaway(&mut self, status: Status) {
        self.drain(Status::unavailable(format!(
            "the peer is closing the connection: {status}"
        )));
        self.peer_goaway.get_or_insert(status);
    }

    /// The peer's `goaway`, if it sent one.
    pub(crate) fn peer_goaway(&self) -> Option<&Status> {
        self.peer_goaway.as_ref()
    }

    /// True while questions or unsettled answers remain (what a close waits for).
    pub(crate) fn busy(&self) -> bool {
        self.questions.len() > 0 || self.answers.running() > 0
    }

    // ---- capabilities in values ----------------------------------------

    /// Takes back the introductions of descriptors that were never sent.
    pub(crate) fn unsend(&mut self, sent: &[CapDescriptor]) {
        self.exports.unsend(sent);
    }

    /// Resolves the descriptors of a received value into capabilities.
    #[inline]
    pub(crate) fn resolve(
        &mut self,
        descriptors: Vec<CapDescriptor>,
    ) -> Result<Vec<H::Cap>, Status> {
        if descriptors.is_empty() {
            return Ok(Vec::new());
        }
        descriptors
            .into_iter()
            .map(|d| match d {
                CapDescriptor::Export(id) if id == BOOTSTRAP_CAP || id == RUNTIME_CAP => {
                    Err(Status::protocol_violation(format!(
                        "capability {id} is reserved and cannot be introduced"
                    )))
                }
                CapDescriptor::Export(id) => {
                    let host = &self.host;
                    let handle = self
                        .imports
                        .introduce(id, |serial| host.new_import(id, serial));
                    Ok(self.host.import_cap(handle))
                }
                CapDescriptor::Import(id) => match self.exports.get(id) {
                    Some(e) => Ok(self.host.local_cap(&e.object)),
                    None => Err(self.missing_export(id)),
                },
                CapDescriptor::Answer { id, path } => match self.answers.pipeline_target(id)? {
                    Some(value) => value_at(&self.host, value, &path),
                    None => {
                        self.check_pending_pipelined()?;
                        let (cap, waiting) = self.host.promise(id);
                        self.answers.enqueue(id, path, waiting);
                        Ok(cap)
                    }
                },
            })
            .collect()
    }

    /// Hands back the introductions of a value nobody will receive: the
    /// `release` frames to send.
    pub(crate) fn unwanted(caps: &[CapDescriptor]) -> Vec<Release> {
        // Counted in a map: a value may carry many descriptors, and the
        // peer chooses how many.
        let mut counts: id_map::IdMap<u32> = id_map::IdMap::default();
        for d in caps {
            if let CapDescriptor::Export(id) = d {
                if *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP {
                    let n = counts.entry(*id).or_default();
                    *n = n.saturating_add(1);
                }
            }
        }
        counts
            .into_iter()
            .map(|(cap, n)| Release { cap, n })
            .collect()
    }

    /// The import handle of capability `id` (the peer's bootstrap and runtime
    /// capabilities among them), made if there is none alive.
    pub(crate) fn import_handle(&mut self, id: u64) -> <H::Import as WeakHandle>::Strong {
        let host = &self.host;
        self.imports
            .introduce(id, |serial| host.new_import(id, serial))
    }

    /// What a call on a missing export hears.
    fn missing_export(&self, id: u64) -> Status {
        if self.exports.is_revoked(id) || self.revoked_exports.contains(id) {
            Status::revoked(format!("capability {id}"))
        } else {
            Status::new(Code::NotFound, format!("capability {id} is not exported"))
        }
    }

    fn check_pending_pipelined(&self) -> Result<(), Status> {
        let max = self.limits.max_pending_pipelined;
        if self.answers.pending_pipelined() >= max {
            return Err(Status::limit(Reason::MAX_PENDING_PIPELINED, max as u64));
        }
        Ok(())
    }

    // ---- the callee's side -----------------------------------------------

    /// Admits a received call: `Ok(Err(status))` answers it at once with
    /// `status` (limits, unknown target, expired deadline); `Err` is a
    /// connection-fatal violation. An admitted call is in the answer table
    /// with `running` as the driver's part; a queued one waits for its
    /// answer to settle.
    #[inline]
    pub(crate) fn admit(
        &mut self,
        call: Incoming,
        running: impl FnOnce() -> H::Running,
    ) -> Result<Result<Admitted<H>, Status>, Status> {
        let id = call.id;
        if self.answers.contains(id) {
            // Reusing a live question id ([S12]); answering it would cross
            // two calls' answers, so the connection ends instead.
            return Err(Status::protocol_violation(format!(
                "call {id} reuses the id of a call still running"
            )));
        }
        let kept = call.keep && !call.stream;
        let cap = match call.target {
            Target::Cap(cap) => Some(cap),
            Target::Answer { .. } => None,
        };
        match self.route(call) {
            Ok(Routed {
                kind,
                method,
                caps,
                route,
            }) => {
                let queued = matches!(route, Route::Queue(..));
                let running = running();
                let serial = self.answers.insert(id, cap, kind, queued, running.clone());
                Ok(Ok(Admitted {
                    serial,
                    cap,
                    method,
                    caps,
                    route,
                    running,
                }))
            }
            Err(status) => {
                // A kept call answered without running still holds its
                // (failed) answer until `finish`, so that calls pipelined on
                // it fail with its error, not `not_found` ([S14]). Bounded:
                // these count against `max_in_flight_in` like any answer.
                if kept && self.answers.len() < self.limits.max_in_flight_in {
                    self.answers
                        .insert_failed(id, cap, running(), status.clone());
                }
                Ok(Err(status))
            }
        }
    }

    /// Checks a received call against the limits and finds its target.
    #[inline]
    fn route(&mut self, call: Incoming) -> Result<Routed<H>, Status> {
        let Incoming {
            target,
            method,
            caps,
            keep,
            stream,
            depth_exceeded,
            expired,
            ..
        } = call;
        if depth_exceeded {
            let max = self.limits.max_depth as u64;
            return Err(Status::limit(Reason::MAX_VALUE_DEPTH, max));
        }
        if expired {
            return Err(deadline::expired_on_arrival(&method));
        }
        let limits = &self.limits;
        if let Some(s) = self.closing() {
            return Err(Status::unavailable(s.message.clone()));
        }
        if self.answers.len() >= limits.max_in_flight_in {
            let max = limits.max_in_flight_in as u64;
            return Err(Status::limit(Reason::MAX_CONCURRENT_CALLS, max));
        }
        if stream && self.answers.streams() >= limits.max_open_streams {
            let max = limits.max_open_streams as u64;
            return Err(Status::limit(Reason::MAX_OPEN_STREAMS, max));
        }
        let route = match target {
            Target::Cap(BOOTSTRAP_CAP) => Route::Bootstrap,
            Target::Cap(RUNTIME_CAP) => Route::Runtime,
            Target::Cap(cap) => match self.exports.get(cap) {
                Some(e) => Route::Object(e.object.clone()),
                None => return Err(self.missing_export(cap)),
            },
            Target::Answer { id: answer, path } => match self.answers.pipeline_target(answer)? {
                Some(value) => Route::Cap(value_at(&self.host, value, &path)?),
                None => {
                    self.check_pending_pipelined()?;
                    Route::Queue(answer, path)
                }
            },
        };
        let caps = self.resolve(caps)?;
        let kind = match (stream, keep) {
            (true, _) => AnswerKind::Stream,
            (false, true) => AnswerKind::Kept,
            (false, false) => AnswerKind::Plain,
        };
        let method = self.method_names.intern(method);
        Ok(Routed {
            kind,
            method,
            caps,
            route,
        })
    }

    /// The caller cancelled answer `id`: the handler to stop, or, for a call
    /// still queued on another answer, `Refusal` (answer it at once: it never
    /// started, [S21]).
    pub(crate) fn on_cancel(&mut self, id: u64) -> Option<Result<H::Running, Refusal>> {
        let status = Status::new(Code::Cancelled, "the caller cancelled the call");
        self.answers.stop(id, status)
    }

    /// The caller finished kept answer `id`: what to drop (outside any lock),
    /// and the handler to stop if it had not settled.
    pub(crate) fn on_finish(&mut self, id: u64) -> answers::Finished<H> {
        self.answers.finish(id)
    }

    /// The peer released `n` introductions of export `cap`.
    pub(crate) fn on_release(&mut self, cap: u64, n: u32) -> Result<(), Status> {
        self.exports.release(cap, n)
    }

    /// The handler of answer `id` finished: `None` when nothing is to be sent
    /// (the session ended, or the answer is gone); otherwise the outcome to
    /// send (a stopped handler's is why it was stopped), and whether the
    /// answer is kept (its outcome stays for pipelining).
    #[inline]
    pub(crate) fn on_answered(
        &mut self,
        id: u64,
        result: Option<Result<H::Value, Status>>,
    ) -> Option<(Result<H::Value, Status>, bool)> {
        if self.ended().is_some() {
            self.answers.remove(id);
            return None;
        }
        let (life, kind) = self.answers.life_and_kind(id)?;
        let result = match (result, life) {
            (Some(r), _) => r,
            (None, Life::Stopping(why)) => Err((**why).clone()),
            (None, _) => Err(Status::new(Code::Cancelled, "the call was cancelled")),
        };
        Some((result, kind == AnswerKind::Kept))
    }

    /// Stops every handler running on one of `caps` (they were revoked).
    fn stop_for_caps(&mut self, caps: &[u64], status: &Status) -> Vec<H::Running> {
        self.answers.stop_for_caps(caps, status)
    }

    /// The registry revoked `generation`: the export ids to announce in
    /// `revoked`, and the handlers to stop.
    pub(crate) fn revoke_generation(&mut self, generation: u64) -> (Vec<u64>, Vec<H::Running>) {
        if self.ended().is_some() {
            return (Vec::new(), Vec::new());
        }
        let ids = self.exports.revoke_generation(generation);
        for id in &ids {
            self.revoked_exports.insert(*id);
        }
        let stop = self.stop_for_caps(&ids, &Status::revoked("the capability"));
        (ids, stop)
    }

    // ---- the caller's side -----------------------------------------------

    /// May this side call `cap` now? (`None` for a call on a promised answer.)
    #[inline]
    pub(crate) fn may_call(&self, method: &str, cap: Option<u64>) -> Result<(), Status> {
        if let Some(s) = self.closing() {
            return Err(Status::unavailable(format!(
                "cannot call `{method}`: {}",
                s.message
            )));
        }
        if let Some(cap) = cap {
            if self.revoked_imports.contains(cap) {
                return Err(Status::revoked(format!("capability {cap}")));
            }
        }
        let max = self.limits.max_in_flight_out;
        if self.questions.len() >= max {
            return Err(Status::limit(Reason::MAX_CONCURRENT_CALLS, max as u64));
        }
        Ok(())
    }

    /// The peer revoked `caps`: the `release`s that hand back every
    /// introduction now ([S23]) and the questions to fail (streams among
    /// them stay until their terminal frame, and are returned to be told).
    pub(crate) fn on_revoked(
        &mut self,
        caps: &mut Vec<u64>,
    ) -> (Vec<Release>, Vec<questions::Question<H::Reply>>, Vec<u64>) {
        // Ids 0 and 1 cannot be revoked.
        caps.retain(|id| *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP);
        let mut releases = Vec::new();
        for id in caps.iter() {
            self.revoked_imports.insert(*id);
            // The exporter keeps the revoked entry until its count reaches 0;
            // the live handle, when dropped, finds no entry and releases nothing.
            if let Some(n) = self.imports.remove(*id) {
                releases.push(Release { cap: *id, n });
            }
        }
        let (failed, streams) = self.questions.fail_for_caps(caps);
        (releases, failed, streams)
    }

    /// The last local handle of import `id` (serial `serial`) is gone: the
    /// `release` to send, if any.
    pub(crate) fn on_import_dropped(&mut self, id: u64, serial: u64) -> Option<Release> {
        let n = self.imports.dropped(id, serial);
        if self.ended().is_some() || id == BOOTSTRAP_CAP || id == RUNTIME_CAP {
            return None;
        }
        n.map(|n| Release { cap: id, n })
    }

    // ---- the end -----------------------------------------------------------

    /// Ends the session: returns the pending questions (to fail), the
    /// answers (to stop, then drop outside any lock). `None` if it had ended.
    pub(crate) fn end(&mut self, status: Status) -> Option<Ended<H>> {
        if self.ended().is_some() {
            return None;
        }
        self.phase = Phase::Ended(status.clone());
        let answers = self.answers.clear();
        self.exports.clear();
        self.imports.clear();
        Some(Ended {
            questions: self.questions.drain(),
            answers,
        })
    }
}

/// What is left when a session ends.
pub(crate) struct Ended<H: Host> {
    pub(crate) questions: Vec<questions::Question<H::Reply>>,
    pub(crate) answers: Vec<answers::Answer<H>>,
}

/// Describes `caps` into descriptors, exporting into `exports` (all or nothing).
fn describe<'a, H: Host>(
    exports: &mut Exports<H::Object>,
    max: usize,
    caps: impl IntoIterator<Item = Outgoing<'a, H::Object>>,
) -> Result<Vec<CapDescriptor>, Status>
where
    H::Object: 'a,
{
    let caps = caps.into_iter();
    let mut described = Vec::with_capacity(caps.size_hint().0);
    for cap in caps {
        let d = match cap {
            Outgoing::Export(object, generation) => exports
                .export(H::object_key(&object), &object, generation, max)
                .map(CapDescriptor::Export),
            Outgoing::Import(id) => Ok(CapDescriptor::Import(id)),
            Outgoing::Answer(id, path) => Ok(CapDescriptor::Answer {
                id,
                path: path.into_owned(),
            }),
        };
        match d {
            Ok(d) => described.push(d),
            Err(status) => {
                exports.unsend(&described);
                return Err(status);
            }
        }
    }
    Ok(described)
}

/// The capability at `path` of a settled outcome (an error settles every path with it).
fn value_at<H: Host>(
    host: &H,
    outcome: &Result<H::Value, Status>,
    path: &[PathSeg],
) -> Result<H::Cap, Status> {
    match outcome {
        Ok(value) => host.cap_at(value, path),
        Err(status) => Err(status.clone()),
    }
}
