//! Where a message goes: to the endpoint the sender named, or back to the
//! sender of the message it answers (reply routing by a broker-issued
//! correlation id), or, failing both, to the undispatched inbox.
//!
//! The correlation cache is plain data driven by a `now`: each endpoint
//! remembers, for the correlation ids of the messages it received, who sent
//! them — at most `capacity` entries, each for `ttl`. The broker writes it
//! through to the store (what it records, evicts and sweeps), so replies
//! survive a restart.

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

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `receiver` got a message carrying `correlation` from `origin`.
    /// Returns the correlations evicted to stay within the capacity.
    pub fn record(
        &mut self,
        receiver: EndpointId,
        correlation: &str,
        origin: EndpointId,
        now: Instant,
    ) -> Vec<String> {
        self.insert(receiver, correlation, origin, now + self.ttl)
    }

    /// Puts back an entry that expires at `expires` (read from the store
    /// at start; the oldest first). Returns the correlations evicted.
    pub fn restore(
        &mut self,
        receiver: EndpointId,
        correlation: &str,
        origin: EndpointId,
        expires: Instant,
    ) -> Vec<String> {
        self.insert(receiver, correlation, origin, expires)
    }

    fn insert(
        &mut self,
        receiver: EndpointId,
        correlation: &str,
        origin: EndpointId,
        expires: Instant,
    ) -> Vec<String> {
        let received = self.by_endpoint.entry(receiver).or_default();
        let fresh = received
            .origins
            .insert(correlation.to_owned(), (origin, expires))
            .is_none();
        if fresh {
            received.order.push_back(correlation.to_owned());
        }
        let mut evicted = Vec::new();
        while received.order.len() > self.capacity {
            if let Some(oldest) = received.order.pop_front() {
                received.origins.remove(&oldest);
                evicted.push(oldest);
            }
        }
        evicted
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

    /// Drops expired entries; returns them, by endpoint.
    pub fn sweep(&mut self, now: Instant) -> Vec<(EndpointId, Vec<String>)> {
        let mut swept = Vec::new();
        for (endpoint, received) in &mut self.by_endpoint {
            let mut gone = Vec::new();
            received.origins.retain(|c, (_, expires)| {
                let keep = now < *expires;
                if !keep {
                    gone.push(c.clone());
                }
                keep
            });
            if !gone.is_empty() {
                let origins = &received.origins;
                received.order.retain(|c| origins.contains_key(c));
                swept.push((*endpoint, gone));
            }
        }
        self.by_endpoint.retain(|_, r| !r.origins.is_empty());
        swept
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
        assert_eq!(
            cache.sweep(t0 + Duration::from_secs(11)),
            [(2, vec!["c1".to_owned()])]
        );
        assert_eq!(cache.len_for(2), 0);
    }

    #[test]
    fn the_oldest_entry_is_evicted_at_capacity() {
        let t0 = Instant::now();
        let mut cache = CorrelationCache::new(Duration::from_secs(60), 2);
        assert!(cache.record(2, "a", 1, t0).is_empty());
        assert!(cache.record(2, "b", 1, t0).is_empty());
        assert_eq!(cache.record(2, "c", 3, t0), ["a"]);
        assert_eq!(cache.resolve(2, "a", t0), None);
        assert_eq!(cache.resolve(2, "b", t0), Some(1));
        assert_eq!(cache.resolve(2, "c", t0), Some(3));
        assert_eq!(cache.len_for(2), 2);
        cache.forget(2);
        assert_eq!(cache.resolve(2, "c", t0), None);
    }
}
