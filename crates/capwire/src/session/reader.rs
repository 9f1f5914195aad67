//! The reader: one task per session that reads frames, checks `hello`,
//! dispatches each frame to the side it concerns, and ends the session when
//! the transport does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use capwire_proto::{codec, Code, Frame, Reason, Status};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Action, Route};
use crate::transport::{FrameReceiver, TransportError};

use super::{object_of, Credit, Reply, Running, Shared};

pub(super) fn transport_status(error: TransportError, max_frame_bytes: usize) -> Status {
    match error {
        TransportError::Framing(capwire_proto::FramingError::TooLarge { .. }) => {
            Status::limit(Reason::MAX_FRAME_BYTES, max_frame_bytes as u64)
        }
        // The peer speaks another protocol or framing: say which.
        TransportError::Framing(e @ capwire_proto::FramingError::NotAFrame { .. }) => {
            Status::protocol_violation(e.to_string())
        }
        TransportError::ClosedByPeer(reason) => Status::unavailable(format!(
            "the peer closed the connection: {} {}",
            reason.code, reason.message
        )),
        other => Status::unavailable(format!("the connection failed: {other}")),
    }
}

pub(super) async fn read_loop(shared: Arc<Shared>, mut receiver: FrameReceiver) {
    // One waiter for the whole loop, polled only when no frame is ready.
    let closed = shared.closed.clone();
    let closed = closed.cancelled();
    tokio::pin!(closed);
    let end = loop {
        let next = tokio::select! {
            biased;
            r = receiver.recv() => r,
            _ = &mut closed => return,
        };
        // A peer that keeps sending cannot keep an ended session working.
        if shared.ended.load(Ordering::Acquire) {
            return;
        }
        let bytes = match next {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break Status::unavailable("the peer closed the connection"),
            Err(e) => {
                let status = transport_status(e, shared.sender.max_frame_bytes());
                if status.code == Code::ResourceExhausted
                    || status.reason == Some(Reason::PROTOCOL_VIOLATION)
                {
                    shared.fail(status).await;
                    return;
                }
                break status;
            }
        };
        shared.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if crate::metrics::enabled() {
            crate::metrics::bytes(false, bytes.len());
        }
        let frame = match codec::decode_bytes(&bytes) {
            Ok((frame, _)) => frame,
            Err(e) => {
                shared.fail(Status::protocol_violation(e.to_string())).await;
                return;
            }
        };
        if let Err(status) = shared.handle(frame) {
            shared.fail(status).await;
            return;
        }
        shared.backpressure().await;
    };
    // A connection the peer announced it would close ends with its reason.
    let goaway = shared.lock().peer_goaway().cloned();
    let end = match goaway {
        // A peer that refused us says why in its own code (a bearer token
        // it does not accept: `unauthenticated`).
        Some(g) if end.code == Code::Unavailable && crate::auth::is_refusal(g.code) => {
            let mut status = Status::new(
                g.code,
                format!("the peer closed the connection: {}", g.message),
            );
            status.reason = g.reason.clone();
            status
        }
        Some(g) if end.code == Code::Unavailable => {
            Status::unavailable(format!("the peer closed the connection: {g}"))
        }
        _ => end,
    };
    shared.shutdown(end);
}

impl Shared {
    /// Handles one decoded frame: the engine decides, this does what it
    /// says. An `Err` is a connection-fatal violation.
    pub(super) fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Status> {
        let action = self
            .lock()
            .on_frame(frame, Instant::now, |stream| Running {
                cancel: CancellationToken::new(),
                credit: stream.map(|window| Arc::new(Credit::new(window))),
                started: self.started(),
            })?;
        match action {
            Action::None => {}
            Action::Hello { max_frame_bytes } => {
                if let Some(max) = max_frame_bytes {
                    self.peer_max_frame.store(max, Ordering::Relaxed);
                }
            }
            Action::Send(frame) => self.send_nowait(frame),
            Action::Release(releases) => {
                for release in releases {
                    self.send_nowait(Frame::Release(release));
                }
            }
            Action::Reject { id, stream, status } => {
                self.reject(id, stream, status);
                self.notify_settled();
            }
            Action::Run(start, route) => {
                let object = match route {
                    Route::Bootstrap => None,
                    Route::Runtime => Some(self.runtime.clone()),
                    Route::Object(object) => Some(object),
                    Route::Cap(cap) => Some(object_of(cap)),
                    // The engine queues these itself.
                    Route::Queue(..) => return Ok(()),
                };
                self.start_answer(start, object);
            }
            Action::Stop(running) => running.stop(),
            Action::Freed(answer) => {
                drop(answer);
                self.notify_settled();
            }
            Action::Settle {
                id,
                question,
                outcome,
            } => {
                self.notify_settled();
                let cap = question.cap;
                match question.reply {
                    Reply::Kept { tx, meta } => {
                        let code = outcome.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
                        tx.send_replace(Some(outcome));
                        self.record_outgoing(cap, id, meta, code, false);
                    }
                    reply => reply.settle(outcome),
                }
            }
            Action::Item { sink, item } => {
                self.counters
                    .stream_items_in
                    .fetch_add(1, Ordering::Relaxed);
                if crate::metrics::enabled() {
                    crate::metrics::stream_item(false);
                }
                let _ = sink.send(item);
            }
            Action::StreamEnd {
                id,
                question,
                open,
                err,
            } => {
                self.notify_settled();
                let cap = question.cap;
                if let Reply::Stream { tx, meta } = question.reply {
                    let code = err.as_ref().map_or(Code::Ok, |s| s.code);
                    if let (true, Some(err)) = (open, err) {
                        let _ = tx.send(Err(err));
                    }
                    self.record_outgoing(cap, id, meta, code, true);
                }
            }
            Action::Revoked {
                caps,
                releases,
                failed,
                streams,
            } => self.revoked_by_peer(caps, releases, failed, streams),
            Action::Credit(running, n) => {
                if let Some(credit) = running.credit {
                    credit.grant(n);
                }
            }
            Action::Pong(nonce) => {
                let ping = self.pings().waiting.remove(&nonce);
                if let Some((sent, tx)) = ping {
                    let rtt = sent.elapsed();
                    let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
                    self.counters.last_rtt.store(us + 1, Ordering::Relaxed);
                    let _ = tx.send(rtt);
                }
            }
            Action::Goaway(status) => tracing::debug!(%status, "peer sent goaway"),
        }
        Ok(())
    }
}
