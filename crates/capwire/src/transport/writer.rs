//! The writer task: one per connection, draining every queued frame into a
//! single write (DESIGN.md §6). Under load frames coalesce; when idle a lone
//! frame goes out at once, with no timer and no added latency.

use bytes::BytesMut;
use capwire_proto::framing::{encode_frame, Framing};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{FrameSender, Outgoing, TransportConfig};

/// Starts a writer task for a byte stream and returns the sender that feeds it.
///
/// The task ends, shutting the stream down, when a close is requested, when
/// every sender is dropped, or when a write fails.
pub fn spawn_stream_writer<W>(io: W, config: &TransportConfig) -> FrameSender
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(config.queue_frames.max(1));
    tokio::spawn(run(
        io,
        rx,
        config.framing,
        config.max_frame_bytes,
        config.max_batch_bytes,
    ));
    FrameSender::new(tx, config.max_frame_bytes)
}

async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Outgoing>,
    framing: Framing,
    max_frame_bytes: usize,
    max_batch_bytes: usize,
) {
    // Grows with the batches; an idle connection holds what one needed.
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut closing = false;
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Frame(frame) => {
                    if let Err(e) = encode_frame(framing, &frame, max_frame_bytes, &mut buf) {
                        // Senders check the size; what is left is a newline in an ndjson frame.
                        tracing::warn!(error = %e, "dropping a frame the framing cannot carry");
                    }
                }
                Outgoing::Close(reason) => {
                    tracing::debug!(code = reason.code, message = %reason.message, "closing stream");
                    closing = true;
                    break;
                }
            }
            if buf.len() < max_batch_bytes {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = io.write_all(&buf).await {
                tracing::debug!(error = %e, "write failed; stopping writer");
                return;
            }
            buf.clear();
            if buf.capacity() > 4 * max_batch_bytes {
                buf = BytesMut::new();
            }
        }
        if let Err(e) = io.flush().await {
            tracing::debug!(error = %e, "flush failed; stopping writer");
            return;
        }
        if closing {
            break;
        }
    }
    let _ = io.shutdown().await;
}
