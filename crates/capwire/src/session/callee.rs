//! The callee's side: admitting a received `call` (limits, target, queueing
//! on a kept answer), running its handler inline or as a supervised task,
//! sending its `result`, and settling kept answers for pipelining.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use capwire_proto::{CallResult, CapDescriptor, Code, Frame, Outcome, Status, StreamError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::capability::Capability;
use crate::engine::Answering;
use crate::events::{Direction, Event, Started};
use crate::object::{CallContext, Object};
use crate::value::Value;

use super::{deadline, object_of, pipeline, CallScope, Failing, Queued, Running, Shared, SCOPE};

/// Everything needed to start answering a call, now or when the answer it
/// is pipelined on settles.
pub(crate) type StartAnswer = crate::engine::Start<super::Live>;

/// What to do once an answer's `result` went out (or could not).
pub(super) struct Answered {
    /// The introductions it carries, taken back if it cannot be sent.
    pub(super) sent_caps: Vec<CapDescriptor>,
    pub(super) code: Code,
    /// For a kept answer, the outcome to pipeline on.
    pub(super) kept: Option<Result<Value, Status>>,
}

/// Polls `fut` once here, and spawns it only if it has to wait.
///
/// Answers start in the order the reader started them, and a handler that
/// completes without waiting is answered on the reader's task (no
/// thread hop on the hot path). A future that returns `Pending` must have
/// registered the waker of *this* poll; the spawned task polls it again
/// first thing, which registers its own.
pub(crate) fn start_inline(fut: impl Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    // Handlers run inside `guarded`, which turns their panics into errors;
    // this catches what is left (a bug here), without taking the reader down.
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(fut);
        }
        Err(_) => tracing::error!("an answer panicked outside its handler"),
    }
}

/// Runs application code (a handler or stream opener) in the call's scope:
/// calls it makes belong to this call, and a panic becomes `internal`.
pub(crate) fn guarded<T: Send + 'static>(
    scope: CallScope,
    method: &str,
    make: impl FnOnce() -> BoxFuture<'static, Result<T, Status>>,
) -> impl Future<Output = Result<T, Status>> + Send + 'static {
    let panicked = {
        let method = method.to_owned();
        move || handler_panicked(&method)
    };
    let made = SCOPE.sync_scope(scope.clone(), || {
        std::panic::catch_unwind(AssertUnwindSafe(make))
    });
    let fut = match made {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .map(move |r| r.unwrap_or_else(|_| Err(panicked())))
            .boxed(),
        Err(_) => {
            let status = panicked();
            async move { Err(status) }.boxed()
        }
    };
    SCOPE.scope(scope, fut)
}

/// What a caller hears of a handler that panicked (logged here).
pub(super) fn handler_panicked(method: &str) -> Status {
    tracing::error!(method = %method, "a handler panicked");
    Status::new(
        Code::Internal,
        format!("the handler of `{method}` panicked"),
    )
}

/// Runs an answer's future until it ends, is cancelled, or passes `stop_at`.
/// `None` means it was cancelled; the answer entry says why.
pub(super) async fn supervise<T>(
    run: impl Future<Output = Result<T, Status>>,
    method: &str,
    stop_at: Option<Instant>,
    cancel: &CancellationToken,
) -> Option<Result<T, Status>> {
    tokio::pin!(run);
    // `run` outlives the select so that its token is cancelled before it is
    // dropped: a handler (and the calls it made) being torn down by its
    // deadline sees `ctx.is_cancelled()` like one stopped by a cancel.
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        _ = deadline::sleep_until(stop_at) => Some(Err(deadline::ran_past(method))),
        r = &mut run => return Some(r),
    };
    cancel.cancel();
    outcome
}

impl Shared {
    /// Answers a call with an error at once, without running anything.
    pub(super) fn reject(self: &Arc<Self>, id: u64, stream: bool, status: Status) {
        self.counters.call_done(status.code);
        self.send_nowait(if stream {
            Frame::StreamError(StreamError { id, err: status })
        } else {
            Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            })
        });
    }

    /// Runs an answer: inline on this task until its first wait, so that
    /// calls start in the order they arrived (E-order) and a handler that
    /// does not wait is answered without a task switch; then as a task.
    pub(super) fn start_answer(
        self: &Arc<Self>,
        start: StartAnswer,
        object: Option<Arc<dyn Object>>,
    ) {
        match object {
            Some(object) if start.running.credit.is_none() => self.start_call(start, object),
            object => self.start_other(start, object),
        }
    }

    /// A call on an object: the handler's future is polled once here, in
    /// the call's scope. One that completes is answered on the spot, with no
    /// task, box or timer beyond the handler's own; one that
    /// waits becomes a task, supervised for cancellation and its deadline.
    pub(super) fn start_call(self: &Arc<Self>, start: StartAnswer, object: Arc<dyn Object>) {
        let StartAnswer {
            id,
            cap,
            method,
            args,
            deadline,
            running: Running {
                cancel, started, ..
            },
            ..
        } = start;
        let idempotent = object.is_idempotent(&method);
        let stop_at = deadline::stop_at(deadline, self.config.deadline_grace, idempotent);
        // What `supervise` checks before it polls the handler: a call that
        // waited in a pipeline queue may be stopped or past its deadline.
        if cancel.is_cancelled() {
            return self.finish_answer_now(id, cap, &method, started, None);
        }
        if deadline::passed(stop_at, Instant::now) {
            let late = Err(deadline::ran_past(&method));
            cancel.cancel();
            return self.finish_answer_now(id, cap, &method, started, Some(late));
        }
        let (ctx, scope) = self.call_context(id, &method, deadline, &cancel);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let first = SCOPE.sync_scope(scope, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut fut = object.call(&method, args, ctx);
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => Ok(result),
                    Poll::Pending => Err(fut),
                }
            }))
        });
        let fut = match first {
            Ok(Ok(result)) => {
                return self.finish_answer_now(id, cap, &method, started, Some(result))
            }
            Err(_panic) => {
                let result = Err(handler_panicked(&method));
                return self.finish_answer_now(id, cap, &method, started, Some(result));
            }
            Ok(Err(fut)) => fut,
        };
        // It waits: the task polls it again first thing, which registers the
        // task's waker in place of the no-op one of the first poll.
        let scope = CallScope {
            cancel: cancel.clone(),
            deadline,
            answer: id,
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let run = {
                let method = method.clone();
                SCOPE.scope(
                    scope,
                    AssertUnwindSafe(fut)
                        .catch_unwind()
                        .map(move |r| r.unwrap_or_else(|_| Err(handler_panicked(&method)))),
                )
            };
            let result = supervise(run, &method, stop_at, &cancel).await;
            shared
                .finish_answer(id, cap, &method, started, result)
                .await;
        });
    }

    /// Streams, and calls on the bootstrap object (`object` is `None`): the
    /// whole answer as one future, started inline.
    pub(super) fn start_other(
        self: &Arc<Self>,
        start: StartAnswer,
        object: Option<Arc<dyn Object>>,
    ) {
        let shared = self.clone();
        let span =
            tracing::debug_span!("answer", cap = start.cap, method = %start.method, id = start.id);
        let run = async move {
            if let Some(credit) = start.running.credit.clone() {
                return shared.run_stream(start, object, credit).await;
            }
            let StartAnswer {
                id,
                cap,
                method,
                args,
                deadline,
                running: Running {
                    cancel, started, ..
                },
                ..
            } = start;
            // `start_answer` sends calls on objects to `start_call`.
            debug_assert!(object.is_none());
            let result = shared.run_bootstrap(&method, args, deadline, cancel).await;
            shared
                .finish_answer(id, cap, &method, started, result)
                .await;
        };
        start_inline(run.instrument(span));
    }

    /// Delivers what waited for a kept answer, in arrival order.
    pub(super) fn deliver(self: &Arc<Self>, item: Queued, resolved: Result<Capability, Status>) {
        match item {
            Queued::Promise(answer) => answer.resolve(resolved),
            Queued::Call(start) => {
                if !self.lock().answers.dequeue(start.id, start.serial) {
                    // Cancelled while it waited, and answered then.
                    return;
                }
                let object = match resolved {
                    Ok(cap) => object_of(cap),
                    Err(status) => Arc::new(Failing(status)),
                };
                self.start_answer(*start, Some(object));
            }
        }
    }

    /// Kept answer `id` settled: keep its outcome for pipelining and deliver
    /// its queue. Calls that arrive meanwhile queue behind (\[S15\]).
    pub(super) fn settle(self: &Arc<Self>, id: u64, outcome: Result<Value, Status>) {
        let mut batch = self.lock().answers.settle(id, outcome.clone());
        loop {
            for item in batch {
                let resolved = pipeline::resolve(&outcome, &item.path);
                self.deliver(item.waiting, resolved);
            }
            let next = self.lock().answers.next_batch(id);
            match next {
                Ok(more) => batch = more,
                Err(freed) => {
                    if freed.is_some() {
                        drop(freed);
                        self.notify_settled();
                    }
                    return;
                }
            }
        }
    }

    /// What the handler of answer `id` is told, and the scope the calls it
    /// makes inherit.
    pub(super) fn call_context(
        &self,
        id: u64,
        method: &Arc<str>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> (CallContext, CallScope) {
        let ctx = CallContext {
            method: method.clone(),
            call_id: Some(id),
            deadline,
            cancel: cancel.clone(),
            attestation: self.attestation.clone(),
        };
        let scope = CallScope {
            cancel: cancel.clone(),
            deadline,
            answer: id,
        };
        (ctx, scope)
    }

    /// Sends the result of answer `id` and retires it, waiting for room in
    /// the transport queue (a handler task).
    pub(super) async fn finish_answer(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        result: Option<Result<Value, Status>>,
    ) {
        let Some((frame, answered)) = self.answered(id, result) else {
            return;
        };
        let sent = self.send(frame).await;
        self.retire_answer(id, cap, method, started, answered, sent);
    }

    /// [`Shared::finish_answer`] for an answer computed without waiting: the
    /// result is queued without waiting for room. On the reader, the reader
    /// bounds that backlog between frames; for calls a settling kept answer
    /// delivers from a handler task, `max_pending_pipelined` does.
    pub(super) fn finish_answer_now(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        result: Option<Result<Value, Status>>,
    ) {
        let Some((frame, answered)) = self.answered(id, result) else {
            return;
        };
        let sent = self.send_queued(&frame);
        self.retire_answer(id, cap, method, started, answered, sent);
    }

    /// The `result` frame for answer `id`, with the capabilities it
    /// introduces; `None` when nothing is to be sent (the session ended, or
    /// the answer is gone).
    pub(super) fn answered(
        self: &Arc<Self>,
        id: u64,
        result: Option<Result<Value, Status>>,
    ) -> Option<(Frame, Answered)> {
        let Answering {
            frame,
            sent_caps,
            code,
            kept,
        } = self.lock().answer(id, result)?;
        Some((
            frame,
            Answered {
                sent_caps,
                code,
                kept,
            },
        ))
    }

    /// After the result was sent (or could not be): settles a kept answer,
    /// frees a plain one, counts and reports the call.
    pub(super) fn retire_answer(
        self: &Arc<Self>,
        id: u64,
        cap: Option<u64>,
        method: &str,
        started: Started,
        answered: Answered,
        sent: Result<(), Status>,
    ) {
        let Answered {
            sent_caps,
            mut code,
            mut kept,
        } = answered;
        if let Err(status) = sent {
            // Typically a result over a frame limit ([S2]): the caller gets
            // that error instead, and the introductions it carried are taken back.
            self.lock().unsend(&sent_caps);
            code = status.code;
            if let Some(k) = kept.as_mut() {
                *k = Err(status.clone());
            }
            self.send_nowait(Frame::Result(CallResult {
                id,
                outcome: Outcome::Err(status),
            }));
        }
        // Only now: `close` waits for this entry, so the result goes out first.
        match kept {
            Some(outcome) => self.settle(id, outcome),
            None => {
                let freed = self.lock().answers.remove(id);
                drop(freed);
            }
        }
        self.notify_settled();
        self.counters.call_done(code);
        self.emit_with(|| Event::Call {
            direction: Direction::Incoming,
            cap: cap.unwrap_or(u64::MAX),
            method: method.to_owned(),
            id,
            duration: started.elapsed(),
            outcome: code,
        });
    }
}
