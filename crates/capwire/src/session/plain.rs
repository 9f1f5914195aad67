//! The caller's end of a plain call: a question on the wire and the wait
//! for its one result.
//!
//! [`PlainCall`] is a hand-written future rather than an `async fn`: it is
//! what most calls are, and as a plain struct it lives inline in the
//! caller's promise — no boxed state machine, no copy of one. It is started
//! synchronously ([`Shared::start_plain`]: the question is in the table and
//! its frame queued before it is first polled to completion), then only waits.

use super::deadline;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use capwire_proto::{Cancel, Code, Frame, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caller::OutCall;
use super::Reply;
use super::{cancelled, Shared};
use crate::capability::Capability;
use crate::engine::questions::QuestionKind;
use crate::events::{Direction, Event, Started};
use crate::promise::MethodName;
use crate::value::Value;

/// A plain call that was sent. Dropping it before the result came cancels
/// the call at the callee; its outcome is counted and reported exactly once
/// (a dropped call counts as `cancelled`).
pub(crate) struct PlainCall {
    shared: Arc<Shared>,
    id: u64,
    cap: u64,
    method: MethodName,
    started: Started,
    wait: Wait,
    /// The question is in the table and the peer may be running it.
    pending: bool,
    /// The outcome is in the counters and was emitted.
    recorded: bool,
    /// The arguments and the target: promises among them stay alive (their
    /// answers kept at the callee) until this call's answer came.
    _keep: (Vec<Capability>, Option<Capability>),
}

enum Wait {
    /// Nothing can end the wait but the result (or the connection's end).
    Reply(oneshot::Receiver<Result<Value, Status>>),
    /// The result, the deadline or the parent's cancel, whichever comes
    /// first; the flag says whether it was the result. Boxed: the timer and
    /// the waiter are large, and only calls with a deadline or a parent pay.
    Bounded(BoxFuture<'static, (Result<Value, Status>, bool)>),
    Done,
}

impl Shared {
    /// Sends a plain call (two frames, nothing kept) and returns the wait for
    /// its result. The promises among `args` must have been sent already.
    pub(crate) fn start_plain(
        self: &Arc<Self>,
        call: OutCall<'_>,
        target_handle: Option<Capability>,
    ) -> Result<PlainCall, Status> {
        let started = self.started();
        let (tx, reply) = oneshot::channel();
        let cap = call.target.cap().unwrap_or(u64::MAX);
        let method = call.method.clone();
        let deadline = call.deadline;
        let parent = call.scope.as_ref().map(|s| s.cancel.clone());
        let (ask, caps) = call.ask(QuestionKind::Plain);
        let (id, frame) = self.prepare(ask, &caps, Reply::Once(tx))?;
        let mut call = PlainCall {
            shared: self.clone(),
            id,
            cap,
            method,
            started,
            wait: Wait::Done,
            pending: true,
            recorded: false,
            _keep: (caps, target_handle),
        };
        if let Err(status) = self.send_question(id, frame) {
            call.pending = false;
            call.record(status.code);
            return Err(status);
        }
        call.wait = if deadline.is_none() && parent.is_none() {
            Wait::Reply(reply)
        } else {
            Wait::Bounded(wait_bounded(reply, call.method.clone(), deadline, parent).boxed())
        };
        Ok(call)
    }
}

impl PlainCall {
    fn record(&mut self, outcome: Code) {
        self.recorded = true;
        self.shared.counters.call_done(outcome);
        self.shared.emit_with(|| Event::Call {
            direction: Direction::Outgoing,
            cap: self.cap,
            method: self.method.to_string(),
            id: self.id,
            duration: self.started.elapsed(),
            outcome,
        });
    }

    /// Stops waiting: the question leaves the table and the callee hears
    /// `cancel` (unless the result got there first).
    fn give_up(&mut self) {
        self.pending = false;
        if self.shared.lock().questions.remove(self.id).is_some() {
            self.shared
                .send_nowait(Frame::Cancel(Cancel { id: self.id }));
            self.shared.notify_settled();
        }
    }
}

impl Future for PlainCall {
    type Output = Result<Value, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (outcome, answered) = match &mut this.wait {
            Wait::Reply(reply) => match Pin::new(reply).poll(cx) {
                Poll::Ready(r) => (r.unwrap_or_else(|_| Err(closed())), true),
                Poll::Pending => return Poll::Pending,
            },
            Wait::Bounded(wait) => match wait.poll_unpin(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            Wait::Done => {
                return Poll::Ready(Err(Status::new(
                    Code::FailedPrecondition,
                    "the call was already answered",
                )))
            }
        };
        this.wait = Wait::Done;
        if answered {
            this.pending = false;
        } else {
            // The deadline passed or the parent was cancelled.
            this.give_up();
        }
        this.record(outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok));
        Poll::Ready(outcome)
    }
}

impl Drop for PlainCall {
    fn drop(&mut self) {
        if self.pending {
            self.give_up();
        }
        if !self.recorded {
            self.record(Code::Cancelled);
        }
    }
}

fn closed() -> Status {
    Status::unavailable("the connection closed")
}

async fn wait_bounded(
    reply: oneshot::Receiver<Result<Value, Status>>,
    method: MethodName,
    deadline: Option<Instant>,
    parent: Option<CancellationToken>,
) -> (Result<Value, Status>, bool) {
    tokio::select! {
        r = reply => (r.unwrap_or_else(|_| Err(closed())), true),
        _ = deadline::sleep_until(deadline) => (Err(Status::new(
            Code::DeadlineExceeded,
            format!("`{}` did not answer before its deadline", &*method),
        )), false),
        _ = cancelled(parent) => (Err(Status::new(Code::Cancelled, "the parent call was cancelled")), false),
    }
}
