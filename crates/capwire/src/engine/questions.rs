//! The question table: calls this side made and has not had answered.
//!
//! A question is plain (one `result`), kept (one `result`, the answer stays
//! at the callee for pipelining until `finish`) or a stream (`item`s within
//! the credit granted, then `end` or `stream_error`). A stream question
//! stays until its terminal frame even after its consumer went away, so
//! items still in flight are discarded rather than protocol violations.

use capwire_proto::Status;

use super::id_map::IdMap;

/// What kind of question, and a stream's flow-control state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuestionKind {
    Plain,
    Kept,
    Stream {
        /// Items the callee may still send.
        credit: u64,
        /// False once the consumer went away (or the stream was failed):
        /// items still arriving are discarded, their credit still counts.
        open: bool,
    },
}

impl QuestionKind {
    /// A stream question granting `window` items up front.
    pub(crate) fn stream(window: u32) -> QuestionKind {
        QuestionKind::Stream {
            credit: u64::from(window),
            open: true,
        }
    }
}

pub(crate) struct Question<R> {
    /// The capability called, so a revocation can fail the call; `None` for
    /// a call on a promised answer.
    pub(crate) cap: Option<u64>,
    pub(crate) kind: QuestionKind,
    /// The driver's way to tell the caller.
    pub(crate) reply: R,
}

/// What an `item` frame finds.
pub(crate) enum ItemFor<'a, R> {
    /// An open stream with credit: deliver to this reply.
    Deliver(&'a R),
    /// A stream whose consumer went away: discard the item.
    Discard,
}

pub(crate) struct Questions<R> {
    entries: IdMap<Question<R>>,
    next: u64,
}

impl<R> Default for Questions<R> {
    fn default() -> Questions<R> {
        Questions {
            entries: IdMap::default(),
            next: 0,
        }
    }
}

impl<R> Questions<R> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The id the next question gets.
    #[cfg(test)]
    pub(crate) fn next_id(&self) -> u64 {
        self.next + 1
    }

    /// Allocates a question id (never reused on a connection).
    #[inline]
    pub(crate) fn insert(&mut self, cap: Option<u64>, kind: QuestionKind, reply: R) -> u64 {
        self.next += 1;
        self.entries
            .insert(self.next, Question { cap, kind, reply });
        self.next
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Question<R>> {
        self.entries.get(&id)
    }

    /// Takes question `id` out for its `result`: a stream question is a
    /// protocol violation and stays (the session's end fails it).
    #[inline]
    pub(crate) fn take_for_result(&mut self, id: u64) -> Result<Option<Question<R>>, Status> {
        match self.entries.get(&id) {
            Some(q) if matches!(q.kind, QuestionKind::Stream { .. }) => {
                Err(Status::protocol_violation(format!(
                    "`result` for question {id}, which is a stream"
                )))
            }
            Some(_) => Ok(self.entries.remove(&id)),
            None => Ok(None),
        }
    }

    /// An `item` arrived for question `id`: it must be a stream with credit
    /// left (one unit is taken).
    #[inline]
    pub(crate) fn on_item(&mut self, id: u64) -> Result<ItemFor<'_, R>, Status> {
        match self.entries.get_mut(&id) {
            Some(Question {
                kind: QuestionKind::Stream { credit, open },
                reply,
                ..
            }) => {
                if *credit == 0 {
                    return Err(Status::protocol_violation(format!(
                        "`item` for stream {id} beyond the credit granted"
                    )));
                }
                *credit -= 1;
                Ok(if *open {
                    ItemFor::Deliver(reply)
                } else {
                    ItemFor::Discard
                })
            }
            _ => Err(Status::protocol_violation(format!(
                "`item` for question {id}, which is not an open stream"
            ))),
        }
    }

    /// `end` or `stream_error` for question `id`: the stream question, which
    /// leaves the table, and whether its consumer still listens.
    pub(crate) fn on_stream_end(&mut self, id: u64) -> Result<(Question<R>, bool), Status> {
        match self.entries.get(&id).map(|q| q.kind) {
            Some(QuestionKind::Stream { open, .. }) => {
                let q = self.entries.remove(&id).ok_or_else(|| {
                    Status::protocol_violation(format!("no stream question {id}"))
                })?;
                Ok((q, open))
            }
            // A cancelled stream stays a question until its terminal frame,
            // so there is no legitimate terminal for other ids.
            _ => Err(Status::protocol_violation(format!(
                "stream terminal frame for question {id}, which is not an open stream"
            ))),
        }
    }

    /// The consumer of stream `id` took `n` items: true if a `credit` frame
    /// is to be sent (the stream is still open).
    pub(crate) fn grant(&mut self, id: u64, n: u32) -> bool {
        match self.entries.get_mut(&id).map(|q| &mut q.kind) {
            Some(QuestionKind::Stream { credit, open: true }) => {
                *credit = credit.saturating_add(u64::from(n));
                true
            }
            _ => false,
        }
    }

    /// The consumer of stream `id` went away: true if a `cancel` is to be
    /// sent. The question stays until its terminal frame.
    pub(crate) fn close_stream(&mut self, id: u64) -> bool {
        match self.entries.get_mut(&id).map(|q| &mut q.kind) {
            Some(QuestionKind::Stream { open, .. }) if *open => {
                *open = false;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Question<R>> {
        self.entries.remove(&id)
    }

    /// Fails the questions addressed to any of `caps`: calls are removed and
    /// returned, to be settled outside the lock; streams are closed (their
    /// ids returned, for the driver to tell their consumers) and stay until
    /// their terminal frame, which the callee still sends (\[S23\]).
    pub(crate) fn fail_for_caps(&mut self, caps: &[u64]) -> (Vec<Question<R>>, Vec<u64>) {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, q)| q.cap.is_some_and(|c| caps.contains(&c)))
            .map(|(id, _)| *id)
            .collect();
        let mut failed = Vec::new();
        let mut streams = Vec::new();
        for id in ids {
            if self.close_stream(id) {
                streams.push(id);
                continue;
            }
            if let Some(q) = self.entries.get(&id) {
                if matches!(q.kind, QuestionKind::Stream { .. }) {
                    continue;
                }
            }
            failed.extend(self.entries.remove(&id));
        }
        (failed, streams)
    }

    pub(crate) fn drain(&mut self) -> Vec<Question<R>> {
        self.entries.drain().map(|(_, q)| q).collect()
    }
}
