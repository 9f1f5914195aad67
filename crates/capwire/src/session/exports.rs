//! The export table: objects this side hosts and has handed to the peer.

use std::collections::HashMap;
use std::sync::Arc;

use capwire_proto::{Reason, Status, FIRST_EXPORT_CAP};

use crate::object::Object;

pub(crate) struct Export {
    pub(crate) object: Arc<dyn Object>,
    /// Introductions not yet released by the peer.
    pub(crate) refs: u64,
    /// The registry generation, for objects served by name (revocable by unserve).
    pub(crate) generation: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Exports {
    entries: HashMap<u64, Export>,
    /// Object address -> id, so an object exported twice keeps one id.
    by_object: HashMap<usize, u64>,
    next: u64,
}

fn key(object: &Arc<dyn Object>) -> usize {
    Arc::as_ptr(object) as *const () as usize
}

impl Exports {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Exports `object` (or counts one more introduction of it) and returns its id.
    pub(crate) fn export(
        &mut self,
        object: &Arc<dyn Object>,
        generation: Option<u64>,
        max: usize,
    ) -> Result<u64, Status> {
        if let Some(id) = self.by_object.get(&key(object)) {
            if let Some(e) = self.entries.get_mut(id) {
                e.refs += 1;
                return Ok(*id);
            }
        }
        if self.entries.len() >= max {
            return Err(Status::limit(Reason::MAX_CAPS_PER_CONNECTION, max as u64));
        }
        if self.next < FIRST_EXPORT_CAP {
            self.next = FIRST_EXPORT_CAP;
        }
        let id = self.next;
        self.next += 1;
        self.by_object.insert(key(object), id);
        self.entries.insert(
            id,
            Export {
                object: object.clone(),
                refs: 1,
                generation,
            },
        );
        Ok(id)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Export> {
        self.entries.get(&id)
    }

    /// Drops `n` introductions of `id`. Releasing more than were made is the
    /// peer's protocol error.
    pub(crate) fn release(&mut self, id: u64, n: u32) -> Result<(), Status> {
        let Some(e) = self.entries.get_mut(&id) else {
            return Err(Status::protocol_violation(format!(
                "release of capability {id}, which is not exported"
            )));
        };
        let n = u64::from(n);
        if n == 0 || n > e.refs {
            return Err(Status::protocol_violation(format!(
                "release of {n} references to capability {id}, which has {}",
                e.refs
            )));
        }
        e.refs -= n;
        if e.refs == 0 {
            self.remove(id);
        }
        Ok(())
    }

    /// Removes every export of registry generation `generation`; returns their ids.
    pub(crate) fn revoke_generation(&mut self, generation: u64) -> Vec<u64> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.generation == Some(generation))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.remove(*id);
        }
        ids
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.by_object.remove(&key(&e.object));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.by_object.clear();
    }
}
