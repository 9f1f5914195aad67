//! The answer table: calls the peer made that this side is running.

use std::collections::HashMap;

use capwire_proto::Status;
use tokio_util::sync::CancellationToken;

pub(crate) struct Answer {
    /// The capability called, so a revocation can stop the handler.
    pub(crate) cap: u64,
    pub(crate) cancel: CancellationToken,
    /// Why the handler was stopped, once it was.
    pub(crate) stopped: Option<Status>,
}

#[derive(Default)]
pub(crate) struct Answers {
    entries: HashMap<u64, Answer>,
}

impl Answers {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    pub(crate) fn insert(&mut self, id: u64, cap: u64) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.entries.insert(
            id,
            Answer {
                cap,
                cancel: cancel.clone(),
                stopped: None,
            },
        );
        cancel
    }

    /// Stops the handler of answer `id` with `status`. Unknown ids are ignored
    /// (the answer may have just been sent).
    pub(crate) fn stop(&mut self, id: u64, status: Status) {
        if let Some(a) = self.entries.get_mut(&id) {
            if a.stopped.is_none() {
                a.stopped = Some(status);
                a.cancel.cancel();
            }
        }
    }

    /// Stops every handler running on one of `caps`.
    pub(crate) fn stop_for_caps(&mut self, caps: &[u64], status: &Status) {
        for a in self.entries.values_mut().filter(|a| caps.contains(&a.cap)) {
            if a.stopped.is_none() {
                a.stopped = Some(status.clone());
                a.cancel.cancel();
            }
        }
    }

    pub(crate) fn stop_all(&mut self, status: &Status) {
        for a in self.entries.values_mut() {
            if a.stopped.is_none() {
                a.stopped = Some(status.clone());
                a.cancel.cancel();
            }
        }
    }

    /// For a running answer, why it was stopped, if it was.
    pub(crate) fn stopped(&self, id: u64) -> Option<Option<Status>> {
        self.entries.get(&id).map(|a| a.stopped.clone())
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Answer> {
        self.entries.remove(&id)
    }
}
