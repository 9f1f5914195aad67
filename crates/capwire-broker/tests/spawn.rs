//! Spawn requests: a command driver starts a process with the spawn token,
//! the plugin that registers with it completes the request; requests are
//! rate limited; one whose plugin never registers times out.

use std::time::Duration;

use capwire::Code;
use capwire_broker::daemon::{Daemon, DaemonConfig};
use capwire_broker::events::SpawnOutcome;
use capwire_broker::spawn::{CommandDriver, SpawnLimits};
use capwire_broker::{BrokerEvent, Client, Limits};

async fn outcome(
    events: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    token: &str,
) -> SpawnOutcome {
    let wait = async {
        loop {
            if let Ok(BrokerEvent::Spawn {
                spawn_token,
                outcome,
                ..
            }) = events.recv().await
            {
                if spawn_token == token && !matches!(outcome, SpawnOutcome::Started { .. }) {
                    return outcome;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a spawn outcome")
}

#[tokio::test]
async fn spawn_tokens_complete_requests_and_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DaemonConfig::new(dir.path());
    let mut limits = Limits::default();
    limits.sweep_interval = Duration::from_millis(50);
    config.limits = limits;
    let daemon = Daemon::start(config).await.unwrap();
    let broker = daemon.broker().clone();
    let mut spawn_limits = SpawnLimits::default();
    spawn_limits.max_per_window = 2;
    spawn_limits.timeout = Duration::from_millis(300);
    broker.set_spawn_limits(spawn_limits);
    // The "plugin" writes its token where the test can read it.
    let out = dir.path().join("token.txt");
    let script = format!("printf %s \"$CAPWIRE_SPAWN_TOKEN\" > {}", out.display());
    broker.add_spawn_driver(std::sync::Arc::new(CommandDriver::new(
        "sh",
        "sh",
        vec!["-c".into(), script],
    )));
    let mut events = broker.subscribe();
    let d = daemon.discovery().clone();
    let client = Client::connect(&d.unix, &d.token).await.unwrap();
    let admin = client.admin().await.unwrap();

    let unknown = admin.spawn("nope".into(), None).await.unwrap_err();
    assert_eq!(unknown.code, Code::Unimplemented);

    let started = admin
        .spawn("sh".into(), Some("do it".into()))
        .await
        .unwrap();
    assert!(started.pid > 0);
    let mut token = String::new();
    for _ in 0..200 {
        token = std::fs::read_to_string(&out).unwrap_or_default();
        if !token.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(token, started.spawn_token, "the driver passed the token");
    let registered = client
        .api()
        .register(
            "sh".into(),
            std::process::id(),
            None,
            None,
            None,
            None,
            Some(token.clone()),
        )
        .await
        .unwrap();
    assert!(registered.spawn_completed);
    assert_eq!(
        outcome(&mut events, &token).await,
        SpawnOutcome::Completed {
            endpoint_id: registered.endpoint_id
        }
    );

    // The second request's plugin never registers: it times out.
    let lonely = admin.spawn("sh".into(), None).await.unwrap();
    assert_eq!(
        outcome(&mut events, &lonely.spawn_token).await,
        SpawnOutcome::TimedOut
    );
    assert_eq!(broker.pending_spawns(), 0);
    // Two per window.
    let limited = admin.spawn("sh".into(), None).await.unwrap_err();
    assert_eq!(limited.code, Code::ResourceExhausted);
    assert_eq!(
        limited.reason.as_ref().map(|r| r.as_str()),
        Some("spawn_rate_limited")
    );
    daemon.shutdown().await;
}

/// Where `broker_process` finds its data directory and its `--spawn` spec.
const CHILD_DATA: &str = "CAPWIRE_SPAWN_TEST_BROKER_DATA";
const CHILD_SPAWN: &str = "CAPWIRE_SPAWN_TEST_BROKER_SPAWN";

/// The broker daemon in a process of its own, when this test binary is
/// re-run with `CHILD_DATA` set (otherwise nothing): configured from a
/// `--spawn KIND=COMMAND` spec as `capwire broker --spawn` configures it.
#[test]
fn broker_process() {
    let Some(dir) = std::env::var_os(CHILD_DATA) else {
        return;
    };
    let mut config = capwire_broker::daemon::DaemonConfig::new(dir);
    let spec = std::env::var(CHILD_SPAWN).expect("a spawn spec");
    config
        .spawn
        .push(capwire_broker::spawn::CommandDriver::parse(&spec).expect("a valid spec"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(capwire_broker::daemon::run(config))
        .expect("the broker daemon runs");
}

/// A daemon takes its command drivers from `--spawn KIND=COMMAND` specs
/// (`capwire broker --spawn`): the command runs with the spawn token.
#[tokio::test]
async fn spawn_drivers_come_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("token.txt");
    let spec = format!(
        "writer=sh -c 'printf %s \"$CAPWIRE_SPAWN_TOKEN\" > {}'",
        out.display()
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "broker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DATA, dir.path())
        .env(CHILD_SPAWN, &spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = loop {
        if let Ok(d) = capwire_broker::discovery::Discovery::read(dir.path()) {
            break d;
        }
        assert!(child.try_wait().unwrap().is_none(), "the broker exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = Client::connect(&d.unix, &d.token).await.unwrap();
    let admin = client.admin().await.unwrap();
    let started = admin.spawn("writer".into(), None).await.unwrap();
    let mut token = String::new();
    for _ in 0..500 {
        token = std::fs::read_to_string(&out).unwrap_or_default();
        if !token.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(token, started.spawn_token, "the command ran with the token");
    let unknown = admin.spawn("other".into(), None).await.unwrap_err();
    assert_eq!(unknown.code, Code::Unimplemented);
    client.close().await;
    let _ = child.kill();
    let _ = child.wait();

    // A malformed spec is refused before anything starts.
    assert!(capwire_broker::spawn::CommandDriver::parse("no-command-here").is_err());
}
