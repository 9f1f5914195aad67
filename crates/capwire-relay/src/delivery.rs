//! Delivery to one client: its own task follows the ring of the session it
//! views at its own pace, and interleaves the frames addressed to it alone
//! (answers, the agent's requests, welcomes) at the point the router made
//! them. The router never waits for a client: a client that stops reading
//! holds back only itself. When the ring drops frames a client has not been
//! sent yet, the client is told so in line (`_relay/reset`) and continues
//! from the oldest frame the ring holds: never a silent skip.

use std::sync::Arc;

use bytes::Bytes;
use capwire::transport::FrameSender;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::ring::SharedRing;

/// What the router hands one client's delivery task.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Follow `ring` (session `session`) from sequence number `next` on.
    View {
        session: String,
        ring: Arc<SharedRing>,
        next: u64,
    },
    /// Follow no ring.
    NoView,
    /// A frame for this client alone, sent once the viewed ring's frames up
    /// to `after` are (so it keeps its place among them).
    Frame { bytes: Bytes, after: u64 },
}

/// Why a delivery task ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The router let the client go.
    Released,
    /// The connection closed.
    Closed,
}

struct View {
    session: String,
    ring: Arc<SharedRing>,
    next: u64,
    changed: watch::Receiver<u64>,
}

/// The ring dropped frames this client was not sent.
struct Lagged;

/// Runs one client's delivery until the router lets go or the connection
/// closes.
pub(crate) async fn run(
    sender: FrameSender,
    mut rx: mpsc::Receiver<Delivery>,
    batch: usize,
) -> End {
    let batch = batch.max(1);
    let mut view: Option<View> = None;
    let mut pending: Option<Delivery> = None;
    let mut frames = Vec::with_capacity(batch);
    loop {
        // The head is read before the queue: a direct frame queued before a
        // ring frame was pushed is then seen, so it is not overtaken.
        let head = view.as_ref().map(|v| v.ring.head());
        if pending.is_none() {
            match rx.try_recv() {
                Ok(d) => pending = Some(d),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => return End::Released,
            }
        }
        match pending.take() {
            Some(Delivery::View {
                session,
                ring,
                next,
            }) => {
                let changed = ring.subscribe();
                view = Some(View {
                    session,
                    ring,
                    next,
                    changed,
                });
            }
            Some(Delivery::NoView) => view = None,
            Some(Delivery::Frame { bytes, after }) => {
                if let Some(v) = view.as_mut().filter(|v| v.next <= after) {
                    if let Err(end) = ring_frames(&sender, v, after, batch, &mut frames).await {
                        return end;
                    }
                    pending = Some(Delivery::Frame { bytes, after });
                    continue;
                }
                if sender.send(bytes).await.is_err() {
                    return End::Closed;
                }
            }
            None => match (view.as_mut(), head) {
                (Some(v), Some(head)) if v.next <= head => {
                    if let Err(end) = ring_frames(&sender, v, head, batch, &mut frames).await {
                        return end;
                    }
                }
                (v, _) => {
                    let changed = async {
                        match v {
                            Some(v) => v.changed.changed().await.is_ok(),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        d = rx.recv() => match d {
                            Some(d) => pending = Some(d),
                            None => return End::Released,
                        },
                        _ = changed => {}
                        _ = sender.closed() => return End::Closed,
                    }
                }
            },
        }
    }
}

/// Sends the ring's frames from `v.next` up to `upto` (at most `batch`); a
/// client the ring left behind gets `_relay/reset` and continues from the
/// ring's oldest frame.
async fn ring_frames(
    sender: &FrameSender,
    v: &mut View,
    upto: u64,
    batch: usize,
    frames: &mut Vec<Bytes>,
) -> Result<(), End> {
    frames.clear();
    let want = ((upto + 1).saturating_sub(v.next) as usize).min(batch);
    let held = v.ring.lock().read(v.next, want, frames).is_some();
    let lagged = if held {
        send_frames(sender, v, frames).await?.is_err()
    } else {
        true
    };
    frames.clear();
    if lagged {
        let (first, head, epoch) = {
            let r = v.ring.lock();
            (r.first(), r.head(), r.epoch().to_owned())
        };
        tracing::info!(session = %v.session, missed = first.saturating_sub(v.next), "a client fell behind the ring; reset");
        let note = crate::frame::notification(
            "_relay/reset",
            &json!({"sessionId": v.session, "epoch": epoch, "fromSeq": first, "headSeq": head, "missed": first.saturating_sub(v.next)}),
        );
        if sender.send(note).await.is_err() {
            return Err(End::Closed);
        }
        v.next = v.next.max(first);
    }
    Ok(())
}

/// Sends `frames` (numbered from `v.next`), advancing `v.next`.
async fn send_frames(
    sender: &FrameSender,
    v: &mut View,
    frames: &mut Vec<Bytes>,
) -> Result<Result<(), Lagged>, End> {
    for frame in frames.drain(..) {
        match sender.try_send(frame) {
            Ok(None) => {}
            Ok(Some(frame)) => {
                if send_watching(sender, frame, v).await?.is_err() {
                    return Ok(Err(Lagged));
                }
            }
            Err(_) => return Err(End::Closed),
        }
        v.next += 1;
    }
    Ok(Ok(()))
}

/// Waits for room for `frame`, but gives up when the ring drops it
/// meanwhile: the rest of the batch would then be held by this client
/// alone. (The frame itself still goes out, ahead of the reset.)
async fn send_watching(
    sender: &FrameSender,
    frame: Bytes,
    v: &mut View,
) -> Result<Result<(), Lagged>, End> {
    let send = sender.send(frame);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => return sent.map(Ok).map_err(|_| End::Closed),
            changed = v.changed.changed() => {
                if changed.is_err() || v.ring.lock().first() > v.next {
                    // Dropping the send leaves the frame queued: count it.
                    v.next += 1;
                    return Ok(Err(Lagged));
                }
            }
        }
    }
}
