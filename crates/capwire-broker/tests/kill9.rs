//! The kill -9 harness: the broker daemon runs as a child process (this
//! test binary, re-run as `broker_process`);
//! senders record an id only once the broker acknowledged its send;
//! receivers record every delivery and ack it. The broker is SIGKILLed at
//! random moments under that load and restarted on the same data directory.
//! At the end every acknowledged id must have been delivered, first
//! deliveries in send order per endpoint, and an id delivered twice only
//! with the redelivery flag.
//!
//! `cargo test -p capwire-broker --test kill9` runs 3 kills;
//! `cargo test -p capwire-broker --test kill9 -- --ignored --nocapture` runs 20.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capwire_broker::discovery::Discovery;
use capwire_broker::store::EndpointId;
use capwire_broker::Client;
use futures_util::StreamExt;
use serde_json::json;

/// The broker child; killed if the test ends early.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where `broker_process` finds its data directory.
const CHILD_ENV: &str = "CAPWIRE_KILL9_BROKER_DATA";

/// The broker daemon, when this binary is run as the harness's child (with
/// `CHILD_ENV` set); otherwise nothing. A test binary can run any code as a
/// separate process this way, and a workspace keeps one `cargo run` binary.
#[test]
fn broker_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(capwire_broker::daemon::run(
            capwire_broker::daemon::DaemonConfig::new(dir),
        ))
        .expect("the broker daemon runs");
}

fn start(dir: &Path) -> (Broker, Discovery) {
    let child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "broker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the broker binary runs");
    let broker = Broker(child);
    let started = Instant::now();
    loop {
        if let Ok(d) = Discovery::read(dir) {
            if d.pid == broker.0.id() {
                return (broker, d);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broker wrote no discovery file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one receiving endpoint saw: (id, redelivered) in arrival order.
type Seen = Arc<Mutex<Vec<(u64, bool)>>>;

struct Harness {
    sender: EndpointId,
    targets: Vec<EndpointId>,
    acked: Vec<Arc<Mutex<Vec<u64>>>>,
    seen: Vec<Seen>,
    next_id: Vec<Arc<Mutex<u64>>>,
}

/// A small xorshift generator: the seed is printed, so a failing run can
/// be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs load against a live broker until it dies (or `for_at_most` passes).
async fn load(h: &Harness, d: &Discovery, first: bool, for_at_most: Duration) {
    let client = Client::connect(&d.unix, &d.token).await.expect("connect");
    let pid = std::process::id();
    if !first {
        client
            .api()
            .reattach(h.sender, pid)
            .await
            .expect("reattach");
        for t in &h.targets {
            client.api().reattach(*t, pid).await.expect("reattach");
        }
    }
    let mut tasks = Vec::new();
    for (i, target) in h.targets.iter().copied().enumerate() {
        // One receiver per endpoint, each on its own connection.
        let receiver = Client::connect(&d.unix, &d.token).await.expect("connect");
        let seen = h.seen[i].clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = receiver.api().receive(target, Some(64));
            while let Some(Ok(m)) = stream.next().await {
                let Some(id) = m.envelope.content.as_u64() else {
                    panic!("a foreign payload: {:?}", m.envelope.content)
                };
                seen.lock().unwrap().push((id, m.redelivered));
                if receiver.api().ack(target, vec![m.seq]).await.is_err() {
                    break;
                }
            }
        }));
        // One sender per target, sending increasing ids; an id is recorded
        // only once its send was acknowledged.
        let (client, acked, next_id, sender) = (
            client.clone(),
            h.acked[i].clone(),
            h.next_id[i].clone(),
            h.sender,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let id = {
                    let mut n = next_id.lock().unwrap();
                    *n += 1;
                    *n
                };
                let sent = client
                    .api()
                    .send(sender, Some(target), None, json!(id), None, None)
                    .await;
                match sent {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break, // indeterminate: either outcome is allowed
                }
            }
        }));
    }
    let _ = tokio::time::timeout(for_at_most, async {
        for t in &mut tasks {
            let _ = t.await;
        }
    })
    .await;
    for t in tasks {
        t.abort();
    }
}

async fn run(kills: usize) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill9: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (broker, d) = start(dir.path());
    let client = Client::connect(&d.unix, &d.token).await.unwrap();
    let pid = std::process::id();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = client
            .api()
            .register("kill9".into(), pid, None, None, None, None, None)
            .await
            .unwrap();
        ids.push(r.endpoint_id);
    }
    client.close().await;
    let h = Harness {
        sender: ids[0],
        targets: ids[1..].to_vec(),
        acked: (0..2).map(|_| Arc::default()).collect(),
        seen: (0..2).map(|_| Arc::default()).collect(),
        next_id: (0..2).map(|_| Arc::default()).collect(),
    };
    let mut broker = Some((broker, d));
    for round in 0..=kills {
        let (mut child, d) = match broker.take() {
            Some(b) => b,
            None => start(dir.path()),
        };
        if round == kills {
            // The last run: load for a while, then let every receiver drain.
            load(&h, &d, round == 0, Duration::from_millis(500)).await;
            let drain = Client::connect(&d.unix, &d.token).await.unwrap();
            let mut tasks = Vec::new();
            for (i, t) in h.targets.iter().copied().enumerate() {
                drain.api().reattach(t, pid).await.unwrap();
                let (c, seen) = (drain.clone(), h.seen[i].clone());
                let want: HashSet<u64> = h.acked[i].lock().unwrap().iter().copied().collect();
                tasks.push(tokio::spawn(async move {
                    let mut stream = c.api().receive(t, Some(256));
                    let done = |seen: &Seen| {
                        let got: HashSet<u64> =
                            seen.lock().unwrap().iter().map(|(id, _)| *id).collect();
                        want.is_subset(&got)
                    };
                    while !done(&seen) {
                        let next = tokio::time::timeout(Duration::from_secs(20), stream.next());
                        let Ok(Some(Ok(m))) = next.await else { break };
                        let id = m.envelope.content.as_u64().unwrap_or(0);
                        seen.lock().unwrap().push((id, m.redelivered));
                        c.api().ack(t, vec![m.seq]).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            drop(child);
            break;
        }
        let kill_after = Duration::from_millis(150 + rng.below(600));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SIGKILL: no shutdown path runs.
            let _ = child.0.kill();
            let _ = child.0.wait();
            drop(child);
        });
        load(&h, &d, round == 0, Duration::from_secs(30)).await;
        killer.join().unwrap();
    }
    check(&h);
}

fn check(h: &Harness) {
    for i in 0..h.targets.len() {
        let acked = h.acked[i].lock().unwrap();
        let seen = h.seen[i].lock().unwrap();
        let mut first = Vec::new();
        let mut delivered = HashSet::new();
        for (id, redelivered) in seen.iter() {
            if delivered.insert(*id) {
                first.push(*id);
            } else {
                assert!(
                    *redelivered,
                    "id {id} delivered twice without the redelivery flag"
                );
            }
        }
        let missing: Vec<_> = acked.iter().filter(|id| !delivered.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "endpoint {}: {} acknowledged ids lost, e.g. {:?}",
            h.targets[i],
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "endpoint {}: first deliveries out of send order",
            h.targets[i]
        );
        eprintln!(
            "kill9: endpoint {}: {} acked, {} delivered ({} redeliveries)",
            h.targets[i],
            acked.len(),
            seen.len(),
            seen.len() - first.len()
        );
        assert!(!acked.is_empty(), "the load ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    run(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "20 kills take a while; run with --ignored (docs/broker.md)"]
async fn acknowledged_messages_survive_20_kill_9s() {
    run(20).await;
}
