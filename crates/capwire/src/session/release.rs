//! Handles dropped here: the last handle of an import sends `release`, the
//! last handle of a kept question sends `finish`. A drop never waits for the
//! session lock; when it cannot take it, the release task does the work.

use std::sync::{Arc, MutexGuard};

use capwire_proto::{Code, Finish, Frame};

use crate::capability::{CapKind, Capability};

use super::{Dropped, Reply, Shared, State};

impl Shared {
    pub(super) fn remote_handle(self: &Arc<Self>, id: u64) -> Capability {
        let handle = self.lock().import_handle(id);
        Capability {
            kind: CapKind::Remote(handle),
        }
    }

    /// The last handle to import `id` is gone: `release`, now if the
    /// session lock can be taken without waiting, else from the release task.
    pub(crate) fn queue_release(self: &Arc<Self>, id: u64, serial: u64) {
        match self.try_lock_here() {
            Some(st) => self.drop_import_locked(st, id, serial),
            None => {
                let _ = self.releases.send(Dropped::Import { id, serial });
            }
        }
    }

    /// The last handle to kept question `id` is gone: `finish`, now if the
    /// session lock can be taken without waiting, else from the release task.
    pub(crate) fn queue_finish(self: &Arc<Self>, id: u64) {
        match self.try_lock_here() {
            Some(st) => self.drop_kept_locked(st, id),
            None => {
                let _ = self.releases.send(Dropped::Kept(id));
            }
        }
    }

    /// The session lock, if a dropped handle can do its table work here:
    /// taken without waiting (so never when this thread holds it already,
    /// the lock is not reentrant, nor when another thread does), and only
    /// inside a runtime (a frame that has to wait for room in the queue
    /// needs one to be sent). A handle's drop never waits for the lock.
    pub(super) fn try_lock_here(&self) -> Option<MutexGuard<'_, State>> {
        tokio::runtime::Handle::try_current().ok()?;
        match self.state.try_lock() {
            Ok(st) => Some(st),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The last handle to kept question `id` is gone: the callee may free
    /// the answer (and cancels it if it has not settled).
    pub(super) fn drop_kept(self: &Arc<Self>, id: u64) {
        self.drop_kept_locked(self.lock(), id);
    }

    /// [`Shared::drop_kept`] with the lock already taken (released here).
    pub(super) fn drop_kept_locked(self: &Arc<Self>, st: MutexGuard<'_, State>, id: u64) {
        let unsettled = {
            let mut st = st;
            if st.ended().is_some() {
                return;
            }
            st.questions.remove(id)
        };
        if let Some(q) = unsettled {
            if let Reply::Kept { meta, .. } = q.reply {
                self.record_outgoing(q.cap, id, meta, Code::Cancelled, false);
            }
            self.notify_settled();
        }
        self.send_nowait(Frame::Finish(Finish { id }));
    }

    pub(super) fn drop_import(self: &Arc<Self>, id: u64, serial: u64) {
        self.drop_import_locked(self.lock(), id, serial);
    }

    /// [`Shared::drop_import`] with the lock already taken (released here).
    pub(super) fn drop_import_locked(
        self: &Arc<Self>,
        st: MutexGuard<'_, State>,
        id: u64,
        serial: u64,
    ) {
        let mut st = st;
        let released = st.on_import_dropped(id, serial);
        drop(st);
        if let Some(release) = released {
            self.send_nowait(Frame::Release(release));
        }
    }
}
