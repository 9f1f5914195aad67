//! Revocation both ways: the registry revoking what this side exports, and
//! the peer's `revoked` frame failing what this side asked of those ids.

use std::sync::Arc;

use capwire_proto::{Frame, Release, Revoked, Status, BOOTSTRAP_CAP, RUNTIME_CAP};

use crate::events::{Direction, Event};
use crate::registry::RevocationSink;

use super::Shared;

impl RevocationSink for Shared {
    fn revoke_generation(&self, generation: u64) {
        let ids = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            let ids = st.exports.revoke_generation(generation);
            for id in &ids {
                st.revoked_exports.insert(*id);
            }
            st.answers
                .stop_for_caps(&ids, &Status::revoked("the capability"));
            ids
        };
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
        // Ids 0 and 1 cannot be revoked.
        caps.retain(|id| *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP);
        let (failed, releases) = {
            let mut st = self.lock();
            let mut releases = Vec::new();
            for id in &caps {
                st.revoked_imports.insert(*id);
                // Hand back every introduction now ([S23]): the exporter keeps
                // the revoked entry until its count reaches 0. The live handle,
                // when dropped, finds no entry and releases nothing more.
                if let Some(n) = st.imports.remove(*id) {
                    releases.push(Release { cap: *id, n });
                }
            }
            let status = Status::revoked("the capability");
            (st.questions.fail_for_caps(&caps, &status), releases)
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
            q.settle(Err(Status::revoked(what)));
        }
        self.emit(Event::Revoke {
            direction: Direction::Incoming,
            caps,
        });
    }
}
