//! The answer table: calls the peer made that this side is running, and
//! kept answers it may still pipeline on.
//!
//! An answer's life is [`Life`]; every transition is a method here:
//!
//! ```text
//!            insert                 dequeue
//!   (call) ─────────> Queued ───────────────> Running ──stop──> Stopping
//!     │                 │ stop/finish: refused   │                 │
//!     └── insert ───────┼──────────────────────> │                 │
//!                       v                        │ settle (kept)   │
//!                    (removed)          Delivering <───────────────┘
//!                                           │ next_batch: queue empty
//!                                           v
//!                                        Settled ──finish──> (removed)
//! ```
//!
//! Plain and stream answers leave the table when their result is sent
//! (`remove`); kept ones settle, deliver the calls queued on them in arrival
//! order, and stay until the caller's `finish`.

use std::collections::VecDeque;

use capwire_proto::{Code, PathSeg, Status};

use super::id_map::IdMap;
use super::AnswerHost;

/// The three kinds of answer (protocol.md §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    Plain,
    Kept,
    Stream,
}

/// Where an answer is in its life. The payloads of the rarer states are
/// boxed: every call's answer carries a `Life`, most only `Running`.
pub(crate) enum Life<H: AnswerHost> {
    /// Waiting in another kept answer's queue: no handler runs yet.
    Queued,
    /// The handler runs.
    Running,
    /// The handler was told to stop, for this reason; it is finishing.
    Stopping(Box<Status>),
    /// A kept answer's handler finished: the queue is being delivered, and
    /// calls that arrive meanwhile queue behind it (E-order, \[S15\]).
    Delivering(Box<Result<H::Value, Status>>),
    /// A kept answer settled and delivered: calls on it start at once.
    Settled(Box<Result<H::Value, Status>>),
}

/// What waits on a kept answer: the path it wants, and the driver's item.
pub(crate) struct Pending<H: AnswerHost> {
    pub(crate) path: Vec<PathSeg>,
    pub(crate) waiting: H::Waiting,
}

pub(crate) struct Answer<H: AnswerHost> {
    /// The capability called, so a revocation can stop the handler; `None`
    /// for a call on a promised answer.
    pub(crate) cap: Option<u64>,
    /// Tells this entry from a later one with the same (reused) id.
    serial: u64,
    /// The driver's part: how to stop the handler, a stream's credit.
    pub(crate) running: H::Running,
    kind: AnswerKind,
    life: Life<H>,
    /// Kept answers: calls and promises waiting for the outcome, in order
    /// (`None` until the first one: a plain call's answer carries no queue).
    queue: Option<VecDeque<Pending<H>>>,
    /// Kept answers: the caller sent `finish`.
    finished: bool,
}

impl<H: AnswerHost> Answer<H> {
    fn unsettled(&self) -> bool {
        !matches!(self.life, Life::Delivering(_) | Life::Settled(_))
    }
}

/// A call the engine answers at once without running it (cancelled or
/// finished while it waited in a queue, \[S21\]): is it a stream?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) stream: bool,
}

/// What the caller's `finish` did.
pub(crate) enum Finished<H: AnswerHost> {
    /// Nothing (not a kept answer, unknown, or still delivering: it is freed
    /// when delivery ends).
    Nothing,
    /// The answer had not settled: its handler is to stop (and the answer
    /// is freed when its result is sent).
    Stop(H::Running),
    /// A queued kept call that never started: answer it at once.
    Refused(Refusal),
    /// The answer was freed: drop it outside any lock.
    Freed(Box<Answer<H>>),
}

pub(crate) struct Answers<H: AnswerHost> {
    entries: IdMap<Answer<H>>,
    next_serial: u64,
    /// Calls and promises queued on unsettled answers, over all of them.
    pending_pipelined: usize,
}

impl<H: AnswerHost> Default for Answers<H> {
    fn default() -> Answers<H> {
        Answers {
            entries: IdMap::default(),
            next_serial: 0,
            pending_pipelined: 0,
        }
    }
}

impl<H: AnswerHost> Answers<H> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Answers still running or waiting to run (settled kept ones excluded).
    pub(crate) fn running(&self) -> usize {
        self.entries.values().filter(|a| a.unsettled()).count()
    }

    /// Stream answers open.
    pub(crate) fn streams(&self) -> usize {
        self.entries
            .values()
            .filter(|a| a.kind == AnswerKind::Stream)
            .count()
    }

    pub(crate) fn pending_pipelined(&self) -> usize {
        self.pending_pipelined
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Records a new answer, running or queued; returns its serial.
    pub(crate) fn insert(
        &mut self,
        id: u64,
        cap: Option<u64>,
        kind: AnswerKind,
        queued: bool,
        running: H::Running,
    ) -> u64 {
        self.next_serial += 1;
        self.entries.insert(
            id,
            Answer {
                cap,
                serial: self.next_serial,
                running,
                kind,
                life: if queued { Life::Queued } else { Life::Running },
                queue: None,
                finished: false,
            },
        );
        self.next_serial
    }

    /// Records a kept call answered with `status` without running: it is
    /// settled at once, so calls pipelined on it fail with the same error,
    /// and stays until the caller's `finish`.
    pub(crate) fn insert_failed(
        &mut self,
        id: u64,
        cap: Option<u64>,
        running: H::Running,
        status: Status,
    ) {
        self.next_serial += 1;
        self.entries.insert(
            id,
            Answer {
                cap,
                serial: self.next_serial,
                running,
                kind: AnswerKind::Kept,
                life: Life::Settled(Box::new(Err(status))),
                queue: None,
                finished: false,
            },
        );
    }

    /// Where answer `id` is in its life, and its kind (one lookup).
    pub(crate) fn life_and_kind(&self, id: u64) -> Option<(&Life<H>, AnswerKind)> {
        self.entries.get(&id).map(|a| (&a.life, a.kind))
    }

    /// Where answer `id` is in its life.
    #[cfg(test)]
    pub(crate) fn life(&self, id: u64) -> Option<&Life<H>> {
        self.entries.get(&id).map(|a| &a.life)
    }

    /// Why answer `id` was told to stop, if it was.
    pub(crate) fn why_stopped(&self, id: u64) -> Option<&Status> {
        match &self.entries.get(&id)?.life {
            Life::Stopping(why) => Some(why),
            _ => None,
        }
    }

    /// The driver's part of answer `id`, if it is a stream (its credit).
    pub(crate) fn stream(&self, id: u64) -> Option<&H::Running> {
        self.entries
            .get(&id)
            .filter(|a| a.kind == AnswerKind::Stream)
            .map(|a| &a.running)
    }

    /// Stops the handler of answer `id` with `status`: the handler to stop,
    /// or a refusal for a call still queued (removed: it is answered at
    /// once). Unknown ids, and answers already stopping or settled, are
    /// ignored (the answer may have just been sent).
    pub(crate) fn stop(&mut self, id: u64, status: Status) -> Option<Result<H::Running, Refusal>> {
        let a = self.entries.get_mut(&id)?;
        match a.life {
            Life::Queued => {
                let stream = a.kind == AnswerKind::Stream;
                self.remove(id);
                Some(Err(Refusal { stream }))
            }
            Life::Running => {
                a.life = Life::Stopping(Box::new(status));
                Some(Ok(a.running.clone()))
            }
            Life::Stopping(_) | Life::Delivering(_) | Life::Settled(_) => None,
        }
    }

    /// Stops every handler running on one of `caps`.
    pub(crate) fn stop_for_caps(&mut self, caps: &[u64], status: &Status) -> Vec<H::Running> {
        let mut stopped = Vec::new();
        for a in self
            .entries
            .values_mut()
            .filter(|a| a.cap.is_some_and(|c| caps.contains(&c)))
        {
            if let Life::Running = a.life {
                a.life = Life::Stopping(Box::new(status.clone()));
                stopped.push(a.running.clone());
            }
        }
        stopped
    }

    /// A queued call is about to start: true if it is still waiting (not
    /// cancelled meanwhile, its id not reused).
    pub(crate) fn dequeue(&mut self, id: u64, serial: u64) -> bool {
        match self.entries.get_mut(&id) {
            Some(a) if a.serial == serial && matches!(a.life, Life::Queued) => {
                a.life = Life::Running;
                true
            }
            _ => false,
        }
    }

    /// What a pipelined reference to answer `id` finds: the settled outcome,
    /// or `None` when the reference has to wait in the queue.
    pub(crate) fn pipeline_target(
        &self,
        id: u64,
    ) -> Result<Option<&Result<H::Value, Status>>, Status> {
        let Some(a) = self.entries.get(&id) else {
            return Err(Status::new(
                Code::NotFound,
                format!("no answer {id} to pipeline on: never asked, or already finished"),
            ));
        };
        match a.kind {
            AnswerKind::Kept => match &a.life {
                Life::Settled(outcome) => Ok(Some(outcome)),
                _ => Ok(None),
            },
            AnswerKind::Plain => Err(Status::new(
                Code::InvalidArgument,
                format!("answer {id} was not kept: a call pipelined on must be sent with `keep`"),
            )),
            AnswerKind::Stream => Err(Status::new(
                Code::InvalidArgument,
                format!("answer {id} is a stream and cannot be pipelined on"),
            )),
        }
    }

    /// Queues `waiting` on the unsettled kept answer `id` (checked by
    /// [`Answers::pipeline_target`] under the same lock).
    pub(crate) fn enqueue(&mut self, id: u64, path: Vec<PathSeg>, waiting: H::Waiting) {
        if let Some(a) = self.entries.get_mut(&id) {
            if a.kind == AnswerKind::Kept {
                a.queue
                    .get_or_insert_with(VecDeque::new)
                    .push_back(Pending { path, waiting });
                self.pending_pipelined += 1;
            }
        }
    }

    /// Records the outcome of kept answer `id` and starts delivering its
    /// queue: returns the first batch to deliver.
    pub(crate) fn settle(
        &mut self,
        id: u64,
        outcome: Result<H::Value, Status>,
    ) -> VecDeque<Pending<H>> {
        let Some(a) = self.entries.get_mut(&id) else {
            return VecDeque::new();
        };
        if a.kind != AnswerKind::Kept {
            return VecDeque::new();
        }
        a.life = Life::Delivering(Box::new(outcome));
        let batch = a.queue.take().unwrap_or_default();
        self.pending_pipelined -= batch.len();
        batch
    }

    /// The next batch of a delivery in progress, or `Err` when the queue is
    /// empty and delivery ends — with the answer, if that freed it (it was
    /// finished meanwhile).
    pub(crate) fn next_batch(
        &mut self,
        id: u64,
    ) -> Result<VecDeque<Pending<H>>, Option<Box<Answer<H>>>> {
        let Some(a) = self.entries.get_mut(&id) else {
            return Err(None);
        };
        if a.queue.as_ref().map_or(true, VecDeque::is_empty) {
            let life = std::mem::replace(&mut a.life, Life::Running);
            a.life = match life {
                Life::Delivering(o) => Life::Settled(o),
                other => other,
            };
            let finished = a.finished;
            return Err(if finished {
                self.remove(id).map(Box::new)
            } else {
                None
            });
        }
        let batch = a.queue.take().unwrap_or_default();
        self.pending_pipelined -= batch.len();
        Ok(batch)
    }

    /// The caller sent `finish` for `id`. Plain and stream answers ignore it.
    pub(crate) fn finish(&mut self, id: u64) -> Finished<H> {
        let Some(a) = self.entries.get_mut(&id) else {
            return Finished::Nothing;
        };
        if a.kind != AnswerKind::Kept {
            return Finished::Nothing;
        }
        a.finished = true;
        match a.life {
            // Nothing waits on it: it never starts, and is answered now.
            Life::Queued if a.queue.as_ref().map_or(true, VecDeque::is_empty) => {
                self.remove(id);
                Finished::Refused(Refusal { stream: false })
            }
            // Calls wait on it: it runs when its turn comes, and settles them.
            Life::Queued => Finished::Nothing,
            Life::Running => {
                a.life = Life::Stopping(Box::new(Status::new(
                    Code::Cancelled,
                    "the caller finished the question before it settled",
                )));
                Finished::Stop(a.running.clone())
            }
            Life::Stopping(_) | Life::Delivering(_) => Finished::Nothing,
            Life::Settled(_) => match self.remove(id) {
                Some(a) => Finished::Freed(Box::new(a)),
                None => Finished::Nothing,
            },
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Answer<H>> {
        let a = self.entries.remove(&id)?;
        self.pending_pipelined -= a.queue.as_ref().map_or(0, VecDeque::len);
        Some(a)
    }

    /// Empties the table, handing the entries back to be stopped and
    /// dropped outside the lock.
    pub(crate) fn clear(&mut self) -> Vec<Answer<H>> {
        self.pending_pipelined = 0;
        self.entries.drain().map(|(_, a)| a).collect()
    }
}
