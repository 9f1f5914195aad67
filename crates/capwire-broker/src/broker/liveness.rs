//! Liveness: which connection holds an endpoint, the heartbeats that keep
//! an endpoint without one alive, the grace timer of a reconnecting
//! endpoint, and the sweeper that notices processes that are gone.
//!
//! An active endpoint is held by the open connection that registered (or
//! last reattached) it and by its open `receive` stream, wherever that is.
//! When the last of them ends while its process lives, the endpoint becomes
//! reconnecting. An endpoint held by neither (its plugin calls over HTTP,
//! one request per connection) stays active while calls naming it arrive
//! within [`Limits::heartbeat_expiry`](super::Limits::heartbeat_expiry).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Broker, State};
use crate::state::{EndpointEvent, EndpointState};
use crate::store::{EndpointId, Write};

/// A connection's id, issued by [`Broker::open_connection`].
pub type ConnectionId = u64;

/// True if a process with this pid exists (Linux: `/proc/PID`; elsewhere
/// the broker cannot tell without `unsafe` and assumes it does).
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// A plugin connection the broker serves (the daemon opens one per
/// accepted connection that lasts: a Unix socket, a WebSocket). Endpoints
/// registered or reattached through it (pass [`id`](Connection::id) to
/// [`Broker::register`] and [`Broker::reattach`]) are held by it; dropping
/// it says the connection ended.
#[derive(Debug)]
pub struct Connection {
    broker: Broker,
    id: ConnectionId,
}

impl Connection {
    /// Its id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.broker.connection_closed(self.id);
    }
}

impl State {
    /// The owner an endpoint gets from a call on `conn`: the connection if
    /// it is still open; `true` if it was given but has closed already.
    pub(super) fn bind(&self, conn: Option<ConnectionId>) -> (Option<ConnectionId>, bool) {
        match conn {
            Some(c) if self.connections.contains(&c) => (Some(c), false),
            Some(_) => (None, true),
            None => (None, false),
        }
    }
}

impl Broker {
    /// Opens a connection; see [`Connection`].
    pub fn open_connection(&self) -> Connection {
        let mut state = self.lock();
        let id = state.next_connection;
        state.next_connection += 1;
        state.connections.insert(id);
        Connection {
            broker: self.clone(),
            id,
        }
    }

    /// Connection `conn` ended: endpoints it held that nothing else holds
    /// become reconnecting (closed if their process is gone).
    fn connection_closed(&self, conn: ConnectionId) {
        let lost: Vec<EndpointId> = {
            let mut state = self.lock();
            state.connections.remove(&conn);
            state
                .endpoints
                .values_mut()
                .filter(|e| e.owner == Some(conn))
                .filter_map(|e| {
                    e.owner = None;
                    e.receiver.is_none().then_some(e.record.id)
                })
                .collect()
        };
        for id in lost {
            self.connection_lost(id);
        }
    }

    /// Nothing holds endpoint `id` any more.
    pub(super) fn connection_lost(&self, id: EndpointId) {
        self.lost(id, "connection closed");
    }

    fn lost(&self, id: EndpointId, cause: &str) {
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let Some(pid) = self.lock().endpoints.get(&id).map(|e| e.record.pid) else {
            return;
        };
        let pid_alive = pid_alive(pid);
        self.apply(id, EndpointEvent::ConnectionClosed { pid_alive }, cause);
    }

    pub(super) fn start_grace(&self, id: EndpointId) {
        let broker = self.clone();
        let grace = self.inner.limits.grace;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            broker.apply(id, EndpointEvent::GraceExpired, "grace expired");
        });
        let mut state = self.lock();
        match state.endpoints.get_mut(&id) {
            Some(e) if e.state == EndpointState::Reconnecting => {
                if let Some(old) = e.grace.replace(timer) {
                    old.abort();
                }
            }
            _ => timer.abort(),
        }
    }

    /// Checks pids and heartbeats and sweeps correlations, until the broker
    /// is dropped.
    pub(super) fn spawn_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.limits.sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let broker = Broker { inner };
                if broker.inner.closing.load(Ordering::Acquire) {
                    return;
                }
                let expiry = broker.inner.limits.heartbeat_expiry;
                let now = Instant::now();
                let (gone, silent): (Vec<_>, Vec<_>) = {
                    let mut state = broker.lock();
                    let expired: Vec<_> = state
                        .correlations
                        .sweep(now)
                        .into_iter()
                        .map(|(receiver, correlation_ids)| Write::ForgetCorrelations {
                            receiver,
                            correlation_ids,
                        })
                        .collect();
                    if !expired.is_empty() {
                        let commit = broker.inner.store.commit(expired);
                        tokio::spawn(async move {
                            if let Err(e) = commit.await {
                                tracing::warn!(error = %e, "forgetting expired correlations failed");
                            }
                        });
                    }
                    let gone = state
                        .endpoints
                        .values()
                        .filter(|e| e.state != EndpointState::Closed && !pid_alive(e.record.pid))
                        .map(|e| e.record.id)
                        .collect();
                    let silent = state
                        .endpoints
                        .values()
                        .filter(|e| {
                            e.state == EndpointState::Active
                                && e.owner.is_none()
                                && e.receiver.is_none()
                                && now.saturating_duration_since(e.last_seen) >= expiry
                        })
                        .map(|e| e.record.id)
                        .collect();
                    (gone, silent)
                };
                for id in gone {
                    broker.apply(id, EndpointEvent::PidGone, "pid gone");
                }
                for id in silent {
                    broker.lost(id, "heartbeat expired");
                }
                broker.inner.spawner.expire(&broker);
            }
        });
    }

    /// The receiver `generation` of `id` ended (its connection closed, or
    /// its caller cancelled it). If no open connection holds the endpoint,
    /// it is lost.
    pub(super) fn receiver_dropped(&self, id: EndpointId, generation: u64) {
        let held = {
            let mut state = self.lock();
            let Some(e) = state.endpoints.get_mut(&id) else {
                return;
            };
            if e.receiver != Some(generation) {
                return; // displaced or detached already
            }
            e.receiver = None;
            // Its heartbeat clock starts over from the stream's end.
            e.last_seen = Instant::now();
            e.owner.is_some()
        };
        if !held {
            self.connection_lost(id);
        }
    }
}
