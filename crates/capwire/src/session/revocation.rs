//! Revocation both ways: the registry revoking what this side exports, and
//! the peer's `revoked` frame failing what this side asked of those ids.

use std::sync::Arc;

use capwire_proto::{Frame, Release, Revoked, Status};
use tokio::sync::mpsc;

use crate::engine::questions::Question;
use crate::value::Value;

use crate::events::{Direction, Event};
use crate::registry::RevocationSink;

use super::{Reply, Shared};

/// Where a stream question's items go.
type ItemSink = mpsc::UnboundedSender<Result<Value, Status>>;

impl RevocationSink for Shared {
    fn revoke_generation(&self, generation: u64) {
        let (ids, stop) = self.lock().revoke_generation(generation);
        for running in stop {
            running.stop();
        }
        if ids.is_empty() {
            return;
        }
        self.send_nowait(Frame::Revoked(Revoked { caps: ids.clone() }));
        self.emit(Event::Revoke {
            direction: Direction::Outgoing,
            caps: ids,
        });
    }
}

impl Shared {
    /// The peer revoked `caps`: hand back their introductions, fail the
    /// calls on them, tell the streams on them.
    pub(super) fn revoked_by_peer(
        self: &Arc<Self>,
        caps: Vec<u64>,
        releases: Vec<Release>,
        failed: Vec<Question<Reply>>,
        streams: Vec<ItemSink>,
    ) {
        for stream in streams {
            let _ = stream.send(Err(Status::revoked("the capability")));
        }
        for release in releases {
            self.send_nowait(Frame::Release(release));
        }
        if !failed.is_empty() {
            self.notify_settled();
        }
        for q in failed {
            let what = q.cap.map_or_else(
                || "the capability".to_owned(),
                |c| format!("capability {c}"),
            );
            q.reply.settle(Err(Status::revoked(what)));
        }
        self.emit(Event::Revoke {
            direction: Direction::Incoming,
            caps,
        });
    }
}
