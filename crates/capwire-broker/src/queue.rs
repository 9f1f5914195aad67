//! An endpoint's queue as the broker holds it in memory: the durable queue's
//! mirror, plus what the store does not need to know (which messages are
//! committed yet, which are out on the current receiver).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::{Envelope, Seq};

/// One queued message.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) seq: Seq,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) bytes: usize,
    /// Durable: only a committed prefix of the queue is delivered.
    pub(crate) committed: bool,
    /// Deliveries counted durably so far.
    pub(crate) deliveries: u32,
    /// Handed to the current receiver and not acknowledged yet.
    pub(crate) in_flight: bool,
}

/// Messages in seq order, with their totals.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: VecDeque<Queued>,
    pub(crate) next_seq: Seq,
    pub(crate) bytes: usize,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.items.iter().filter(|q| q.in_flight).count()
    }

    /// Appends (seqs only grow).
    pub(crate) fn push(&mut self, item: Queued) {
        debug_assert!(self.items.back().map_or(true, |b| b.seq < item.seq));
        self.next_seq = self.next_seq.max(item.seq + 1);
        self.bytes += item.bytes;
        self.items.push_back(item);
    }

    fn position(&self, seq: Seq) -> Option<usize> {
        self.items.binary_search_by_key(&seq, |q| q.seq).ok()
    }

    pub(crate) fn get_mut(&mut self, seq: Seq) -> Option<&mut Queued> {
        let i = self.position(seq)?;
        self.items.get_mut(i)
    }

    pub(crate) fn get(&self, seq: Seq) -> Option<&Queued> {
        self.items.get(self.position(seq)?)
    }

    pub(crate) fn remove(&mut self, seq: Seq) -> Option<Queued> {
        let item = self.items.remove(self.position(seq)?)?;
        self.bytes -= item.bytes;
        Some(item)
    }

    /// A new receiver starts from the oldest unacknowledged message.
    pub(crate) fn reset_in_flight(&mut self) {
        for item in &mut self.items {
            item.in_flight = false;
        }
    }

    /// Up to `n` messages to deliver next: committed, not out yet, in order,
    /// stopping at the first uncommitted one (order is never broken).
    pub(crate) fn next_batch(&mut self, n: usize) -> Vec<&mut Queued> {
        self.items
            .iter_mut()
            .skip_while(|q| q.in_flight)
            .take_while(|q| q.committed && !q.in_flight)
            .take(n)
            .collect()
    }

    /// True if the next message after those out is committed.
    pub(crate) fn has_deliverable(&self) -> bool {
        self.items
            .iter()
            .find(|q| !q.in_flight)
            .is_some_and(|q| q.committed)
    }

    /// Every committed message, removed (the endpoint closed).
    pub(crate) fn take_committed(&mut self) -> Vec<Queued> {
        let (committed, rest): (VecDeque<_>, VecDeque<_>) =
            self.items.drain(..).partition(|q| q.committed);
        self.items = rest;
        self.bytes = self.items.iter().map(|q| q.bytes).sum();
        committed.into()
    }
}
