//! The writer drains every queued frame into one write.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use capwire::proto::{FrameDecoder, Framing};
use capwire::transport::{spawn_stream_writer, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWrite};

/// Counts the writes that reach the underlying stream.
struct CountingWriter<W> {
    inner: W,
    writes: Arc<AtomicUsize>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_queued_frames_go_out_in_a_few_writes() {
    let (a, mut b) = tokio::io::duplex(1 << 22);
    let writes = Arc::new(AtomicUsize::new(0));
    let sender = spawn_stream_writer(
        CountingWriter {
            inner: a,
            writes: writes.clone(),
        },
        &TransportConfig::default(),
    );
    // Queue everything before the writer task gets to run.
    for i in 0..1000u32 {
        let frame = Bytes::from(format!("{{\"ping\":{{\"nonce\":{i}}}}}"));
        assert!(
            sender.try_send(frame).expect("open").is_none(),
            "queue has room"
        );
    }
    drop(sender);

    let mut wire = Vec::new();
    b.read_to_end(&mut wire).await.expect("read");
    let mut buf = BytesMut::from(&wire[..]);
    let mut dec = FrameDecoder::new(Framing::LengthPrefixed, 1024);
    let mut n = 0u32;
    while let Some(f) = dec.decode(&mut buf).expect("frame") {
        assert_eq!(f, Bytes::from(format!("{{\"ping\":{{\"nonce\":{n}}}}}")));
        n += 1;
    }
    assert_eq!(n, 1000, "every frame arrives, in order");
    let w = writes.load(Ordering::Relaxed);
    assert!(w <= 4, "1000 frames took {w} writes");
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_writer_sends_a_lone_frame_at_once() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let writes = Arc::new(AtomicUsize::new(0));
    let sender = spawn_stream_writer(
        CountingWriter {
            inner: a,
            writes: writes.clone(),
        },
        &TransportConfig::default(),
    );
    for i in 0..3u8 {
        sender.send(Bytes::from(vec![i; 3])).await.expect("send");
        let mut got = [0u8; 7];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [0, 0, 0, 3, i, i, i]);
    }
    assert_eq!(
        writes.load(Ordering::Relaxed),
        3,
        "one write per frame when idle"
    );
}

/// Large frames skip the batch buffer (prefix and frame in one vectored
/// write); mixed with small ones, over a pipe that takes only a few KiB per
/// write, every byte still arrives, in order.
#[tokio::test(flavor = "current_thread")]
async fn large_frames_interleaved_with_small_ones_survive_partial_writes() {
    let (a, mut b) = tokio::io::duplex(3000);
    let sender = spawn_stream_writer(a, &TransportConfig::default());
    let frames: Vec<Bytes> = (0..40usize)
        .map(|i| match i % 4 {
            0 => Bytes::from(vec![i as u8; 100_000 + i]),
            1 => Bytes::from(vec![i as u8; 16 * 1024]),
            _ => Bytes::from(vec![i as u8; i + 1]),
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.expect("read");
        wire
    });
    for f in &frames {
        sender.send(f.clone()).await.expect("send");
    }
    drop(sender);
    let wire = reader.await.expect("reader");
    let mut buf = BytesMut::from(&wire[..]);
    let mut dec = FrameDecoder::new(Framing::LengthPrefixed, 1 << 20);
    for want in &frames {
        let got = dec.decode(&mut buf).expect("well framed").expect("a frame");
        assert_eq!(&got, want);
    }
    assert!(buf.is_empty(), "nothing after the last frame");
}
