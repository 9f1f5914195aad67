//! The answer table: calls the peer made that this side is running, and
//! kept answers it may still pipeline on.

use std::collections::VecDeque;
use std::sync::Arc;

use capwire_proto::{Code, PathSeg, Status};
use tokio_util::sync::CancellationToken;

use super::flow::Credit;
use super::id_map::IdMap;
use super::pipeline::{self, Queued};
use crate::capability::Capability;
use crate::value::Value;

/// The three kinds of answer (protocol.md §5.1).
pub(crate) enum AnswerKind {
    Plain,
    Kept(Pipeline),
    Stream(Arc<Credit>),
}

/// A kept answer's value, and the calls waiting for it.
#[derive(Default)]
pub(crate) struct Pipeline {
    /// The outcome, once the handler finished.
    settled: Option<Result<Value, Status>>,
    /// Calls and promises waiting for the outcome, in arrival order.
    queue: VecDeque<Queued>,
    /// The queue is being delivered: new arrivals queue behind it (E-order).
    delivering: bool,
    /// The caller sent `finish`.
    finished: bool,
}

pub(crate) struct Answer {
    /// The capability called, so a revocation can stop the handler; `None`
    /// for a call on a promised answer.
    pub(crate) cap: Option<u64>,
    pub(crate) cancel: CancellationToken,
    /// Why the handler was stopped, once it was.
    pub(crate) stopped: Option<Status>,
    /// Tells this entry from a later one with the same (reused) id.
    pub(crate) serial: u64,
    pub(crate) kind: AnswerKind,
    /// Waiting in another answer's queue: no handler runs yet.
    pub(crate) queued: bool,
}

impl Answer {
    fn stop(&mut self, status: &Status) {
        if self.stopped.is_none() {
            self.stopped = Some(status.clone());
            self.cancel.cancel();
        }
    }

    fn is_settled_kept(&self) -> bool {
        matches!(&self.kind, AnswerKind::Kept(p) if p.settled.is_some())
    }
}

/// A queued call the cancel found before it started: it is answered at once.
pub(crate) struct StoppedQueued {
    pub(crate) stream: bool,
}

#[derive(Default)]
pub(crate) struct Answers {
    entries: IdMap<Answer>,
    next_serial: u64,
    /// Calls and promises queued on unsettled answers, over all of them.
    pending_pipelined: usize,
}

impl Answers {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Answers still running or waiting to run (settled kept ones excluded).
    pub(crate) fn running(&self) -> usize {
        self.entries
            .values()
            .filter(|a| !a.is_settled_kept())
            .count()
    }

    /// Stream answers open.
    pub(crate) fn streams(&self) -> usize {
        self.entries
            .values()
            .filter(|a| matches!(a.kind, AnswerKind::Stream(_)))
            .count()
    }

    pub(crate) fn pending_pipelined(&self) -> usize {
        self.pending_pipelined
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    pub(crate) fn insert(
        &mut self,
        id: u64,
        cap: Option<u64>,
        kind: AnswerKind,
        queued: bool,
    ) -> (CancellationToken, u64) {
        let cancel = CancellationToken::new();
        self.next_serial += 1;
        self.entries.insert(
            id,
            Answer {
                cap,
                cancel: cancel.clone(),
                stopped: None,
                serial: self.next_serial,
                kind,
                queued,
            },
        );
        (cancel, self.next_serial)
    }

    /// Stops the handler of answer `id` with `status`. Unknown ids are ignored
    /// (the answer may have just been sent). A call still queued on another
    /// answer is removed and returned: the caller answers it at once.
    pub(crate) fn stop(&mut self, id: u64, status: Status) -> Option<StoppedQueued> {
        let a = self.entries.get_mut(&id)?;
        if a.queued {
            let stream = matches!(a.kind, AnswerKind::Stream(_));
            self.entries.remove(&id);
            return Some(StoppedQueued { stream });
        }
        a.stop(&status);
        None
    }

    /// Stops every handler running on one of `caps`.
    pub(crate) fn stop_for_caps(&mut self, caps: &[u64], status: &Status) {
        for a in self
            .entries
            .values_mut()
            .filter(|a| a.cap.is_some_and(|c| caps.contains(&c)))
        {
            a.stop(status);
        }
    }

    pub(crate) fn stop_all(&mut self, status: &Status) {
        for a in self.entries.values_mut() {
            a.stop(status);
        }
    }

    /// For a running answer, why it was stopped, if it was.
    pub(crate) fn stopped(&self, id: u64) -> Option<Option<Status>> {
        self.entries.get(&id).map(|a| a.stopped.clone())
    }

    pub(crate) fn is_kept(&self, id: u64) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|a| matches!(a.kind, AnswerKind::Kept(_)))
    }

    /// The credit of a stream answer.
    pub(crate) fn credit(&self, id: u64) -> Option<Arc<Credit>> {
        match &self.entries.get(&id)?.kind {
            AnswerKind::Stream(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// A queued call is about to start: true if it is still waiting (not
    /// cancelled meanwhile, its id not reused).
    pub(crate) fn dequeue(&mut self, id: u64, serial: u64) -> bool {
        match self.entries.get_mut(&id) {
            Some(a) if a.serial == serial && a.queued => {
                a.queued = false;
                true
            }
            _ => false,
        }
    }

    /// Where a pipelined reference to answer `id` at `path` leads: the
    /// capability, if the answer has settled (and delivered its queue), or
    /// `None` when the reference has to wait in the queue.
    pub(crate) fn pipeline_target(
        &self,
        id: u64,
        path: &[PathSeg],
    ) -> Result<Option<Capability>, Status> {
        let Some(a) = self.entries.get(&id) else {
            return Err(Status::new(
                Code::NotFound,
                format!("no answer {id} to pipeline on: never asked, or already finished"),
            ));
        };
        match &a.kind {
            AnswerKind::Kept(p) => match &p.settled {
                Some(outcome) if !p.delivering => pipeline::resolve(outcome, path).map(Some),
                _ => Ok(None),
            },
            AnswerKind::Plain => Err(Status::new(
                Code::InvalidArgument,
                format!("answer {id} was not kept: a call pipelined on must be sent with `keep`"),
            )),
            AnswerKind::Stream(_) => Err(Status::new(
                Code::InvalidArgument,
                format!("answer {id} is a stream and cannot be pipelined on"),
            )),
        }
    }

    /// Queues `item` on the unsettled kept answer `id` (checked by
    /// [`Answers::pipeline_target`] under the same lock).
    pub(crate) fn enqueue(&mut self, id: u64, item: Queued) {
        if let Some(Answer {
            kind: AnswerKind::Kept(p),
            ..
        }) = self.entries.get_mut(&id)
        {
            p.queue.push_back(item);
            self.pending_pipelined += 1;
        }
    }

    /// Records the outcome of kept answer `id` and starts delivering its
    /// queue: returns the first batch to deliver.
    pub(crate) fn settle(&mut self, id: u64, outcome: Result<Value, Status>) -> VecDeque<Queued> {
        let Some(Answer {
            kind: AnswerKind::Kept(p),
            ..
        }) = self.entries.get_mut(&id)
        else {
            return VecDeque::new();
        };
        p.settled = Some(outcome);
        p.delivering = true;
        let batch = std::mem::take(&mut p.queue);
        self.pending_pipelined -= batch.len();
        batch
    }

    /// The next batch of a delivery in progress, or `None` when the queue is
    /// empty and delivery ends (which frees the answer if it was finished).
    pub(crate) fn next_batch(&mut self, id: u64) -> Result<VecDeque<Queued>, Option<Box<Answer>>> {
        let Some(Answer {
            kind: AnswerKind::Kept(p),
            ..
        }) = self.entries.get_mut(&id)
        else {
            return Err(None);
        };
        if p.queue.is_empty() {
            p.delivering = false;
            let finished = p.finished;
            return Err(if finished {
                self.remove(id).map(Box::new)
            } else {
                None
            });
        }
        let batch = std::mem::take(&mut p.queue);
        self.pending_pipelined -= batch.len();
        Ok(batch)
    }

    /// The caller sent `finish` for `id`: a settled kept answer is freed
    /// (returned, to be dropped outside the lock); an unsettled one is
    /// cancelled and freed when its result is sent. Plain and stream answers
    /// ignore it.
    pub(crate) fn finish(&mut self, id: u64) -> Option<Answer> {
        let a = self.entries.get_mut(&id)?;
        let AnswerKind::Kept(p) = &mut a.kind else {
            return None;
        };
        p.finished = true;
        if p.settled.is_none() {
            a.stop(&Status::new(
                Code::Cancelled,
                "the caller finished the question before it settled",
            ));
            return None;
        }
        if p.delivering {
            return None;
        }
        self.remove(id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Answer> {
        let a = self.entries.remove(&id)?;
        if let AnswerKind::Kept(p) = &a.kind {
            self.pending_pipelined -= p.queue.len();
        }
        Some(a)
    }

    /// Empties the table, handing the entries back to be dropped outside the lock.
    pub(crate) fn clear(&mut self) -> Vec<Answer> {
        self.pending_pipelined = 0;
        self.entries.drain().map(|(_, a)| a).collect()
    }
}
