//! Stream calls: the caller's end ([`RemoteItems`]) and the callee's pump.

use super::deadline;
use std::sync::Arc;
use std::task::{Context, Poll};

use capwire_proto::{Code, Frame, StreamEnd, StreamError, StreamItem};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::flow::{grant_batch, Credit};
use super::{supervise, Running, Shared, StartAnswer, SCOPE};
use crate::capability::Capability;
use crate::events::{Direction, Event};
use crate::object::Object;
use crate::value::Value;
use capwire_proto::Status;

/// The caller's end of a stream question: items as the reader delivers
/// them. Credit goes back as items are taken; dropping it cancels the stream.
pub(crate) struct RemoteItems {
    pub(crate) session: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Result<Value, Status>>,
    pub(crate) consumed: u32,
    pub(crate) batch: u32,
    pub(crate) ended: bool,
    /// Promises the call was pipelined on: kept until the stream ends.
    pub(crate) _deps: Vec<Capability>,
}

impl RemoteItems {
    pub(crate) fn new(
        session: Arc<Shared>,
        id: u64,
        rx: mpsc::UnboundedReceiver<Result<Value, Status>>,
        window: u32,
        deps: Vec<Capability>,
    ) -> RemoteItems {
        RemoteItems {
            session,
            id,
            rx,
            consumed: 0,
            batch: grant_batch(window),
            ended: false,
            _deps: deps,
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.rx.len()
    }

    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Value, Status>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(item))) => {
                self.consumed += 1;
                if self.consumed >= self.batch {
                    self.session.grant(self.id, self.consumed);
                    self.consumed = 0;
                }
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl Drop for RemoteItems {
    fn drop(&mut self) {
        if !self.ended {
            self.session.cancel_stream(self.id);
        }
    }
}

impl Shared {
    /// Runs a stream answer: opens the stream, then sends one item per unit
    /// of credit until it ends, fails, is cancelled or passes its deadline.
    pub(super) async fn run_stream(
        self: &Arc<Self>,
        start: StartAnswer,
        object: Option<Arc<dyn Object>>,
        credit: Arc<Credit>,
    ) {
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
        let stop_at = deadline::stop_at(deadline, self.config.deadline_grace, false);
        let (ctx, scope) = self.call_context(id, &method, deadline, &cancel);
        let pump = async {
            let _open = crate::metrics::OpenStream::start();
            let Some(object) = object else {
                return Some(Err(Status::new(
                    Code::InvalidArgument,
                    "the bootstrap object has no stream methods",
                )));
            };
            let name = method.clone();
            let open = super::guarded(scope.clone(), &method, move || {
                object.call_stream(&name, args, ctx)
            });
            let items = match supervise(open, &method, stop_at, &cancel).await? {
                Ok(items) => items,
                Err(status) => return Some(Err(status)),
            };
            let mut items = std::panic::AssertUnwindSafe(items).catch_unwind();
            let past_deadline = || deadline::ran_past(&format!("stream {method}"));
            let mut sent = 0u64;
            loop {
                // The common case costs no waiters: credit is there and the
                // producer has an item ready. Otherwise wait for both, while
                // watching for a cancel and the deadline.
                if cancel.is_cancelled() {
                    return None;
                }
                if deadline::passed(stop_at, Instant::now) {
                    return Some(Err(past_deadline()));
                }
                let have_credit = credit.try_take();
                let ready = if have_credit {
                    match futures_util::poll!(items.next()) {
                        Poll::Ready(next) => Some(next),
                        Poll::Pending => None,
                    }
                } else {
                    None
                };
                let next = match ready {
                    Some(next) => next,
                    None => tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return None,
                        _ = deadline::sleep_until(stop_at) => return Some(Err(past_deadline())),
                        next = async {
                            if !have_credit {
                                credit.acquire().await;
                            }
                            items.next().await
                        } => next,
                    },
                };
                let value = match next {
                    None => return Some(Ok(sent)),
                    Some(Err(_panic)) => {
                        return Some(Err(Status::new(
                            Code::Internal,
                            format!("stream `{method}` panicked"),
                        )))
                    }
                    Some(Ok(Err(status))) => return Some(Err(status)),
                    Some(Ok(Ok(value))) => value,
                };
                let (frame, caps) = {
                    let mut st = self.lock();
                    if st.ended().is_some() {
                        return None;
                    }
                    match st.describe_value(value) {
                        Ok((value, caps)) => (
                            Frame::Item(StreamItem {
                                id,
                                value,
                                caps: caps.clone(),
                            }),
                            caps,
                        ),
                        Err(status) => return Some(Err(status)),
                    }
                };
                if let Err(status) = self.send(frame).await {
                    self.lock().unsend(&caps);
                    return Some(Err(status));
                }
                sent += 1;
                let unacked = credit.sent();
                self.counters.stream_item_out(unacked);
                if crate::metrics::enabled() {
                    crate::metrics::stream_item(true);
                }
            }
        };
        // The producer (and the calls it makes) run in the call's scope.
        let pumped: Option<Result<u64, Status>> = SCOPE.scope(scope.clone(), pump).await;
        let outcome = match pumped {
            Some(Ok(items)) => Ok(items),
            Some(Err(status)) => Err(status),
            None => Err(self
                .lock()
                .answers
                .why_stopped(id)
                .cloned()
                .unwrap_or_else(|| Status::new(Code::Cancelled, "the stream was cancelled"))),
        };
        let ended = self.lock().ended().is_some();
        let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
        if !ended {
            let frame = match outcome {
                Ok(_) => Frame::End(StreamEnd { id }),
                Err(err) => Frame::StreamError(StreamError { id, err }),
            };
            let _ = self.send(frame).await;
        }
        self.lock().answers.remove(id);
        self.notify_settled();
        self.counters.call_done(code);
        self.emit_with(|| Event::Stream {
            direction: Direction::Incoming,
            cap: cap.unwrap_or(u64::MAX),
            method: method.to_string(),
            id,
            duration: started.elapsed(),
            outcome: code,
        });
    }
}
