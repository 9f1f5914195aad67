//! Sessions: each live session has its own replay ring and turn state; a cap
//! on live sessions evicts the oldest idle one nobody views.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::ring::{Ring, RingLimits, SharedRing};

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) ring: Arc<SharedRing>,
    /// Prompts sent and not yet answered (busy while > 0).
    pub(crate) prompts: u32,
    /// The client id that prompted last: without a lease, the agent's
    /// requests of this session go to it.
    pub(crate) driver: Option<String>,
    pub(crate) last_active: Instant,
}

impl Session {
    pub(crate) fn busy(&self) -> bool {
        self.prompts > 0
    }
}

#[derive(Debug)]
pub(crate) struct Sessions {
    map: HashMap<String, Session>,
    limits: RingLimits,
    max_live: usize,
    epoch_prefix: String,
    made: u64,
}

impl Sessions {
    pub(crate) fn new(limits: RingLimits, max_live: usize, epoch_prefix: String) -> Sessions {
        Sessions {
            map: HashMap::new(),
            limits,
            max_live: max_live.max(1),
            epoch_prefix,
            made: 0,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Session> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Session> {
        self.map.get_mut(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.map.values_mut()
    }

    /// The session `id`, made (with a fresh ring and epoch) if it is not
    /// live; true when it was made.
    pub(crate) fn ensure(&mut self, id: &str, now: Instant) -> bool {
        if self.map.contains_key(id) {
            return false;
        }
        self.made += 1;
        let epoch = format!("{}-{}", self.epoch_prefix, self.made);
        self.map.insert(
            id.to_owned(),
            Session {
                id: id.to_owned(),
                ring: Arc::new(SharedRing::new(Ring::new(epoch, self.limits))),
                prompts: 0,
                driver: None,
                last_active: now,
            },
        );
        true
    }

    /// The most recently active session.
    pub(crate) fn most_recent(&self) -> Option<&str> {
        self.map
            .values()
            .max_by_key(|s| s.last_active)
            .map(|s| s.id.as_str())
    }

    /// While over the cap, drops the least recently active session that is
    /// idle, viewed by nobody and owes nobody an answer (`busy` lists the
    /// sessions with open agent requests). Returns the ids dropped; when
    /// every session is protected, none is dropped (a bounded overshoot is
    /// better than killing a session someone uses).
    pub(crate) fn evict(
        &mut self,
        viewed: &HashSet<String>,
        busy: &HashSet<String>,
    ) -> Vec<String> {
        let mut dropped = Vec::new();
        while self.map.len() > self.max_live {
            let victim = self
                .map
                .values()
                .filter(|s| !s.busy() && !viewed.contains(&s.id) && !busy.contains(&s.id))
                .min_by_key(|s| s.last_active)
                .map(|s| s.id.clone());
            let Some(victim) = victim else { break };
            self.map.remove(&victim);
            dropped.push(victim);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_idle_unviewed_session_goes_first() {
        let t = Instant::now();
        let limits = RingLimits {
            frames: 10,
            bytes: 1000,
        };
        let mut s = Sessions::new(limits, 2, "e".into());
        assert!(s.ensure("a", t));
        assert!(!s.ensure("a", t));
        s.ensure("b", t + Duration::from_secs(1));
        s.ensure("c", t + Duration::from_secs(2));
        // "a" is viewed, so "b" (next oldest) goes.
        let viewed: HashSet<String> = ["a".to_owned()].into();
        assert_eq!(s.evict(&viewed, &HashSet::new()), vec!["b".to_owned()]);
        s.ensure("d", t + Duration::from_secs(3));
        s.get_mut("c").unwrap().prompts = 1;
        // a viewed, c busy, d newest but idle: d goes.
        assert_eq!(s.evict(&viewed, &HashSet::new()), vec!["d".to_owned()]);
        s.ensure("e", t + Duration::from_secs(4));
        let pending: HashSet<String> = ["e".to_owned()].into();
        // Everything protected: nothing is dropped.
        assert!(s.evict(&viewed, &pending).is_empty());
        assert_eq!(s.len(), 3);
        assert_eq!(s.most_recent(), Some("e"));
        // Epochs differ per ring.
        let ea = s.get("a").unwrap().ring.lock().epoch().to_owned();
        let ee = s.get("e").unwrap().ring.lock().epoch().to_owned();
        assert_ne!(ea, ee);
    }
}
