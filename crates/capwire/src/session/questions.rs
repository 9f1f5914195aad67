//! The question table: calls this side made and has not had answered.

use capwire_proto::Status;
use tokio::sync::{mpsc, oneshot, watch};

use super::id_map::IdMap;
use crate::value::Value;

/// What a question's caller is told when it is answered.
pub(crate) enum Reply {
    /// A plain call: one result, to one waiter.
    Once(oneshot::Sender<Result<Value, Status>>),
    /// A kept call: the result is shared by every handle to the promise.
    Kept {
        tx: watch::Sender<Option<Result<Value, Status>>>,
        meta: Meta,
    },
    /// A stream call: items, in order; `tx` is `None` once the caller
    /// cancelled (items still arriving are dropped, their credit still counts).
    Stream {
        tx: Option<mpsc::UnboundedSender<Result<Value, Status>>>,
        /// Items the callee may still send.
        credit: u64,
        meta: Meta,
    },
}

/// What the events of a kept or stream question report.
pub(crate) struct Meta {
    pub(crate) method: String,
    pub(crate) started: crate::events::Started,
}

pub(crate) struct Question {
    /// The capability called, so a revocation can fail the call; `None` for
    /// a call on a promised answer.
    pub(crate) cap: Option<u64>,
    pub(crate) reply: Reply,
}

impl Question {
    /// Gives the caller its outcome. A stream only hears about errors: its
    /// items went to it as they came.
    pub(crate) fn settle(self, outcome: Result<Value, Status>) {
        match self.reply {
            Reply::Once(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Kept { tx, .. } => {
                tx.send_replace(Some(outcome));
            }
            Reply::Stream { tx, .. } => {
                if let (Some(tx), Err(status)) = (tx, outcome) {
                    let _ = tx.send(Err(status));
                }
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Questions {
    entries: IdMap<Question>,
    next: u64,
}

impl Questions {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Allocates a question id (never reused on a connection).
    pub(crate) fn insert(&mut self, cap: Option<u64>, reply: Reply) -> u64 {
        self.next += 1;
        self.entries.insert(self.next, Question { cap, reply });
        self.next
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Question> {
        self.entries.get_mut(&id)
    }

    pub(crate) fn is_stream(&self, id: u64) -> Option<bool> {
        self.entries
            .get(&id)
            .map(|q| matches!(q.reply, Reply::Stream { .. }))
    }

    /// Puts back a question [`Questions::remove`] took out.
    pub(crate) fn restore(&mut self, id: u64, question: Question) {
        self.entries.insert(id, question);
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Question> {
        self.entries.remove(&id)
    }

    /// Fails the questions addressed to any of `caps` with `status`.
    /// Calls are removed and returned, to be settled outside the lock;
    /// streams hear the error now and stay until their terminal frame, which
    /// the callee still sends (\[S23\]).
    pub(crate) fn fail_for_caps(&mut self, caps: &[u64], status: &Status) -> Vec<Question> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, q)| q.cap.is_some_and(|c| caps.contains(&c)))
            .map(|(id, _)| *id)
            .collect();
        let mut failed = Vec::new();
        for id in ids {
            if let Some(Question {
                reply: Reply::Stream { tx, .. },
                ..
            }) = self.entries.get_mut(&id)
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(status.clone()));
                }
                continue;
            }
            failed.extend(self.entries.remove(&id));
        }
        failed
    }

    pub(crate) fn drain(&mut self) -> Vec<Question> {
        self.entries.drain().map(|(_, q)| q).collect()
    }
}
