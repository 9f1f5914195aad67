//! The connector: a tokio task between the broker and its [`Upstream`].
//! It turns broker events into state reports, runs the presence machine
//! on the link's ups and downs (with the grace timer), keeps the outbox
//! while the link is down and flushes it in order when it is up, and
//! applies control commands, acknowledging each.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::outbox::{Dropped, Outbox};
use super::presence::{
    transition, Presence, PresenceEffect, PresenceEvent, PresenceState, PresenceTransition,
};
use super::{
    AckStatus, Control, ControlAck, ControlCommand, Inbound, Outbound, PresenceReport, StateReport,
    Upstream,
};
use crate::broker::now_ms;
use crate::events::{BrokerEvent, SpawnOutcome};
use crate::Broker;

/// How the connector runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectorConfig {
    /// How long the link may be down before the broker is reported
    /// offline. Default 10 s.
    pub presence_grace: Duration,
    /// Messages kept while the link is down; past it the oldest is
    /// dropped (counted and logged). Default 1000.
    pub outbox_capacity: usize,
    /// Control commands remembered by idempotency key, so that a repeat is
    /// acknowledged again and not applied twice. Default 1024.
    pub remembered_controls: usize,
}

impl Default for ConnectorConfig {
    fn default() -> ConnectorConfig {
        ConnectorConfig {
            presence_grace: Duration::from_secs(10),
            outbox_capacity: 1000,
            remembered_controls: 1024,
        }
    }
}

/// The connector at a glance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct ConnectorStats {
    /// Where the presence machine is.
    pub presence_state: PresenceState,
    /// What is reported.
    pub presence: Presence,
    /// The link is up (as far as the connector knows).
    pub link_up: bool,
    /// Messages waiting in the outbox.
    pub queued: u64,
    /// Messages delivered upstream.
    pub delivered: u64,
    /// Messages dropped from a full outbox.
    pub dropped: Dropped,
    /// Broker events the connector fell too far behind to see (their state
    /// reports are lost; counted and logged).
    pub missed_events: u64,
}

/// A running connector.
#[derive(Debug)]
pub struct Connector {
    stats: Arc<Mutex<ConnectorStats>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Connector {
    /// Connects `broker` to `upstream`. The link starts down and the
    /// broker offline until the upstream says the link is up.
    pub fn start(
        broker: &Broker,
        upstream: Arc<dyn Upstream>,
        config: ConnectorConfig,
    ) -> Connector {
        let stats = Arc::new(Mutex::new(ConnectorStats {
            presence_state: PresenceState::Offline,
            presence: Presence::Offline,
            link_up: false,
            queued: 0,
            delivered: 0,
            dropped: Dropped::default(),
            missed_events: 0,
        }));
        let (stop, stopped) = oneshot::channel();
        let run = Run {
            broker: broker.clone(),
            events: broker.subscribe(),
            outbox: Outbox::new(config.outbox_capacity),
            upstream,
            presence: PresenceState::Offline,
            link_up: false,
            grace: None,
            controls: Controls::new(config.remembered_controls),
            spawns: HashMap::new(),
            delivered: 0,
            missed_events: 0,
            config,
            stats: stats.clone(),
        };
        let task = tokio::spawn(run.run(stopped));
        Connector {
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Where it stands.
    pub fn stats(&self) -> ConnectorStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops it; what is still in the outbox is dropped (and logged).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Control commands seen, by idempotency key, with their last ack.
struct Controls {
    acks: HashMap<String, ControlAck>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Controls {
    fn new(capacity: usize) -> Controls {
        Controls {
            acks: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &str) -> Option<&ControlAck> {
        self.acks.get(key)
    }

    fn record(&mut self, ack: &ControlAck) {
        if self
            .acks
            .insert(ack.idempotency_key.clone(), ack.clone())
            .is_none()
        {
            self.order.push_back(ack.idempotency_key.clone());
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
    }
}

struct Run {
    broker: Broker,
    events: broadcast::Receiver<BrokerEvent>,
    outbox: Outbox,
    upstream: Arc<dyn Upstream>,
    presence: PresenceState,
    link_up: bool,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    controls: Controls,
    /// Spawn tokens of requests from upstream -> their idempotency keys.
    spawns: HashMap<String, String>,
    delivered: u64,
    missed_events: u64,
    config: ConnectorConfig,
    stats: Arc<Mutex<ConnectorStats>>,
}

impl Run {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut inbound = self.upstream.inbound();
        let mut inbound_open = true;
        loop {
            let grace = async {
                match self.grace.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                _ = grace => {
                    self.grace = None;
                    self.presence_event(PresenceEvent::GraceExpired, "grace expired");
                }
                message = inbound.next(), if inbound_open => match message {
                    Some(Inbound::LinkUp) => {
                        self.link_up = true;
                        self.presence_event(PresenceEvent::LinkUp, "link up");
                    }
                    Some(Inbound::LinkDown) => self.link_down(),
                    Some(Inbound::Control(control)) => self.control(control).await,
                    None => {
                        tracing::warn!("the upstream ended its inbound stream: the link is down for good");
                        inbound_open = false;
                        self.link_down();
                    }
                },
                event = self.events.recv() => match event {
                    Ok(event) => self.broker_event(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.missed_events += n;
                        tracing::warn!(missed = n, "the upstream connector fell behind the broker's events: their state reports are lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
            self.flush().await;
            self.publish();
        }
        if self.outbox.len() > 0 {
            tracing::warn!(
                queued = self.outbox.len(),
                "the upstream connector stops with messages never delivered"
            );
        }
    }

    fn link_down(&mut self) {
        self.link_up = false;
        self.presence_event(PresenceEvent::LinkDown, "link down");
    }

    fn presence_event(&mut self, event: PresenceEvent, reason: &str) {
        let (to, effects) = match transition(self.presence, event) {
            PresenceTransition::To(to, effects) => (to, effects),
            PresenceTransition::Ignored => {
                tracing::debug!(state = ?self.presence, ?event, "presence event ignored");
                return;
            }
        };
        self.presence = to;
        for effect in effects {
            match effect {
                PresenceEffect::StartGraceTimer => {
                    self.grace = Some(Box::pin(tokio::time::sleep(self.config.presence_grace)));
                }
                PresenceEffect::CancelGraceTimer => self.grace = None,
                PresenceEffect::Emit(presence) => {
                    tracing::info!(?presence, reason, "network presence");
                    self.broker.emit_event(BrokerEvent::Presence {
                        presence,
                        reason: reason.into(),
                    });
                    self.outbox.push(Outbound::Presence(PresenceReport {
                        presence,
                        reason: reason.into(),
                        at_ms: now_ms(),
                    }));
                }
            }
        }
    }

    fn broker_event(&mut self, event: BrokerEvent) {
        match event {
            BrokerEvent::EndpointState {
                endpoint_id,
                to,
                cause,
                ..
            } => self.outbox.push(Outbound::State(StateReport {
                endpoint_id,
                state: to,
                cause,
                at_ms: now_ms(),
            })),
            BrokerEvent::Spawn {
                spawn_token,
                outcome,
                ..
            } => {
                let (status, detail) = match outcome {
                    SpawnOutcome::Completed { endpoint_id } => (
                        AckStatus::Applied,
                        Some(format!("endpoint {endpoint_id} registered")),
                    ),
                    SpawnOutcome::TimedOut => (
                        AckStatus::Failed,
                        Some("spawn_correlation_timeout".to_owned()),
                    ),
                    SpawnOutcome::Started { .. } => return,
                };
                if let Some(key) = self.spawns.remove(&spawn_token) {
                    self.ack(ControlAck {
                        idempotency_key: key,
                        status,
                        detail,
                    });
                }
            }
            BrokerEvent::Inbox { .. } | BrokerEvent::Presence { .. } => {}
        }
    }

    async fn control(&mut self, control: Control) {
        let key = control.idempotency_key;
        if let Some(ack) = self.controls.get(&key).cloned() {
            tracing::info!(idempotency_key = %key, "control command repeated: acknowledged again");
            self.outbox.push(Outbound::ControlAck(ack));
            return;
        }
        let failed = |status: capwire::Status| {
            let reason = status.reason.as_ref().map_or_else(
                || status.code.as_str().to_owned(),
                |r| r.as_str().to_owned(),
            );
            (
                AckStatus::Failed,
                Some(format!("{reason}: {}", status.message)),
            )
        };
        let (status, detail) = match control.command {
            ControlCommand::DispatchUndispatched {
                inbox_id,
                endpoint_id,
            } => match self.broker.dispatch(inbox_id, endpoint_id).await {
                Ok(seq) => (AckStatus::Applied, Some(format!("queued as seq {seq}"))),
                Err(status) => failed(status),
            },
            ControlCommand::SpawnRequest {
                runtime_kind,
                prompt,
            } => match self.broker.request_spawn(&runtime_kind, prompt.as_deref()) {
                Ok(started) => {
                    self.spawns.insert(started.spawn_token.clone(), key.clone());
                    (
                        AckStatus::Received,
                        Some(format!(
                            "pid {}, spawn token {}",
                            started.pid, started.spawn_token
                        )),
                    )
                }
                Err(status) => failed(status),
            },
            ControlCommand::ForceUnregister {
                endpoint_id,
                reason,
            } => {
                tracing::info!(endpoint_id, ?reason, "forced unregister");
                match self.broker.unregister(endpoint_id) {
                    Ok(()) => (AckStatus::Applied, None),
                    // Gone already: what was asked holds.
                    Err(status)
                        if matches!(
                            status.reason.as_ref().map(|r| r.as_str()),
                            Some("unknown_endpoint" | "endpoint_closed")
                        ) =>
                    {
                        (AckStatus::Applied, Some("already gone".to_owned()))
                    }
                    Err(status) => failed(status),
                }
            }
        };
        self.ack(ControlAck {
            idempotency_key: key,
            status,
            detail,
        });
    }

    fn ack(&mut self, ack: ControlAck) {
        self.controls.record(&ack);
        self.outbox.push(Outbound::ControlAck(ack));
    }

    /// Delivers the outbox in order while the link is up.
    async fn flush(&mut self) {
        while self.link_up {
            let Some(message) = self.outbox.front() else {
                return;
            };
            match self.upstream.deliver(message).await {
                Ok(()) => {
                    self.outbox.pop();
                    self.delivered += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, "upstream delivery failed: waiting for the link");
                    self.link_down();
                }
            }
        }
    }

    fn publish(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *stats = ConnectorStats {
            presence_state: self.presence,
            presence: self.presence.presence(),
            link_up: self.link_up,
            queued: self.outbox.len() as u64,
            delivered: self.delivered,
            dropped: self.outbox.dropped(),
            missed_events: self.missed_events,
        };
    }
}
