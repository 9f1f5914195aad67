//! The sending half of a transport, and the order frames leave in.
//!
//! Frames go into a bounded queue read by the transport's writer (or, in
//! memory, by the peer). While the queue has room a frame goes straight in.
//! When it is full, frames wait in an ordered backlog that a drain task
//! moves into the queue as room appears, so that:
//!
//! - a frame that had to wait is never overtaken by one sent after it
//!   (calls keep the order they were made in: E-order);
//! - nothing depends on the sender's own future being polled again: a caller
//!   that stops polling its send (a stored, unpolled call) cannot stall the
//!   connection, because its frame is already in the backlog and the drain
//!   task moves it;
//! - [`FrameSender::send`] still waits until its frame is in the queue, so a
//!   slow peer slows the senders (backpressure).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use capwire_proto::FramingError;
use tokio::sync::{mpsc, watch};

use super::{CloseReason, Outgoing, TransportError};
use tokio_util::sync::CancellationToken;

/// Frames waiting for room in the queue that a connection's reader
/// tolerates before it stops reading (see [`FrameSender::reader_backpressure`]).
pub(crate) const MAX_READER_BACKLOG: usize = 64;

/// The sending half of a transport. Cheap to clone; all clones feed one writer.
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Outgoing>,
    max_frame_bytes: usize,
    order: Arc<Order>,
}

#[derive(Debug)]
struct Order {
    backlog: Mutex<Backlog>,
    /// The backlog's length, readable without the lock (the reader checks it
    /// after every frame it handles).
    waiting: AtomicUsize,
    /// The sequence number of the last backlog entry moved into the queue,
    /// or `u64::MAX` once the queue is gone.
    moved: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Backlog {
    waiting: VecDeque<(u64, Outgoing)>,
    /// Sequence number of the last entry put in the backlog.
    last: u64,
    /// True while a drain task runs (it exits when the backlog is empty).
    draining: bool,
}

/// Where a frame went.
enum Queued {
    /// Into the queue.
    Now,
    /// Into the backlog, as entry `seq`.
    Later(u64),
}

impl FrameSender {
    pub(crate) fn new(tx: mpsc::Sender<Outgoing>, max_frame_bytes: usize) -> FrameSender {
        FrameSender {
            tx,
            max_frame_bytes,
            order: Arc::new(Order {
                backlog: Mutex::new(Backlog::default()),
                waiting: AtomicUsize::new(0),
                moved: watch::channel(0).0,
            }),
        }
    }

    fn check(&self, frame: &Bytes) -> Result<(), TransportError> {
        if frame.len() > self.max_frame_bytes {
            return Err(FramingError::TooLarge {
                len: frame.len(),
                max: self.max_frame_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Puts `item` in the queue if it has room and nothing waits before it,
    /// else at the end of the backlog (starting the drain task if needed).
    fn enqueue(&self, item: Outgoing) -> Result<Queued, TransportError> {
        let mut backlog = self.order.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let item = if backlog.waiting.is_empty() {
            match self.tx.try_send(item) {
                Ok(()) => return Ok(Queued::Now),
                Err(mpsc::error::TrySendError::Full(item)) => item,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(TransportError::Closed),
            }
        } else {
            item
        };
        backlog.last += 1;
        let seq = backlog.last;
        backlog.waiting.push_back((seq, item));
        self.order
            .waiting
            .store(backlog.waiting.len(), Ordering::Release);
        if !backlog.draining {
            // Frames can be sent from threads outside the runtime (a
            // revocation); then there is no one to drain them.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                backlog.waiting.pop_back();
                self.order
                    .waiting
                    .store(backlog.waiting.len(), Ordering::Release);
                return Err(TransportError::Closed);
            };
            backlog.draining = true;
            runtime.spawn(drain(self.tx.clone(), self.order.clone()));
        }
        Ok(Queued::Later(seq))
    }

    /// Waits until backlog entry `seq` is in the queue.
    async fn moved(&self, queued: Queued) -> Result<(), TransportError> {
        let Queued::Later(seq) = queued else {
            return Ok(());
        };
        let mut moved = self.order.moved.subscribe();
        let reached = match moved.wait_for(|m| *m >= seq).await {
            Ok(m) => *m != u64::MAX,
            Err(_) => false,
        };
        if reached {
            Ok(())
        } else {
            Err(TransportError::Closed)
        }
    }

    /// Queues one frame, waiting while the writer's queue is full.
    ///
    /// A frame over the size limit is refused here, and nothing is sent.
    /// If this future is dropped while it waits, the frame is still sent.
    pub async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.check(&frame)?;
        match self.enqueue(Outgoing::Frame(frame))? {
            Queued::Now => Ok(()),
            // Boxed: the wait is the rare case, and the futures of every
            // caller would otherwise carry its state.
            later => Box::pin(self.moved(later)).await,
        }
    }

    /// Queues one frame without waiting: into the queue, or behind the
    /// frames already waiting for room. `Err` only when the connection is
    /// closed (or the frame is too large).
    pub fn send_now(&self, frame: Bytes) -> Result<(), TransportError> {
        self.check(&frame)?;
        self.enqueue(Outgoing::Frame(frame)).map(drop)
    }

    /// Queues one frame only if the queue has room now and no frame waits
    /// for room; otherwise returns it, and nothing is queued.
    pub fn try_send(&self, frame: Bytes) -> Result<Option<Bytes>, TransportError> {
        self.check(&frame)?;
        let backlog = self.order.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if !backlog.waiting.is_empty() {
            return Ok(Some(frame));
        }
        match self.tx.try_send(Outgoing::Frame(frame)) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Outgoing::Frame(f))) => Ok(Some(f)),
            Err(_) => Err(TransportError::Closed),
        }
    }

    /// Flushes what is queued, then closes the connection with `reason`.
    pub async fn close(&self, reason: CloseReason) -> Result<(), TransportError> {
        let queued = self.enqueue(Outgoing::Close(reason))?;
        self.moved(queued).await
    }

    /// Asks for a close without waiting; used on paths that cannot await.
    pub(crate) fn close_now(&self, reason: CloseReason) {
        // If the queue is full or gone, the writer is stopping anyway.
        let _ = self.tx.try_send(Outgoing::Close(reason));
    }

    /// True once the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the writer has stopped.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// The frame size limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Waits while more than [`MAX_READER_BACKLOG`] frames wait for room in
    /// the queue (or until `closed`). A connection's reader calls it between
    /// the frames it reads, so a peer that keeps sending without reading
    /// what it is sent slows down instead of making this side buffer
    /// without bound. Every dialect's reader uses this one bound.
    pub(crate) async fn reader_backpressure(&self, closed: &CancellationToken) {
        if self.backlog() <= MAX_READER_BACKLOG {
            return;
        }
        tokio::select! {
            _ = self.backlog_at_most(MAX_READER_BACKLOG) => {}
            _ = closed.cancelled() => {}
        }
    }

    /// Waits until at most `n` frames wait for room in the queue.
    pub(crate) async fn backlog_at_most(&self, n: usize) {
        let mut moved = self.order.moved.subscribe();
        let _ = moved
            .wait_for(|m| *m == u64::MAX || self.backlog() <= n)
            .await;
    }

    /// Frames waiting for room in the queue.
    pub fn backlog(&self) -> usize {
        self.order.waiting.load(Ordering::Acquire)
    }
}

/// Moves the backlog into the queue as room appears, in order; exits when
/// the backlog is empty, or fails every waiter when the queue is gone.
async fn drain(tx: mpsc::Sender<Outgoing>, order: Arc<Order>) {
    loop {
        let Ok(permit) = tx.reserve().await else {
            let mut backlog = order.backlog.lock().unwrap_or_else(|e| e.into_inner());
            backlog.waiting.clear();
            order.waiting.store(0, Ordering::Release);
            backlog.draining = false;
            order.moved.send_replace(u64::MAX);
            return;
        };
        let mut backlog = order.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let next = backlog.waiting.pop_front();
        order
            .waiting
            .store(backlog.waiting.len(), Ordering::Release);
        let Some((seq, item)) = next else {
            backlog.draining = false;
            return;
        };
        permit.send(item);
        drop(backlog);
        order.moved.send_replace(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{memory_pair, TransportConfig};
    use bytes::Bytes;
    use futures_util::FutureExt;

    fn config() -> TransportConfig {
        TransportConfig {
            queue_frames: 1,
            ..TransportConfig::default()
        }
    }

    /// A send that had to wait, and whose future is then never polled again
    /// (or dropped), neither stalls the frames behind it nor loses its own:
    /// they all arrive, in the order they were sent.
    #[tokio::test]
    async fn an_unpolled_send_does_not_stall_the_connection() {
        let (a, mut b) = memory_pair(&config());
        a.sender.send(Bytes::from_static(b"1")).await.unwrap();
        // The queue is full: these wait in the backlog.
        let mut stuck = Box::pin(a.sender.send(Bytes::from_static(b"2")));
        assert!((&mut stuck).now_or_never().is_none());
        let dropped = a.sender.send(Bytes::from_static(b"3"));
        assert!(Box::pin(dropped).now_or_never().is_none());
        a.sender.send_now(Bytes::from_static(b"4")).unwrap();
        assert_eq!(a.sender.backlog(), 3);
        let last = tokio::spawn({
            let sender = a.sender.clone();
            async move { sender.send(Bytes::from_static(b"5")).await }
        });
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(b.receiver.recv().await.unwrap().unwrap());
        }
        assert_eq!(got, ["1", "2", "3", "4", "5"]);
        last.await.unwrap().unwrap();
        // The first waiter, polled again at last, sees its frame went.
        stuck.await.unwrap();
        assert_eq!(a.sender.backlog(), 0);
    }

    /// When the peer is gone, waiting sends fail instead of hanging.
    #[tokio::test]
    async fn waiting_sends_fail_when_the_queue_closes() {
        let (a, b) = memory_pair(&config());
        a.sender.send(Bytes::from_static(b"1")).await.unwrap();
        let waiting = tokio::spawn({
            let sender = a.sender.clone();
            async move { sender.send(Bytes::from_static(b"2")).await }
        });
        tokio::task::yield_now().await;
        drop(b);
        assert!(waiting.await.unwrap().is_err());
        assert!(a.sender.send_now(Bytes::from_static(b"3")).is_err());
    }
}
