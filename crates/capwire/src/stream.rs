//! Streams with credit-based flow control, both directions.
//!
//! **Server → client**: a stream method ([`Methods::stream`](crate::Methods::stream))
//! answers with items; the caller's [`ItemStream`] grants credit as it
//! consumes them, so the callee never has more than the window (default 32)
//! unacknowledged, and a consumer that stops reading stops only its own stream.
//!
//! **Client → server**: the receiving side makes a [`sink`] and hands out its
//! capability; the writing side wraps that capability in a [`SinkWriter`],
//! which keeps at most the window of writes unacknowledged. Combining the two
//! gives bidirectional streaming.
//!
//! **A stream as a value**: [`source`] wraps items in a capability with one
//! stream method, `read`, so a stream can travel inside an argument or a
//! result like any capability; the holder reads it once (the capnweb dialect
//! turns it into a JavaScript `ReadableStream` and back).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use capwire_proto::{Code, Status};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

use crate::capability::{call_stream_local, Capability, Destination};
use crate::object::{CallContext, Items, Methods, Object};
use crate::promise::{PendingCall, Promise};
use crate::session::RemoteItems;
use crate::value::Value;

/// The default number of items a stream receiver grants up front.
pub const DEFAULT_WINDOW: u32 = 32;

/// Options of a stream call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Items granted up front; the session's `stream_window` when `None`.
    pub window: Option<u32>,
    /// How long the whole stream may take; sent to the callee, which ends the
    /// stream with `deadline_exceeded` when it passes.
    pub timeout: Option<Duration>,
}

impl StreamOptions {
    /// Sets the initial window to `n` items.
    pub fn window(mut self, n: u32) -> StreamOptions {
        self.window = Some(n);
        self
    }

    /// Sets the timeout of the whole stream.
    pub fn timeout(mut self, timeout: Duration) -> StreamOptions {
        self.timeout = Some(timeout);
        self
    }
}

/// The items of a stream call, as they arrive. Ends after the last item, or
/// after an `Err` item that says why the stream failed. Dropping it cancels
/// the stream at the callee.
pub struct ItemStream {
    state: StreamState,
    deadline: Option<Pin<Box<Sleep>>>,
}

enum StreamState {
    Idle(Option<PendingCall>, Option<u32>),
    Opening(BoxFuture<'static, Result<Opened, Status>>),
    Remote(RemoteItems),
    Local(Items),
    Done,
}

enum Opened {
    Remote(RemoteItems),
    Local(Items),
}

impl ItemStream {
    pub(crate) fn new(call: PendingCall, window: Option<u32>) -> ItemStream {
        let deadline = call.deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        ItemStream {
            state: StreamState::Idle(Some(call), window),
            deadline,
        }
    }

    /// Items received and not yet taken from this stream.
    pub fn buffered_items(&self) -> usize {
        match &self.state {
            StreamState::Remote(r) => r.buffered(),
            _ => 0,
        }
    }
}

/// Sends the stream call to wherever its target lives.
fn open(call: PendingCall, window: Option<u32>) -> BoxFuture<'static, Result<Opened, Status>> {
    async move {
        match call.target.destination().await? {
            Destination::Wire(shared, to) => {
                let (out, target) = call.on_wire(&to);
                shared
                    .open_stream(out, window, vec![target])
                    .await
                    .map(Opened::Remote)
            }
            Destination::Local(object) => {
                let PendingCall {
                    method,
                    args,
                    deadline,
                    scope,
                    ..
                } = call;
                call_stream_local(object, &method, args, deadline, scope)
                    .await
                    .map(Opened::Local)
            }
        }
    }
    .boxed()
}

impl Stream for ItemStream {
    type Item = Result<Value, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() && !matches!(this.state, StreamState::Done) {
                // Dropping the remote end sends `cancel`.
                this.state = StreamState::Done;
                return Poll::Ready(Some(Err(Status::new(
                    Code::DeadlineExceeded,
                    "the stream did not end before its deadline",
                ))));
            }
        }
        loop {
            match &mut this.state {
                StreamState::Idle(call, window) => match call.take() {
                    Some(call) => this.state = StreamState::Opening(open(call, *window)),
                    None => this.state = StreamState::Done,
                },
                StreamState::Opening(fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Opened::Remote(r))) => this.state = StreamState::Remote(r),
                    Poll::Ready(Ok(Opened::Local(items))) => this.state = StreamState::Local(items),
                    Poll::Ready(Err(status)) => {
                        this.state = StreamState::Done;
                        return Poll::Ready(Some(Err(status)));
                    }
                },
                StreamState::Remote(r) => {
                    return match r.poll_item(cx) {
                        Poll::Ready(Some(Err(status))) => {
                            this.state = StreamState::Done;
                            Poll::Ready(Some(Err(status)))
                        }
                        Poll::Ready(None) => {
                            this.state = StreamState::Done;
                            Poll::Ready(None)
                        }
                        other => other,
                    }
                }
                StreamState::Local(items) => {
                    return match items.poll_next_unpin(cx) {
                        Poll::Ready(Some(Err(status))) => {
                            this.state = StreamState::Done;
                            Poll::Ready(Some(Err(status)))
                        }
                        other => other,
                    }
                }
                StreamState::Done => return Poll::Ready(None),
            }
        }
    }
}

impl std::fmt::Debug for ItemStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            StreamState::Idle(..) => "not sent",
            StreamState::Opening(_) => "opening",
            StreamState::Remote(_) => "remote",
            StreamState::Local(_) => "local",
            StreamState::Done => "done",
        };
        write!(f, "ItemStream({state})")
    }
}

enum SinkMsg {
    Item(Value),
    End,
    Abort(Status),
}

/// The receiving end of a [`sink`]: the items written to its capability, in
/// order. Ends when the writer calls `end`; an `Err` item says the writer
/// aborted, or went away without ending.
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<SinkMsg>,
    /// Items taken so far: a write is acknowledged once its item is taken.
    taken: watch::Sender<u64>,
    done: bool,
}

impl Stream for SinkReceiver {
    type Item = Result<Value, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let msg = std::task::ready!(self.rx.poll_recv(cx));
        match msg {
            Some(SinkMsg::Item(v)) => {
                self.taken.send_modify(|n| *n += 1);
                Poll::Ready(Some(Ok(v)))
            }
            Some(SinkMsg::End) => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(SinkMsg::Abort(status)) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Err(Status::new(
                    Code::Cancelled,
                    "the writer went away without ending the sink",
                ))))
            }
        }
    }
}

impl SinkReceiver {
    /// Items written and not yet taken.
    pub fn buffered_items(&self) -> usize {
        self.rx.len()
    }
}

/// The write side of a sink, shared by its methods.
struct SinkInput {
    tx: mpsc::UnboundedSender<SinkMsg>,
    /// Items accepted so far (the sequence number of the last write).
    written: std::sync::atomic::AtomicU64,
    taken: watch::Receiver<u64>,
    /// Items that may wait here untaken before writes stop being acknowledged.
    window: u64,
}

impl SinkInput {
    fn closed() -> Status {
        Status::new(Code::FailedPrecondition, "the sink is closed")
    }

    /// Queues `msg` now (so writes keep the order they arrived in) and
    /// returns the sequence number an item write must wait for.
    fn push(&self, msg: SinkMsg) -> Result<u64, Status> {
        let is_item = matches!(msg, SinkMsg::Item(_));
        self.tx.send(msg).map_err(|_| SinkInput::closed())?;
        Ok(if is_item {
            self.written
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                + 1
        } else {
            0
        })
    }

    /// Waits until item `seq` fits in the window of untaken items: the
    /// acknowledgement, at once while the receiver keeps up.
    async fn taken(&self, seq: u64) -> Result<(), Status> {
        let mut taken = self.taken.clone();
        let window = self.window;
        taken
            .wait_for(|n| n.saturating_add(window) >= seq)
            .await
            .map(drop)
            .map_err(|_| SinkInput::closed())
    }
}

/// Makes a sink: a capability with `write(item)`, `end()` and
/// `abort(status)`, and the stream of what is written to it. Pass the
/// capability to the writer (return it, or send it as an argument); it
/// writes with a [`SinkWriter`], which keeps at most its window of writes
/// unacknowledged. Up to `window` items may wait here untaken; a write
/// beyond that is acknowledged only when the receiver takes an item, so a
/// slow receiver slows the writer. What waits here is bounded by the two
/// windows (and, for a writer that ignores its own, by the connection's
/// limit on calls in flight).
pub fn sink(window: usize) -> (Capability, SinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (taken_tx, taken_rx) = watch::channel(0);
    let input = Arc::new(SinkInput {
        tx,
        written: std::sync::atomic::AtomicU64::new(0),
        taken: taken_rx,
        window: window as u64,
    });
    let (write, end, abort) = (input.clone(), input.clone(), input);
    let methods = Methods::new(SINK_TYPE)
        .method("write", move |args: Value, _ctx: CallContext| {
            // Queued before the first `.await`: in arrival order.
            let queued = write.push(SinkMsg::Item(args));
            let input = write.clone();
            async move {
                input.taken(queued?).await?;
                Ok(Value::null())
            }
        })
        .method("end", move |_args, _ctx| {
            let queued = end.push(SinkMsg::End);
            async move { queued.map(|_| Value::null()) }
        })
        .method("abort", move |args: Value, _ctx| {
            let status: Status = args
                .decode()
                .unwrap_or_else(|_| Status::new(Code::Aborted, "the writer aborted the sink"));
            let queued = abort.push(SinkMsg::Abort(status));
            async move { queued.map(|_| Value::null()) }
        });
    let object: Arc<dyn Object> = Arc::new(methods);
    let receiver = SinkReceiver {
        rx,
        taken: taken_tx,
        done: false,
    };
    (Capability::from_arc(object), receiver)
}

/// The type name of the objects [`source`] makes.
pub(crate) const SOURCE_TYPE: &str = "capwire.source";

/// The type name of the objects [`sink`] makes.
pub(crate) const SINK_TYPE: &str = "capwire.sink";

/// Makes a source: a capability whose stream method `read` yields `items`,
/// with the usual credit window. It can be read once; a second `read` fails
/// with `failed_precondition`. Dropping the last handle unread drops `items`.
pub fn source(items: Items) -> Capability {
    let slot = std::sync::Mutex::new(Some(items));
    let methods = Methods::new(SOURCE_TYPE).stream("read", move |_args, _ctx| {
        let items = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move {
            items.ok_or_else(|| {
                Status::new(Code::FailedPrecondition, "this source was already read")
            })
        }
    });
    Capability::from_arc(Arc::new(methods))
}

/// Writes items to a sink capability, keeping at most `window` writes
/// unacknowledged. Writes are sent in order; each write's answer is its
/// acknowledgement (its credit back).
pub struct SinkWriter {
    cap: Capability,
    window: usize,
    in_flight: FuturesOrdered<Promise>,
    max_in_flight: usize,
    written: u64,
}

impl SinkWriter {
    /// A writer with the default window of 32.
    pub fn new(sink: Capability) -> SinkWriter {
        SinkWriter::with_window(sink, DEFAULT_WINDOW as usize)
    }

    /// A writer that keeps at most `window` writes unacknowledged.
    pub fn with_window(sink: Capability, window: usize) -> SinkWriter {
        SinkWriter {
            cap: sink,
            window: window.max(1),
            in_flight: FuturesOrdered::new(),
            max_in_flight: 0,
            written: 0,
        }
    }

    /// Writes one item, waiting first while the window is full.
    pub async fn send(&mut self, item: Value) -> Result<(), Status> {
        while self.in_flight.len() >= self.window {
            if let Some(ack) = self.in_flight.next().await {
                ack?;
            }
        }
        self.in_flight.push_back(self.cap.call("write", item));
        self.written += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight.len());
        // Drive the new write onto the wire now, and collect finished acks.
        loop {
            match futures_util::poll!(self.in_flight.next()) {
                Poll::Ready(Some(ack)) => {
                    ack?;
                }
                Poll::Ready(None) | Poll::Pending => return Ok(()),
            }
        }
    }

    /// Waits until every write so far is acknowledged.
    pub async fn flush(&mut self) -> Result<(), Status> {
        while let Some(ack) = self.in_flight.next().await {
            ack?;
        }
        Ok(())
    }

    /// Flushes, then ends the sink: its receiver's stream ends.
    pub async fn end(mut self) -> Result<(), Status> {
        self.flush().await?;
        self.cap.call("end", Value::null()).await.map(drop)
    }

    /// Ends the sink with an error its receiver sees.
    pub async fn abort(self, status: Status) -> Result<(), Status> {
        self.cap.call("abort", Value::new(&status)?).await.map(drop)
    }

    /// The most writes that were unacknowledged at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Items written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl std::fmt::Debug for SinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWriter")
            .field("window", &self.window)
            .field("in_flight", &self.in_flight.len())
            .field("written", &self.written)
            .finish()
    }
}
