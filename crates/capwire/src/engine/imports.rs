//! The import table: the peer's objects this side holds handles to.

use std::collections::VecDeque;

use super::id_map::{IdMap, IdSet};
use super::WeakHandle;

struct Import<W> {
    /// Introductions received and not yet released.
    intros: u32,
    handle: W,
    /// Serial of the live handle: a dropped handle only releases the entry it made.
    serial: u64,
}

pub(crate) struct Imports<W> {
    entries: IdMap<Import<W>>,
    next_serial: u64,
}

impl<W> Default for Imports<W> {
    fn default() -> Imports<W> {
        Imports {
            entries: IdMap::default(),
            next_serial: 0,
        }
    }
}

impl<W: WeakHandle> Imports<W> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records one introduction of `id`, returning the live handle for it
    /// (new, or the one already held).
    pub(crate) fn introduce(&mut self, id: u64, make: impl FnOnce(u64) -> W::Strong) -> W::Strong {
        self.next_serial += 1;
        let serial = self.next_serial;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.intros = entry.intros.saturating_add(1);
            if let Some(live) = entry.handle.upgrade() {
                return live;
            }
            // The old handle was just dropped and its release is not processed
            // yet: the new handle takes the entry over, counts included.
            let fresh = make(serial);
            entry.handle = W::downgrade(&fresh);
            entry.serial = serial;
            return fresh;
        }
        let fresh = make(serial);
        self.entries.insert(
            id,
            Import {
                intros: 1,
                handle: W::downgrade(&fresh),
                serial,
            },
        );
        fresh
    }

    /// The handle with `serial` for `id` was dropped: returns the count to
    /// release, unless a newer handle took the entry over.
    pub(crate) fn dropped(&mut self, id: u64, serial: u64) -> Option<u32> {
        let entry = self.entries.get(&id)?;
        if entry.serial != serial {
            return None;
        }
        self.entries.remove(&id).map(|e| e.intros)
    }

    /// Forgets `id` (the peer revoked it); returns the introductions to release.
    pub(crate) fn remove(&mut self, id: u64) -> Option<u32> {
        self.entries.remove(&id).map(|e| e.intros)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Ids the peer revoked, remembered so later calls fail without a round trip.
/// Bounded: the oldest are forgotten first.
pub(crate) struct RevokedIds {
    order: VecDeque<u64>,
    set: IdSet,
    max: usize,
}

impl RevokedIds {
    pub(crate) fn new(max: usize) -> RevokedIds {
        RevokedIds {
            order: VecDeque::new(),
            set: IdSet::default(),
            max,
        }
    }

    pub(crate) fn insert(&mut self, id: u64) {
        if self.max == 0 || !self.set.insert(id) {
            return;
        }
        if self.order.len() >= self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }
}
