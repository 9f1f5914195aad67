//! The reader: one task per session that reads frames, checks `hello`,
//! dispatches each frame to the side it concerns, and ends the session when
//! the transport does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use capwire_proto::{
    codec, Cancel, Code, Finish, Frame, Goaway, Ping, Pong, Reason, Release, Revoked, Status,
    StreamEnd, StreamError, PROTOCOL_VERSION,
};

use crate::engine::answers::Finished;
use crate::transport::{FrameReceiver, TransportError};

use super::Shared;

pub(super) fn transport_status(error: TransportError, max_frame_bytes: usize) -> Status {
    match error {
        TransportError::Framing(capwire_proto::FramingError::TooLarge { .. }) => {
            Status::limit(Reason::MAX_FRAME_BYTES, max_frame_bytes as u64)
        }
        TransportError::ClosedByPeer(reason) => Status::unavailable(format!(
            "the peer closed the connection: {} {}",
            reason.code, reason.message
        )),
        other => Status::unavailable(format!("the connection failed: {other}")),
    }
}

pub(super) async fn read_loop(shared: Arc<Shared>, mut receiver: FrameReceiver) {
    let mut got_hello = false;
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
                if status.code == Code::ResourceExhausted {
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
        let frame = match codec::decode_bytes(&bytes) {
            Ok((frame, _)) => frame,
            Err(e) => {
                shared.fail(Status::protocol_violation(e.to_string())).await;
                return;
            }
        };
        if !got_hello {
            match frame {
                Frame::Hello(h) if h.v == PROTOCOL_VERSION => {
                    got_hello = true;
                    if let Some(max) = h.limits.max_frame_bytes {
                        let max = usize::try_from(max).unwrap_or(usize::MAX);
                        shared.peer_max_frame.store(max, Ordering::Relaxed);
                    }
                    continue;
                }
                Frame::Hello(h) => {
                    let status = Status::new(
                        Code::FailedPrecondition,
                        format!("protocol version {} is not supported; this peer speaks {PROTOCOL_VERSION}", h.v),
                    )
                    .with_reason(Reason::VERSION_MISMATCH);
                    shared.fail(status).await;
                    return;
                }
                other => {
                    let status =
                        Status::protocol_violation(format!("`{}` frame before hello", other.op()));
                    shared.fail(status).await;
                    return;
                }
            }
        }
        if let Err(status) = shared.handle(frame) {
            shared.fail(status).await;
            return;
        }
        shared.backpressure().await;
    };
    // A connection the peer announced it would close ends with its reason.
    let goaway = shared.lock().peer_goaway().cloned();
    let end = match goaway {
        Some(g) if end.code == Code::Unavailable => {
            Status::unavailable(format!("the peer closed the connection: {g}"))
        }
        _ => end,
    };
    shared.shutdown(end);
}

impl Shared {
    /// Handles one decoded frame. An `Err` is a connection-fatal violation.
    pub(super) fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Status> {
        match frame {
            Frame::Hello(_) => Err(Status::protocol_violation("a second hello")),
            Frame::Call(call) => self.handle_call(call),
            Frame::Result(result) => self.handle_result(result),
            Frame::Cancel(Cancel { id }) => {
                let stopped = self.lock().on_cancel(id);
                match stopped {
                    Some(Ok(running)) => running.stop(),
                    Some(Err(refusal)) => {
                        // It never started: answered here ([S21]).
                        let status = Status::new(Code::Cancelled, "the caller cancelled the call");
                        self.reject(id, refusal.stream, status);
                        self.notify_settled();
                    }
                    None => {}
                }
                Ok(())
            }
            Frame::Finish(Finish { id }) => {
                let finished = self.lock().on_finish(id);
                match finished {
                    Finished::Nothing => {}
                    Finished::Stop(running) => running.stop(),
                    Finished::Refused(refusal) => {
                        let status =
                            Status::new(Code::Cancelled, "the caller finished the question");
                        self.reject(id, refusal.stream, status);
                        self.notify_settled();
                    }
                    Finished::Freed(answer) => {
                        drop(answer);
                        self.notify_settled();
                    }
                }
                Ok(())
            }
            Frame::Release(Release { cap, n }) => self.lock().on_release(cap, n),
            Frame::Revoked(Revoked { caps }) => {
                self.handle_revoked(caps);
                Ok(())
            }
            Frame::Goaway(Goaway { status, .. }) => {
                tracing::debug!(%status, "peer sent goaway");
                self.lock().on_goaway(status);
                Ok(())
            }
            Frame::Ping(Ping { nonce }) => {
                self.send_nowait(Frame::Pong(Pong { nonce }));
                Ok(())
            }
            Frame::Pong(Pong { nonce }) => {
                let ping = self.pings().waiting.remove(&nonce);
                if let Some((sent, tx)) = ping {
                    let rtt = sent.elapsed();
                    let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
                    self.counters.last_rtt.store(us + 1, Ordering::Relaxed);
                    let _ = tx.send(rtt);
                }
                Ok(())
            }
            Frame::Credit(capwire_proto::Credit { id, n }) => {
                // Unknown or ended streams: the credit crossed the terminal frame.
                let credit = self
                    .lock()
                    .answers
                    .stream(id)
                    .and_then(|r| r.credit.clone());
                if let Some(credit) = credit {
                    credit.grant(n);
                }
                Ok(())
            }
            Frame::Item(item) => self.handle_item(item),
            Frame::End(StreamEnd { id }) => self.handle_stream_end(id, None),
            Frame::StreamError(StreamError { id, err }) => self.handle_stream_end(id, Some(err)),
            other => Err(Status::protocol_violation(format!(
                "unexpected `{}` frame",
                other.op()
            ))),
        }
    }
}
