//! Received frames: [`Core::on_frame`] applies one to the tables and says
//! what the driver must do about it ([`Action`]). The first frame must be
//! `hello`; after it, every frame of protocol.md §5 is decided here.

use capwire_proto::{
    Call, CallResult, Cancel, Code, Finish, Frame, Goaway, Outcome, Payload, Ping, Pong, Reason,
    Release, Revoked, Status, StreamEnd, StreamError, StreamItem, PROTOCOL_VERSION,
};
use tokio::time::Instant;

use super::answers::{Answer, Finished};
use super::deadline::Arrival;
use super::questions::{ItemFor, Question};
use super::{Admitted, Core, Host, Incoming, Route};

/// Everything a handler needs to start: the call, as the engine admitted it.
pub(crate) struct Start<H: Host> {
    /// The question id the caller chose.
    pub(crate) id: u64,
    /// Tells this answer from a later one with the same id.
    pub(crate) serial: u64,
    /// The capability called (`None` for a call on a promised answer).
    pub(crate) cap: Option<u64>,
    pub(crate) method: std::sync::Arc<str>,
    pub(crate) args: H::Value,
    /// When the caller stops waiting.
    pub(crate) deadline: Option<Instant>,
    /// The driver's part, made when the call was admitted.
    pub(crate) running: H::Running,
}

/// What the driver does about a received frame.
pub(crate) enum Action<H: Host> {
    /// Nothing.
    None,
    /// The peer's `hello`: the largest frame it accepts, if it said.
    Hello { max_frame_bytes: Option<usize> },
    /// Send this frame.
    Send(Frame),
    /// Hand back introductions nobody will receive.
    Release(Vec<Release>),
    /// Answer call `id` at once with `status`: it does not run.
    Reject {
        id: u64,
        stream: bool,
        status: Status,
    },
    /// Run the handler of an admitted call on `route` (never `Queue`: a
    /// queued call waits in its answer's queue, built by the host).
    Run(Start<H>, Route<H>),
    /// Stop a running handler.
    Stop(H::Running),
    /// An answer left the table: drop it outside any lock.
    Freed(Box<Answer<H>>),
    /// Question `id` was answered: tell its caller.
    Settle {
        id: u64,
        question: Question<H::Reply>,
        outcome: Result<H::Value, Status>,
    },
    /// An item for a stream question's consumer.
    Item {
        sink: H::ItemSink,
        item: Result<H::Value, Status>,
    },
    /// Stream question `id` ended (`err` is `None` for `end`); `open` says
    /// whether its consumer still listens.
    StreamEnd {
        id: u64,
        question: Question<H::Reply>,
        open: bool,
        err: Option<Status>,
    },
    /// The peer revoked `caps`: hand back their introductions, fail the
    /// calls on them, tell the streams on them.
    Revoked {
        caps: Vec<u64>,
        releases: Vec<Release>,
        failed: Vec<Question<H::Reply>>,
        streams: Vec<H::ItemSink>,
    },
    /// The consumer of a stream answer allows `n` more items.
    Credit(H::Running, u32),
    /// The pong for this side's ping `nonce`.
    Pong(u64),
    /// The peer sent `goaway` (already applied: no new calls).
    Goaway(Status),
}

impl<H: Host> Core<H> {
    /// Applies one received frame. `Err` is a connection-fatal violation
    /// (the driver sends `goaway` and ends); `now` is the time (read only
    /// for a call with a deadline); `running` makes the driver's part of an
    /// answer the call frame admits (given the stream window).
    #[inline]
    pub(crate) fn on_frame(
        &mut self,
        frame: Frame,
        now: impl FnOnce() -> Instant,
        running: impl FnOnce(Option<u32>) -> H::Running,
    ) -> Result<Action<H>, Status> {
        if !self.hello_seen {
            return self.on_hello(frame);
        }
        // The frames of a call's path return the callee's result as it is
        // (no unwrap and rewrap of a large value).
        let frame = match frame {
            Frame::Call(call) => return self.on_call(call, now, running),
            Frame::Result(result) => return self.on_result(result),
            Frame::Item(item) => return self.on_item(item),
            other => other,
        };
        Ok(match frame {
            Frame::Hello(_) => return Err(Status::protocol_violation("a second hello")),
            Frame::Cancel(Cancel { id }) => match self.on_cancel(id) {
                Some(Ok(running)) => Action::Stop(running),
                // It never started: answered here ([S21]).
                Some(Err(refusal)) => Action::Reject {
                    id,
                    stream: refusal.stream,
                    status: Status::new(Code::Cancelled, "the caller cancelled the call"),
                },
                None => Action::None,
            },
            Frame::Finish(Finish { id }) => match self.on_finish(id) {
                Finished::Nothing => Action::None,
                Finished::Stop(running) => Action::Stop(running),
                Finished::Refused(refusal) => Action::Reject {
                    id,
                    stream: refusal.stream,
                    status: Status::new(Code::Cancelled, "the caller finished the question"),
                },
                Finished::Freed(answer) => Action::Freed(answer),
            },
            Frame::Release(Release { cap, n }) => {
                self.on_release(cap, n)?;
                Action::None
            }
            Frame::Revoked(Revoked { mut caps }) => {
                let (releases, failed, streams) = self.on_revoked(&mut caps);
                let streams = streams
                    .into_iter()
                    .filter_map(|id| self.questions.get(id))
                    .filter_map(|q| self.host.item_sink(&q.reply))
                    .collect();
                Action::Revoked {
                    caps,
                    releases,
                    failed,
                    streams,
                }
            }
            Frame::Goaway(Goaway { status, .. }) => {
                self.on_goaway(status.clone());
                Action::Goaway(status)
            }
            Frame::Ping(Ping { nonce }) => Action::Send(Frame::Pong(Pong { nonce })),
            Frame::Pong(Pong { nonce }) => Action::Pong(nonce),
            // Unknown or ended streams: the credit crossed the terminal frame.
            Frame::Credit(capwire_proto::Credit { id, n }) => match self.answers.stream(id) {
                Some(running) => Action::Credit(running.clone(), n),
                None => Action::None,
            },
            Frame::End(StreamEnd { id }) => self.on_stream_end(id, None)?,
            Frame::StreamError(StreamError { id, err }) => self.on_stream_end(id, Some(err))?,
            other => {
                return Err(Status::protocol_violation(format!(
                    "unexpected `{}` frame",
                    other.op()
                )))
            }
        })
    }

    fn on_hello(&mut self, frame: Frame) -> Result<Action<H>, Status> {
        match frame {
            Frame::Hello(h) if h.v == PROTOCOL_VERSION => {
                self.hello_seen = true;
                let max_frame_bytes = h
                    .limits
                    .max_frame_bytes
                    .map(|max| usize::try_from(max).unwrap_or(usize::MAX));
                Ok(Action::Hello { max_frame_bytes })
            }
            Frame::Hello(h) => Err(Status::new(
                Code::FailedPrecondition,
                format!(
                    "protocol version {} is not supported; this peer speaks {PROTOCOL_VERSION}",
                    h.v
                ),
            )
            .with_reason(Reason::VERSION_MISMATCH)),
            other => Err(Status::protocol_violation(format!(
                "`{}` frame before hello",
                other.op()
            ))),
        }
    }

    #[inline]
    fn on_call(
        &mut self,
        call: Call,
        now: impl FnOnce() -> Instant,
        running: impl FnOnce(Option<u32>) -> H::Running,
    ) -> Result<Action<H>, Status> {
        let Call {
            id,
            target,
            method,
            args,
            caps,
            deadline_ms,
            keep,
            stream,
            ..
        } = call;
        let arrival = Arrival::from_wire(deadline_ms, now);
        let incoming = Incoming {
            id,
            target,
            method,
            caps,
            keep,
            stream: stream.is_some(),
            depth_exceeded: args.exceeds_depth(self.limits.max_depth),
            expired: arrival == Arrival::Expired,
        };
        let admitted = match self.admit(incoming, || running(stream))? {
            Ok(admitted) => admitted,
            Err(status) => {
                return Ok(Action::Reject {
                    id,
                    stream: stream.is_some(),
                    status,
                })
            }
        };
        let Admitted {
            serial,
            cap,
            method,
            caps,
            route,
            running,
        } = admitted;
        let start = Start {
            id,
            serial,
            cap,
            method,
            args: self.host.value(args, caps),
            deadline: arrival.instant(),
            running,
        };
        Ok(match route {
            Route::Queue(answer, path) => {
                let waiting = self.host.queued_call(start);
                self.answers.enqueue(answer, path, waiting);
                Action::None
            }
            route => Action::Run(start, route),
        })
    }

    /// A received value: its capabilities imported, its depth checked. The
    /// capabilities are imported even when the value is refused, so that
    /// dropping them releases the introductions the peer counted.
    #[inline]
    fn received(
        &mut self,
        value: Payload,
        caps: Vec<capwire_proto::CapDescriptor>,
    ) -> Result<H::Value, Status> {
        let max_depth = self.limits.max_depth;
        let caps = self.resolve(caps)?;
        if value.exceeds_depth(max_depth) {
            return Err(Status::limit(Reason::MAX_VALUE_DEPTH, max_depth as u64));
        }
        Ok(self.host.value(value, caps))
    }

    #[inline]
    fn on_result(&mut self, result: CallResult) -> Result<Action<H>, Status> {
        let CallResult { id, outcome } = result;
        let Some(question) = self.questions.take_for_result(id)? else {
            // A result for a question this side stopped waiting on
            // (cancelled, timed out, finished) is dropped ([S19]); what it
            // introduced goes back.
            return Ok(match outcome {
                Outcome::Ok { caps, .. } => Action::Release(Self::unwanted(&caps)),
                Outcome::Err(_) => Action::None,
            });
        };
        let outcome = match outcome {
            Outcome::Ok { value, caps } => self.received(value, caps),
            Outcome::Err(status) => Err(status),
        };
        Ok(Action::Settle {
            id,
            question,
            outcome,
        })
    }

    #[inline]
    fn on_item(&mut self, item: StreamItem) -> Result<Action<H>, Status> {
        let StreamItem { id, value, caps } = item;
        let sink = match self.questions.on_item(id)? {
            ItemFor::Deliver(reply) => self.host.item_sink(reply),
            ItemFor::Discard => None,
        };
        let Some(sink) = sink else {
            // Cancelled: discarded, its introductions handed back.
            return Ok(Action::Release(Self::unwanted(&caps)));
        };
        let item = self.received(value, caps);
        Ok(Action::Item { sink, item })
    }

    fn on_stream_end(&mut self, id: u64, err: Option<Status>) -> Result<Action<H>, Status> {
        let (question, open) = self.questions.on_stream_end(id)?;
        Ok(Action::StreamEnd {
            id,
            question,
            open,
            err,
        })
    }
}
