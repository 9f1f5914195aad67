//! The writer task: one per connection, draining every queued frame into a
//! single write. Under load frames coalesce; when idle a lone
//! frame goes out at once, with no timer and no added latency.

use std::io::IoSlice;

use bytes::BytesMut;
use capwire_proto::framing::{encode_frame, encode_prefix, Framing};
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

/// Frames from this size on are written from their own buffer instead of
/// being copied into the batch.
const DIRECT_WRITE: usize = 16 * 1024;

/// Writes `head` then `tail`, vectored where the stream supports it.
async fn write_both<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut head: &[u8],
    mut tail: &[u8],
) -> std::io::Result<()> {
    while !head.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(head), IoSlice::new(tail)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        tail = &tail[n - from_head..];
    }
    io.write_all(tail).await
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
                Outgoing::Frame(frame)
                    if frame.len() >= DIRECT_WRITE && framing == Framing::LengthPrefixed =>
                {
                    // A large frame is not copied into the batch: the batch,
                    // with its length prefix at the end, and the frame go out
                    // in one vectored write.
                    match encode_prefix(frame.len(), max_frame_bytes, &mut buf) {
                        Err(e) => {
                            // Senders check the size first.
                            tracing::warn!(error = %e, "dropping a frame the framing cannot carry");
                        }
                        Ok(()) => {
                            if let Err(e) = write_both(&mut io, &buf, &frame).await {
                                tracing::debug!(error = %e, "write failed; stopping writer");
                                return;
                            }
                            buf.clear();
                        }
                    }
                }
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
