//! Opening a broker on a store: what was committed comes back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capwire::{Code, Status};
use tokio::sync::broadcast;

use super::{now_ms, pid_alive, store_failed, Broker, Endpoint, Inner, Limits, State};
use crate::queue::Queued;
use crate::routing::{CorrelationCache, Unroutable};
use crate::spawn::Spawner;
use crate::state::{EndpointEvent, EndpointState};
use crate::store::{EndpointId, Store, Write};

impl Broker {
    /// Starts a broker on `store`, recovering what it holds: endpoints come
    /// back reconnecting (their connections are gone) with a fresh grace
    /// period, or closed if their process is gone; queued messages and the
    /// inbox come back as they were committed. Needs a tokio runtime.
    pub fn open(store: Arc<dyn Store>, limits: Limits) -> Result<Broker, Status> {
        let snapshot = store.load().map_err(store_failed)?;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| Status::new(Code::Internal, format!("no randomness: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let mut state = State {
            endpoints: Default::default(),
            closed: VecDeque::new(),
            inbox: snapshot.inbox.into_iter().map(|e| (e.id, e)).collect(),
            correlations: CorrelationCache::new(
                limits.correlation_ttl,
                limits.correlation_capacity,
            ),
            next_endpoint_id: snapshot.next_endpoint_id.max(1),
            next_inbox_id: snapshot.next_inbox_id.max(1),
            next_receiver: 1,
            connections: Default::default(),
            next_connection: 1,
        };
        for record in snapshot.endpoints {
            state.endpoints.insert(
                record.id,
                Endpoint::new(record, EndpointState::Reconnecting, None),
            );
        }
        // Reply correlations that have not expired, oldest first per
        // endpoint; expired ones, those of forgotten endpoints and any past
        // the capacity are forgotten in the store too.
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut correlations = snapshot.correlations;
        correlations.sort_by_key(|(receiver, r)| (*receiver, r.expires_at_ms));
        let mut stale: Vec<(EndpointId, String)> = Vec::new();
        for (receiver, r) in correlations {
            if r.expires_at_ms <= now_ms || !state.endpoints.contains_key(&receiver) {
                stale.push((receiver, r.correlation_id));
                continue;
            }
            let expires = now + Duration::from_millis(r.expires_at_ms - now_ms);
            let evicted =
                state
                    .correlations
                    .restore(receiver, &r.correlation_id, r.origin, expires);
            stale.extend(evicted.into_iter().map(|c| (receiver, c)));
        }
        let mut orphans = Vec::new();
        for m in snapshot.messages {
            let item = Queued {
                seq: m.seq,
                envelope: Arc::new(m.envelope),
                bytes: m.bytes,
                committed: true,
                deliveries: m.deliveries,
                in_flight: false,
            };
            match state.endpoints.get_mut(&m.endpoint) {
                Some(e) => e.queue.push(item),
                None => orphans.push((m.endpoint, item)),
            }
        }
        let broker = Broker {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                store,
                limits,
                events,
                correlation_prefix: u64::from_le_bytes(random),
                next_correlation: AtomicU64::new(1),
                closing: AtomicBool::new(false),
                started: Instant::now(),
                spawner: Spawner::default(),
            }),
        };
        if !stale.is_empty() {
            let writes = stale
                .into_iter()
                .map(|(receiver, id)| Write::ForgetCorrelations {
                    receiver,
                    correlation_ids: vec![id],
                })
                .collect();
            let commit = broker.inner.store.commit(writes);
            tokio::spawn(async move {
                if let Err(e) = commit.await {
                    tracing::warn!(error = %e, "forgetting stale correlations failed");
                }
            });
        }
        // Messages whose endpoint record is gone cannot be delivered:
        // the inbox takes them.
        if !orphans.is_empty() {
            tracing::warn!(count = orphans.len(), "queued messages without an endpoint");
            let mut state = broker.lock();
            let mut writes = Vec::new();
            for (endpoint, item) in orphans {
                writes.push(Write::Ack {
                    endpoint,
                    seqs: vec![item.seq],
                });
                let entry = broker.inbox_entry(
                    &mut state,
                    Unroutable::UnknownEndpoint,
                    Some(endpoint),
                    &item.envelope,
                );
                writes.push(Write::InboxAdd(entry));
            }
            let commit = broker.inner.store.commit(writes);
            tokio::spawn(async move {
                if let Err(e) = commit.await {
                    tracing::error!(error = %e, "moving orphaned messages to the inbox failed");
                }
            });
        }
        let ids: Vec<_> = broker.lock().endpoints.keys().copied().collect();
        for id in ids {
            let pid = broker.lock().endpoints.get(&id).map(|e| e.record.pid);
            match pid {
                Some(pid) if pid_alive(pid) => broker.start_grace(id),
                Some(_) => broker.apply(id, EndpointEvent::PidGone, "pid gone at restart"),
                None => {}
            }
        }
        broker.spawn_sweeper();
        Ok(broker)
    }
}
