//! Liveness: the grace timer of a reconnecting endpoint, the sweeper that
//! notices processes that are gone, and a receiver's end as a closed
//! connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use crate::state::{EndpointEvent, EndpointState};
use crate::store::EndpointId;

/// True if a process with this pid exists (Linux: `/proc/PID`; elsewhere
/// the broker cannot tell without `unsafe` and assumes it does).
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl Broker {
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

    /// Checks pids and sweeps correlations, until the broker is dropped.
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
                let gone: Vec<_> = {
                    let mut state = broker.lock();
                    state.correlations.sweep(Instant::now());
                    state
                        .endpoints
                        .values()
                        .filter(|e| e.state != EndpointState::Closed && !pid_alive(e.record.pid))
                        .map(|e| e.record.id)
                        .collect()
                };
                for id in gone {
                    broker.apply(id, EndpointEvent::PidGone, "pid gone");
                }
                broker.inner.spawner.expire(&broker);
            }
        });
    }

    /// The receiver `generation` of `id` ended (its connection closed).
    pub(super) fn receiver_dropped(&self, id: EndpointId, generation: u64) {
        let pid = {
            let mut state = self.lock();
            let Some(e) = state.endpoints.get_mut(&id) else {
                return;
            };
            if e.receiver != Some(generation) {
                return; // displaced or detached already
            }
            e.receiver = None;
            e.record.pid
        };
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let pid_alive = pid_alive(pid);
        self.apply(
            id,
            EndpointEvent::ConnectionClosed { pid_alive },
            "connection closed",
        );
    }
}
