//! The export table: objects this side hosts and has handed to the peer.

use capwire_proto::{CapDescriptor, Reason, Status, FIRST_EXPORT_CAP};

use super::id_map::IdMap;

pub(crate) struct Export<O> {
    /// What identifies the object (see [`super::Host::object_key`]).
    key: u64,
    pub(crate) object: O,
    /// Introductions not yet released by the peer.
    pub(crate) refs: u64,
    /// The registry generation, for objects served by name (revocable by unserve).
    pub(crate) generation: Option<u64>,
}

pub(crate) struct Exports<O> {
    entries: IdMap<Export<O>>,
    /// Revoked ids -> introductions the peer has not released yet. The object
    /// is gone; the count stays until the peer's releases bring it to 0, so a
    /// release that crossed the `revoked` frame is not a violation (\[S23\]).
    revoked: IdMap<u64>,
    /// Object address -> id, so an object exported twice keeps one id.
    by_object: IdMap<u64>,
    next: u64,
}

impl<O> Default for Exports<O> {
    fn default() -> Exports<O> {
        Exports {
            entries: IdMap::default(),
            revoked: IdMap::default(),
            by_object: IdMap::default(),
            next: 0,
        }
    }
}

impl<O: Clone> Exports<O> {
    /// Entries in the table, revoked ones still counted by the peer included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len() + self.revoked.len()
    }

    /// Exports `object`, known by `key` (or counts one more introduction of
    /// it) and returns its id.
    pub(crate) fn export(
        &mut self,
        key: u64,
        object: &O,
        generation: Option<u64>,
        max: usize,
    ) -> Result<u64, Status> {
        if let Some(id) = self.by_object.get(&key) {
            if let Some(e) = self.entries.get_mut(id) {
                e.refs += 1;
                return Ok(*id);
            }
        }
        // Revoked entries count too: a peer that never releases them cannot
        // make the table grow without bound.
        if self.len() >= max {
            return Err(Status::limit(Reason::MAX_CAPS_PER_CONNECTION, max as u64));
        }
        if self.next < FIRST_EXPORT_CAP {
            self.next = FIRST_EXPORT_CAP;
        }
        let id = self.next;
        self.next += 1;
        self.by_object.insert(key, id);
        self.entries.insert(
            id,
            Export {
                key,
                object: object.clone(),
                refs: 1,
                generation,
            },
        );
        Ok(id)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Export<O>> {
        self.entries.get(&id)
    }

    /// Drops `n` introductions of `id`. Releasing more than were made is the
    /// peer's protocol error.
    pub(crate) fn release(&mut self, id: u64, n: u32) -> Result<(), Status> {
        let n = u64::from(n);
        if n == 0 {
            return Ok(());
        }
        let refs = match (self.entries.get_mut(&id), self.revoked.get_mut(&id)) {
            (Some(e), _) => &mut e.refs,
            (None, Some(refs)) => refs,
            (None, None) => {
                return Err(Status::protocol_violation(format!(
                    "release of capability {id}, which is not exported"
                )))
            }
        };
        if n > *refs {
            return Err(Status::protocol_violation(format!(
                "release of {n} references to capability {id}, which has {refs}"
            )));
        }
        *refs -= n;
        if *refs == 0 {
            self.revoked.remove(&id);
            self.remove(id);
        }
        Ok(())
    }

    /// Takes back one introduction of each export descriptor in `sent`: the
    /// frame carrying them was never sent.
    pub(crate) fn unsend(&mut self, sent: &[CapDescriptor]) {
        for d in sent {
            if let CapDescriptor::Export(id) = d {
                // Cannot fail: the introduction was counted just before.
                let _ = self.release(*id, 1);
            }
        }
    }

    /// True while `id` is revoked and the peer still holds references to it.
    pub(crate) fn is_revoked(&self, id: u64) -> bool {
        self.revoked.contains_key(&id)
    }

    /// Revokes every export of registry generation `generation`: the objects
    /// are dropped, the counts kept until released. Returns their ids.
    pub(crate) fn revoke_generation(&mut self, generation: u64) -> Vec<u64> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.generation == Some(generation))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(e) = self.entries.get(id) {
                self.revoked.insert(*id, e.refs);
            }
            self.remove(*id);
        }
        ids
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.by_object.remove(&e.key);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.revoked.clear();
        self.by_object.clear();
    }
}
