//! The outbox: how the session puts frames on the transport. Frames are
//! encoded at once (and refused over the frame limit), then queued; the
//! reader slows down while too many wait for room (`backpressure`).

use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use capwire_proto::{codec, Code, Frame, Reason, Status};

use crate::transport::TransportError;

use super::Shared;

impl Shared {
    /// The largest frame this side may send: its own limit, or the peer's
    /// announced one if smaller (\[S2\]).
    pub(super) fn frame_limit(&self) -> usize {
        self.sender
            .max_frame_bytes()
            .min(self.peer_max_frame.load(Ordering::Relaxed))
    }

    /// Encodes `frame`, refusing one over the frame limit: it is never sent.
    pub(super) fn encode(&self, frame: &Frame) -> Result<Bytes, Status> {
        let bytes = codec::encode_bytes(frame, self.codec).map_err(|e| {
            Status::new(Code::Internal, format!("cannot encode {}: {e}", frame.op()))
        })?;
        let limit = self.frame_limit();
        if bytes.len() > limit {
            return Err(Status::limit(Reason::MAX_FRAME_BYTES, limit as u64)
                .with_details(serde_json::json!({ "limit": limit, "frame_bytes": bytes.len() })));
        }
        Ok(bytes)
    }

    pub(super) fn count_out(&self, len: usize) {
        self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(len as u64, Ordering::Relaxed);
        if crate::metrics::enabled() {
            crate::metrics::bytes(true, len);
        }
    }

    /// Sends a frame, waiting for room in the transport queue. The frame is
    /// encoded at once, so the future holds only its bytes: it lives inside
    /// the futures of every call, and its size is theirs.
    pub(super) fn send(
        &self,
        frame: Frame,
    ) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        let encoded = self.encode(&frame);
        drop(frame);
        async move {
            let bytes = encoded?;
            let len = bytes.len();
            self.sender
                .send(bytes)
                .await
                .map_err(|e| self.send_status(e))?;
            self.count_out(len);
            Ok(())
        }
    }

    /// Sends without waiting, like [`Shared::send_nowait`], but tells why a
    /// frame could not be sent. For frames whose number something else
    /// bounds: the reader's own answers (it checks the backlog between
    /// frames, `backpressure`) and calls (the question limit).
    pub(super) fn send_queued(&self, frame: &Frame) -> Result<(), Status> {
        let bytes = self.encode(frame)?;
        let len = bytes.len();
        self.sender
            .send_now(bytes)
            .map_err(|e| self.send_status(e))?;
        self.count_out(len);
        Ok(())
    }

    pub(super) fn send_status(&self, error: TransportError) -> Status {
        match error {
            // `encode` checked the size already; kept for a transport that disagrees.
            TransportError::Framing(fe) => {
                Status::limit(Reason::MAX_FRAME_BYTES, self.frame_limit() as u64)
                    .with_details(serde_json::json!({ "error": fe.to_string() }))
            }
            other => Status::unavailable(format!("cannot send: {other}")),
        }
    }

    /// Sends from code that cannot wait (drops, the reader): the frame goes
    /// behind every frame sent before it, into the transport's backlog when
    /// the queue is full (which the reader bounds, see `backpressure`). A
    /// frame that cannot be sent at all is dropped.
    pub(super) fn send_nowait(&self, frame: Frame) {
        let bytes = match self.encode(&frame) {
            Ok(bytes) => bytes,
            Err(status) => {
                tracing::warn!(op = frame.op(), %status, "dropping a frame that cannot be sent");
                return;
            }
        };
        let len = bytes.len();
        match self.sender.send_now(bytes) {
            Ok(()) => self.count_out(len),
            Err(TransportError::Closed) => {}
            Err(e) => {
                tracing::warn!(op = frame.op(), error = %e, "dropping a frame that cannot be sent")
            }
        }
    }

    /// Waits while the transport's backlog is over its bound (see
    /// `FrameSender::reader_backpressure`); the reader calls it between frames.
    pub(super) async fn backpressure(&self) {
        self.sender.reader_backpressure(&self.closed).await;
    }
}
