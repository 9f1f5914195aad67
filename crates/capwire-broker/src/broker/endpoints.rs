//! The endpoint registry: registration, heartbeats, unregistering,
//! reattaching, task hints, and the state machine's effects carried out
//! (a closed endpoint's queue moves to the inbox).

use std::time::Instant;

use capwire::{Code, Status};
use serde::{Deserialize, Serialize};

use super::{
    closed, now_ms, status, store_failed, unknown, Broker, ConnectionId, Endpoint, State,
    CLOSED_REMEMBERED,
};
use crate::events::{BrokerEvent, InboxAction};
use crate::routing::Unroutable;
use crate::state::{transition, Effect, EndpointEvent, EndpointState, Transition};
use crate::store::{EndpointId, EndpointRecord, Write};

/// What a plugin registers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registration {
    /// The plugin's runtime kind (`claude-code`, `python`, …); required.
    pub kind: String,
    /// The plugin's process id: a reattach must present the same, and the
    /// endpoint closes when the process is gone.
    pub pid: u32,
    /// A label for people.
    #[serde(default)]
    pub label: Option<String>,
    /// The workspace it works in.
    #[serde(default)]
    pub workspace: Option<String>,
    /// An external reference (a ticket, a branch).
    #[serde(default)]
    pub tracking_ref: Option<String>,
    /// What it is doing (cut to `max_task_hint_chars`).
    #[serde(default)]
    pub task_hint: Option<String>,
    /// The token of the spawn request that started this plugin.
    #[serde(default)]
    pub spawn_token: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registered {
    /// The endpoint's id: name it in every later call.
    pub endpoint_id: EndpointId,
    /// The task hint as kept.
    pub task_hint: Option<String>,
    /// True if the task hint was cut.
    pub task_hint_truncated: bool,
    /// True if the spawn token completed a pending spawn request.
    pub spawn_completed: bool,
}

/// The outcome of a reattach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reattached {
    /// Messages waiting (held while reconnecting, or unacknowledged).
    pub held: u64,
}

/// A task hint as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskHint {
    /// The hint.
    pub task_hint: String,
    /// True if it was cut to the limit.
    pub truncated: bool,
    /// The limit, in characters.
    pub max_chars: u64,
}

/// An endpoint as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EndpointStatus {
    /// What it registered.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// Messages queued (delivered-but-unacked included).
    pub queued: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// Delivered and not acknowledged yet.
    pub in_flight: u64,
    /// A connection is receiving its messages.
    pub receiver_attached: bool,
}

impl Broker {
    /// Registers an endpoint (state `active`), bound to the connection
    /// `conn` if the plugin has one (see [`Connection`](super::Connection)).
    /// It is durable before this returns.
    pub async fn register(
        &self,
        reg: Registration,
        conn: Option<ConnectionId>,
    ) -> Result<Registered, Status> {
        self.refuse_if_closing()?;
        if reg.kind.trim().is_empty() {
            return Err(status(
                Code::InvalidArgument,
                "kind_required",
                "`kind` must name the plugin's runtime",
            ));
        }
        for (field, value) in [
            ("kind", Some(&reg.kind)),
            ("label", reg.label.as_ref()),
            ("workspace", reg.workspace.as_ref()),
            ("tracking_ref", reg.tracking_ref.as_ref()),
            ("spawn_token", reg.spawn_token.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > 4096) {
                return Err(status(
                    Code::InvalidArgument,
                    "field_too_long",
                    format!("`{field}` is longer than 4096 bytes"),
                ));
            }
        }
        let (task_hint, truncated) = match &reg.task_hint {
            Some(h) => {
                let (h, t) = self.cut_hint(h);
                (Some(h), t)
            }
            None => (None, false),
        };
        let (record, commit) = {
            let mut state = self.lock();
            let id = state.next_endpoint_id;
            state.next_endpoint_id += 1;
            let record = EndpointRecord {
                id,
                kind: reg.kind,
                label: reg.label,
                workspace: reg.workspace,
                pid: reg.pid,
                tracking_ref: reg.tracking_ref,
                task_hint: task_hint.clone(),
                spawn_token: reg.spawn_token.clone(),
                registered_at_ms: now_ms(),
                state: EndpointState::Active,
            };
            let commit = self
                .inner
                .store
                .commit(vec![Write::PutEndpoint(record.clone())]);
            (record, commit)
        };
        commit.await.map_err(store_failed)?;
        let id = record.id;
        let connection_lost = {
            let mut state = self.lock();
            let (owner, lost) = state.bind(conn);
            state
                .endpoints
                .insert(id, Endpoint::new(record, EndpointState::Active, owner));
            lost
        };
        self.emit(BrokerEvent::EndpointState {
            endpoint_id: id,
            from: None,
            to: EndpointState::Active,
            cause: "register".into(),
        });
        if connection_lost {
            // Its connection closed while the registration was written.
            self.connection_lost(id);
        }
        let spawn_completed = match &reg.spawn_token {
            Some(token) => self.inner.spawner.complete(token, id, self),
            None => false,
        };
        tracing::info!(endpoint_id = id, "endpoint registered");
        Ok(Registered {
            endpoint_id: id,
            task_hint,
            task_hint_truncated: truncated,
            spawn_completed,
        })
    }

    fn cut_hint(&self, hint: &str) -> (String, bool) {
        let max = self.inner.limits.max_task_hint_chars;
        match hint.char_indices().nth(max) {
            Some((at, _)) => (hint[..at].to_owned(), true),
            None => (hint.to_owned(), false),
        }
    }

    fn with_endpoint<T>(
        &self,
        id: EndpointId,
        f: impl FnOnce(&mut Endpoint) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut state = self.lock();
        let endpoint = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
        f(endpoint)
    }

    /// Says the plugin is alive (any call naming the endpoint does too);
    /// returns the endpoint's state. An endpoint without an open connection
    /// that is not heard from within `Limits::heartbeat_expiry` becomes
    /// reconnecting.
    pub fn heartbeat(&self, id: EndpointId) -> Result<EndpointState, Status> {
        self.with_endpoint(id, |e| {
            e.last_seen = Instant::now();
            Ok(e.state)
        })
    }

    /// Closes an endpoint for good; its held messages go to the inbox.
    pub fn unregister(&self, id: EndpointId) -> Result<(), Status> {
        let state = self.with_endpoint(id, |e| Ok(e.state))?;
        if state == EndpointState::Closed {
            return Err(closed(id));
        }
        self.apply(id, EndpointEvent::Unregister, "unregister");
        Ok(())
    }

    /// Takes a reconnecting endpoint back (or an active one over, from a
    /// connection the broker has not seen close yet); `pid` must be the
    /// registered one. The endpoint is bound to `conn` from now on. Then
    /// `receive` delivers what was held, in order.
    pub fn reattach(
        &self,
        id: EndpointId,
        pid: u32,
        conn: Option<ConnectionId>,
    ) -> Result<Reattached, Status> {
        let (held, connection_lost) = {
            let mut state = self.lock();
            let (owner, lost) = state.bind(conn);
            let e = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
            if e.state == EndpointState::Closed {
                return Err(closed(id));
            }
            if e.record.pid != pid {
                return Err(status(
                    Code::PermissionDenied,
                    "reattach_pid_mismatch",
                    format!("endpoint {id} was registered by another pid"),
                ));
            }
            e.owner = owner;
            e.last_seen = Instant::now();
            (e.queue.len() as u64, lost)
        };
        self.apply(id, EndpointEvent::Reattach, "reattach");
        if connection_lost {
            self.connection_lost(id);
        }
        Ok(Reattached { held })
    }

    /// Sets an endpoint's task hint, cut to the limit.
    pub async fn set_task_hint(&self, id: EndpointId, hint: &str) -> Result<TaskHint, Status> {
        self.refuse_if_closing()?;
        let (hint, truncated) = self.cut_hint(hint);
        let commit = self.with_endpoint(id, |e| {
            if e.state == EndpointState::Closed {
                return Err(closed(id));
            }
            e.last_seen = Instant::now();
            e.record.task_hint = Some(hint.clone());
            Ok(self
                .inner
                .store
                .commit(vec![Write::PutEndpoint(e.record.clone())]))
        })?;
        commit.await.map_err(store_failed)?;
        Ok(TaskHint {
            task_hint: hint,
            truncated,
            max_chars: self.inner.limits.max_task_hint_chars as u64,
        })
    }

    /// Every known endpoint, closed ones that are still remembered included.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let state = self.lock();
        let mut list: Vec<_> = state
            .endpoints
            .values()
            .map(|e| EndpointStatus {
                record: EndpointRecord {
                    state: e.state,
                    ..e.record.clone()
                },
                queued: e.queue.len() as u64,
                queued_bytes: e.queue.bytes as u64,
                in_flight: e.queue.in_flight() as u64,
                receiver_attached: e.receiver.is_some(),
            })
            .collect();
        list.sort_by_key(|e| e.record.id);
        list
    }

    /// Feeds one event to an endpoint's state machine and carries out
    /// the effects.
    pub(crate) fn apply(&self, id: EndpointId, event: EndpointEvent, cause: &str) {
        let mut state = self.lock();
        let Some(e) = state.endpoints.get_mut(&id) else {
            return;
        };
        let from = e.state;
        let (to, effects) = match transition(from, event) {
            Transition::To(to, effects) => (to, effects),
            Transition::Ignored => {
                tracing::info!(
                    endpoint_id = id,
                    state = from.as_str(),
                    ?event,
                    "event ignored"
                );
                return;
            }
        };
        e.state = to;
        let mut release = false;
        for effect in effects {
            match effect {
                Effect::StartGraceTimer => {}
                Effect::CancelGraceTimer => {
                    if let Some(g) = e.grace.take() {
                        g.abort();
                    }
                }
                Effect::DetachReceiver => {
                    e.receiver = None;
                    e.wake.notify_waiters();
                }
                Effect::ReleaseQueue => release = true,
            }
        }
        if to == EndpointState::Reconnecting && from != EndpointState::Reconnecting {
            drop(state);
            self.start_grace(id);
            state = self.lock();
        }
        if release {
            self.release(&mut state, id);
        }
        drop(state);
        tracing::info!(
            endpoint_id = id,
            from = from.as_str(),
            to = to.as_str(),
            cause,
            "endpoint state"
        );
        self.emit(BrokerEvent::EndpointState {
            endpoint_id: id,
            from: Some(from),
            to,
            cause: cause.into(),
        });
    }

    /// A closed endpoint's committed messages go to the inbox (beyond its
    /// bound if need be: nothing accepted is dropped), its record leaves
    /// the store, all in one transaction.
    fn release(&self, state: &mut State, id: EndpointId) {
        let Some(e) = state.endpoints.get_mut(&id) else {
            return;
        };
        let items = e.queue.take_committed();
        let mut writes = Vec::with_capacity(items.len() * 2 + 2);
        if !items.is_empty() {
            writes.push(Write::Ack {
                endpoint: id,
                seqs: items.iter().map(|q| q.seq).collect(),
            });
        }
        let mut added = Vec::new();
        for item in &items {
            let entry =
                self.inbox_entry(state, Unroutable::EndpointClosed, Some(id), &item.envelope);
            added.push(entry.id);
            state.inbox.insert(entry.id, entry.clone());
            writes.push(Write::InboxAdd(entry));
        }
        writes.push(Write::RemoveEndpoint(id));
        writes.push(Write::ForgetEndpointCorrelations(id));
        state.correlations.forget(id);
        state.closed.push_back(id);
        while state.closed.len() > CLOSED_REMEMBERED {
            if let Some(old) = state.closed.pop_front() {
                state.endpoints.remove(&old);
            }
        }
        let commit = self.inner.store.commit(writes);
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = commit.await {
                tracing::error!(endpoint_id = id, error = %e, "releasing a closed endpoint failed");
                return;
            }
            for inbox_id in added {
                broker.emit(BrokerEvent::Inbox {
                    action: InboxAction::Added,
                    inbox_id,
                    reason: Some(Unroutable::EndpointClosed.as_str().into()),
                    endpoint_id: Some(id),
                });
            }
        });
    }
}
