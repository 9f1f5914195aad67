//! The question table: calls this side made and has not had answered.

use std::collections::HashMap;

use capwire_proto::Status;
use tokio::sync::oneshot;

use crate::value::Value;

pub(crate) struct Question {
    /// The capability called, so a revocation can fail the call.
    pub(crate) cap: u64,
    pub(crate) reply: oneshot::Sender<Result<Value, Status>>,
}

#[derive(Default)]
pub(crate) struct Questions {
    entries: HashMap<u64, Question>,
    next: u64,
}

impl Questions {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Allocates a question id (never reused on a connection).
    pub(crate) fn insert(&mut self, cap: u64) -> (u64, oneshot::Receiver<Result<Value, Status>>) {
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.entries.insert(self.next, Question { cap, reply: tx });
        (self.next, rx)
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Question> {
        self.entries.remove(&id)
    }

    /// Removes the questions addressed to any of `caps`.
    pub(crate) fn take_for_caps(&mut self, caps: &[u64]) -> Vec<Question> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, q)| caps.contains(&q.cap))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.entries.remove(&id))
            .collect()
    }

    pub(crate) fn drain(&mut self) -> Vec<Question> {
        self.entries.drain().map(|(_, q)| q).collect()
    }
}
