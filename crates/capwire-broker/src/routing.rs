//! Where a message goes: to the endpoint the sender named, or back to the
//! sender of the message it answers (reply routing by a broker-issued
//! correlation id), or, failing both, to the undispatched inbox.
//!
//! The correlation cache is plain data driven by a `now`: each endpoint
//! remembers, for the correlation ids of the messages it received, who sent
//! them — at most `capacity` entries, each for `ttl`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::store::EndpointId;

/// Why a message went to the undispatched inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// The sender named no target and no correlation.
    NoTarget,
    /// The named endpoint was never registered (or is long gone).
    UnknownEndpoint,
    /// The named endpoint is closed.
    EndpointClosed,
    /// `in_reply_to` names a correlation this endpoint never received, or
    /// one that expired or was evicted.
    UnknownCorrelation,
}

impl Unroutable {
    /// The reason as stored in the inbox.
    pub fn as_str(self) -> &'static str {
        match self {
            Unroutable::NoTarget => "no_target",
            Unroutable::UnknownEndpoint => "unknown_endpoint",
            Unroutable::EndpointClosed => "endpoint_closed",
            Unroutable::UnknownCorrelation => "unknown_correlation",
        }
    }
}

#[derive(Debug, Default)]
struct Received {
    /// correlation id -> (the endpoint that sent it, when it expires).
    origins: FxHashMap<String, (EndpointId, Instant)>,
    /// Insertion order, for eviction at capacity.
    order: VecDeque<String>,
}

/// Per-endpoint memory of which endpoint sent each received correlation id.
#[derive(Debug)]
pub struct CorrelationCache {
    ttl: Duration,
    capacity: usize,
    /// FxHash: ids and correlation ids are the broker's own, not chosen by
    /// a peer.
    by_endpoint: FxHashMap<EndpointId, Received>,
}

impl CorrelationCache {
    /// A cache keeping at most `capacity` correlations per endpoint, each
    /// for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> CorrelationCache {
        CorrelationCache {
            ttl,
            capacity: capacity.max(1),
            by_endpoint: FxHashMap::default(),
        }
    }

    /// `receiver` got a message carrying `correlation` from `origin`.
    pub fn record(
        &mut self,
        receiver: EndpointId,
        correlation: &str,
        origin: EndpointId,
        now: Instant,
    ) {
        let received = self.by_endpoint.entry(receiver).or_default();
        let fresh = received
            .origins
            .insert(correlation.to_owned(), (origin, now + self.ttl))
            .is_none();
        if fresh {
            received.order.push_back(correlation.to_owned());
        }
        while received.order.len() > self.capacity {
            if let Some(oldest) = received.order.pop_front() {
                received.origins.remove(&oldest);
            }
        }
    }

    /// The endpoint a reply from `replier` to `correlation` goes to.
    pub fn resolve(
        &self,
        replier: EndpointId,
        correlation: &str,
        now: Instant,
    ) -> Option<EndpointId> {
        let (origin, expires) = self.by_endpoint.get(&replier)?.origins.get(correlation)?;
        (now < *expires).then_some(*origin)
    }

    /// Forgets an endpoint's correlations (it closed).
    pub fn forget(&mut self, endpoint: EndpointId) {
        self.by_endpoint.remove(&endpoint);
    }

    /// Drops expired entries; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut evicted = 0;
        for received in self.by_endpoint.values_mut() {
            let before = received.origins.len();
            received.origins.retain(|_, (_, expires)| now < *expires);
            let origins = &received.origins;
            received.order.retain(|c| origins.contains_key(c));
            evicted += before - received.origins.len();
        }
        self.by_endpoint.retain(|_, r| !r.origins.is_empty());
        evicted
    }

    /// Entries held for `endpoint`.
    pub fn len_for(&self, endpoint: EndpointId) -> usize {
        self.by_endpoint
            .get(&endpoint)
            .map_or(0, |r| r.origins.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_resolve_to_the_origin_until_they_expire() {
        let t0 = Instant::now();
        let mut cache = CorrelationCache::new(Duration::from_secs(10), 8);
        cache.record(2, "c1", 1, t0);
        assert_eq!(cache.resolve(2, "c1", t0 + Duration::from_secs(9)), Some(1));
        // Only the receiver may reply by it.
        assert_eq!(cache.resolve(3, "c1", t0), None);
        assert_eq!(cache.resolve(2, "c1", t0 + Duration::from_secs(10)), None);
        assert_eq!(cache.sweep(t0 + Duration::from_secs(11)), 1);
        assert_eq!(cache.len_for(2), 0);
    }

    #[test]
    fn the_oldest_entry_is_evicted_at_capacity() {
        let t0 = Instant::now();
        let mut cache = CorrelationCache::new(Duration::from_secs(60), 2);
        cache.record(2, "a", 1, t0);
        cache.record(2, "b", 1, t0);
        cache.record(2, "c", 3, t0);
        assert_eq!(cache.resolve(2, "a", t0), None);
        assert_eq!(cache.resolve(2, "b", t0), Some(1));
        assert_eq!(cache.resolve(2, "c", t0), Some(3));
        assert_eq!(cache.len_for(2), 2);
        cache.forget(2);
        assert_eq!(cache.resolve(2, "c", t0), None);
    }
}
