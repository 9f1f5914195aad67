//! The upstream connector against the in-process upstream: presence with a
//! grace period, state reports held while the link is down and delivered
//! in order when it is up, a bounded outbox whose drops are counted, and
//! control commands applied once and acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::Status;
use capwire_broker::broker::Registration;
use capwire_broker::spawn::{SpawnDriver, SpawnLimits};
use capwire_broker::state::EndpointState;
use capwire_broker::store::{EndpointId, RedbStore};
use capwire_broker::upstream::presence::PresenceState;
use capwire_broker::upstream::{
    AckStatus, Connector, ConnectorConfig, Control, ControlAck, ControlCommand, InProcessNetwork,
    InProcessUpstream, Outbound, Presence,
};
use capwire_broker::{Broker, BrokerEvent, Limits};

async fn register(broker: &Broker, spawn_token: Option<String>) -> EndpointId {
    let reg = Registration {
        kind: "test".into(),
        pid: std::process::id(),
        spawn_token,
        ..Registration::default()
    };
    broker.register(reg, None).await.unwrap().endpoint_id
}

/// The state reports in `delivered`, as (endpoint, state).
fn states(delivered: &[Outbound]) -> Vec<(EndpointId, EndpointState)> {
    delivered
        .iter()
        .filter_map(|m| match m {
            Outbound::State(s) => Some((s.endpoint_id, s.state)),
            _ => None,
        })
        .collect()
}

/// Waits (on real time, briefly) until `check` holds for the connector.
async fn until(
    connector: &Connector,
    check: impl Fn(&capwire_broker::upstream::ConnectorStats) -> bool,
) {
    let wait = async {
        while !check(&connector.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("never: {:?}", connector.stats()));
}

struct Setup {
    _dir: tempfile::TempDir,
    broker: Broker,
    connector: Connector,
    network: InProcessNetwork,
}

fn setup(outbox_capacity: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("broker.redb")).unwrap());
    let mut limits = Limits::default();
    limits.sweep_interval = Duration::from_millis(50);
    let broker = Broker::open(store, limits).unwrap();
    let (upstream, network) = InProcessUpstream::new();
    let mut config = ConnectorConfig::default();
    config.presence_grace = Duration::from_millis(300);
    config.outbox_capacity = outbox_capacity;
    let connector = Connector::start(&broker, Arc::new(upstream), config);
    Setup {
        _dir: dir,
        broker,
        connector,
        network,
    }
}

#[tokio::test]
async fn presence_and_state_reports_across_outages() {
    let Setup {
        _dir,
        broker,
        connector,
        network,
    } = setup(4);
    let mut events = broker.subscribe();

    // The link starts down: the broker is offline and reports wait.
    let a = register(&broker, None).await;
    until(&connector, |s| s.queued == 1).await;
    assert_eq!(connector.stats().presence, Presence::Offline);
    assert!(network.delivered().is_empty());

    // Up: what waited goes first, then the presence change.
    network.link_up();
    let delivered = network.wait_delivered(2).await;
    assert_eq!(states(&delivered), [(a, EndpointState::Active)]);
    assert!(matches!(
        &delivered[1],
        Outbound::Presence(p) if p.presence == Presence::Online && p.reason == "link up"
    ));
    until(&connector, |s| {
        s.presence_state == PresenceState::Online && s.queued == 0
    })
    .await;

    // A short outage: reports wait, in order, and no presence change.
    network.link_down();
    until(&connector, |s| s.presence_state == PresenceState::Grace).await;
    assert_eq!(connector.stats().presence, Presence::Online);
    let b = register(&broker, None).await;
    broker.unregister(b).unwrap();
    until(&connector, |s| s.queued == 2).await;
    network.link_up();
    let delivered = network.wait_delivered(4).await;
    assert_eq!(
        states(&delivered[2..]),
        [(b, EndpointState::Active), (b, EndpointState::Closed)]
    );
    until(&connector, |s| {
        s.presence_state == PresenceState::Online && s.queued == 0
    })
    .await;
    assert_eq!(
        network.delivered().len(),
        4,
        "no presence report for a blip"
    );

    // A long outage: offline after the grace, said as a broker event too.
    network.link_down();
    let offline = async {
        loop {
            if let Ok(BrokerEvent::Presence { presence, reason }) = events.recv().await {
                if presence == Presence::Offline {
                    return reason;
                }
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(10), offline)
        .await
        .unwrap();
    assert_eq!(reason, "grace expired");
    // The outbox (4) overflows: the oldest go, counted by kind.
    let c = register(&broker, None).await;
    let d = register(&broker, None).await;
    let e = register(&broker, None).await;
    broker.unregister(c).unwrap();
    until(&connector, |s| s.dropped.presence == 1 && s.queued == 4).await;
    network.link_up();
    let delivered = network.wait_delivered(8).await;
    let after = &delivered[4..];
    assert_eq!(
        states(after),
        [
            (d, EndpointState::Active),
            (e, EndpointState::Active),
            (c, EndpointState::Closed)
        ]
    );
    assert!(matches!(&after[3], Outbound::Presence(p) if p.presence == Presence::Online));
    let stats = connector.stats();
    // The offline report and C's registration were dropped to make room.
    assert_eq!((stats.dropped.presence, stats.dropped.states), (1, 1));
    assert_eq!(stats.delivered, 8);
    connector.stop().await;
}

/// A driver that starts nothing and keeps the token, so the test can
/// register as the spawned plugin.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl SpawnDriver for Recorder {
    fn kind(&self) -> &str {
        "recorded"
    }

    fn spawn(&self, spawn_token: &str, _prompt: Option<&str>) -> Result<u32, Status> {
        self.0.lock().unwrap().push(spawn_token.to_owned());
        Ok(std::process::id())
    }
}

fn acks(delivered: &[Outbound], key: &str) -> Vec<ControlAck> {
    delivered
        .iter()
        .filter_map(|m| match m {
            Outbound::ControlAck(a) if a.idempotency_key == key => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn control(key: &str, command: ControlCommand) -> Control {
    Control {
        idempotency_key: key.into(),
        command,
    }
}

/// Waits until `key` has `n` acks; returns them.
async fn wait_acks(network: &InProcessNetwork, key: &str, n: usize) -> Vec<ControlAck> {
    let wait = async {
        loop {
            let found = acks(&network.delivered(), key);
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {n} acks for {key}: {:?}", network.delivered()))
}

#[tokio::test]
async fn control_commands_are_applied_once_and_acknowledged() {
    let Setup {
        _dir,
        broker,
        connector,
        network,
    } = setup(1000);
    network.link_up();
    let a = register(&broker, None).await;

    // Force an unregister; a repeat is acknowledged again, not applied again.
    network.control(control(
        "unregister-a",
        ControlCommand::ForceUnregister {
            endpoint_id: a,
            reason: Some("test".into()),
        },
    ));
    let first = wait_acks(&network, "unregister-a", 1).await;
    assert_eq!(first[0].status, AckStatus::Applied);
    let closed = broker
        .endpoints()
        .into_iter()
        .find(|e| e.record.id == a)
        .unwrap();
    assert_eq!(closed.record.state, EndpointState::Closed);
    network.control(control(
        "unregister-a",
        ControlCommand::ForceUnregister {
            endpoint_id: a,
            reason: None,
        },
    ));
    let both = wait_acks(&network, "unregister-a", 2).await;
    assert_eq!(both[1], both[0], "the same ack again");
    let closings = states(&network.delivered())
        .into_iter()
        .filter(|(id, s)| *id == a && *s == EndpointState::Closed)
        .count();
    assert_eq!(closings, 1, "applied once");

    // Dispatching an inbox entry that does not exist fails, and says why.
    network.control(control(
        "dispatch-1",
        ControlCommand::DispatchUndispatched {
            inbox_id: 999,
            endpoint_id: a,
        },
    ));
    let failed = wait_acks(&network, "dispatch-1", 1).await;
    assert_eq!(failed[0].status, AckStatus::Failed);
    assert!(
        failed[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("unknown_inbox_entry"),
        "{failed:?}"
    );
    // A real one: A closed with nothing queued, so park a message first.
    let b = register(&broker, None).await;
    let sent = broker
        .send(
            None,
            capwire_broker::broker::Outgoing {
                to: Some(a),
                content: serde_json::json!("late"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let capwire_broker::broker::Routed::Inbox { inbox_id, .. } = sent.routed else {
        panic!("a closed target parks the message: {:?}", sent.routed);
    };
    network.control(control(
        "dispatch-2",
        ControlCommand::DispatchUndispatched {
            inbox_id,
            endpoint_id: b,
        },
    ));
    assert_eq!(
        wait_acks(&network, "dispatch-2", 1).await[0].status,
        AckStatus::Applied
    );
    assert!(broker.inbox().is_empty());

    // A spawn: received at once, applied when its plugin registers.
    let recorder = Recorder::default();
    broker.add_spawn_driver(Arc::new(recorder.clone()));
    network.control(control(
        "spawn-1",
        ControlCommand::SpawnRequest {
            runtime_kind: "recorded".into(),
            prompt: None,
        },
    ));
    assert_eq!(
        wait_acks(&network, "spawn-1", 1).await[0].status,
        AckStatus::Received
    );
    let token = recorder.0.lock().unwrap()[0].clone();
    register(&broker, Some(token)).await;
    let spawn = wait_acks(&network, "spawn-1", 2).await;
    assert_eq!(spawn[1].status, AckStatus::Applied);

    // One whose plugin never registers fails on the timeout.
    let mut limits = SpawnLimits::default();
    limits.timeout = Duration::from_millis(200);
    broker.set_spawn_limits(limits);
    network.control(control(
        "spawn-2",
        ControlCommand::SpawnRequest {
            runtime_kind: "recorded".into(),
            prompt: Some("never".into()),
        },
    ));
    let timed_out = wait_acks(&network, "spawn-2", 2).await;
    assert_eq!(
        (timed_out[0].status, timed_out[1].status),
        (AckStatus::Received, AckStatus::Failed)
    );
    assert_eq!(
        timed_out[1].detail.as_deref(),
        Some("spawn_correlation_timeout")
    );
    // A kind nobody drives.
    network.control(control(
        "spawn-3",
        ControlCommand::SpawnRequest {
            runtime_kind: "nobody".into(),
            prompt: None,
        },
    ));
    let unsupported = wait_acks(&network, "spawn-3", 1).await;
    assert_eq!(unsupported[0].status, AckStatus::Failed);
    assert!(unsupported[0]
        .detail
        .as_deref()
        .unwrap()
        .starts_with("runtime_kind_unsupported"));
    connector.stop().await;
}
