//! Revocation both ways: the registry revoking what this side exports, and
//! the peer's `revoked` frame failing what this side asked of those ids.

use std::sync::Arc;

use capwire_proto::{Frame, Revoked, Status};

use crate::events::{Direction, Event};
use crate::registry::RevocationSink;

use super::Shared;

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
    pub(super) fn handle_revoked(self: &Arc<Self>, mut caps: Vec<u64>) {
        let (releases, failed) = {
            let mut st = self.lock();
            let (releases, failed, streams) = st.on_revoked(&mut caps);
            // Streams stay until their terminal frame; their consumers hear now.
            for id in streams {
                if let Some(q) = st.questions.get(id) {
                    q.reply.tell(Status::revoked("the capability"));
                }
            }
            (releases, failed)
        };
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
