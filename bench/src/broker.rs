//! The broker (issue 16): durable sends per second and send→ack latency
//! with group commit, over the Unix socket to a real daemon in a child
//! process (this binary's `serve-broker`, one current-thread runtime like
//! `capwire broker`), next to the store's own ceiling measured in the same
//! run with no RPC: redb transactions of the batch size the broker reached,
//! and the broker's store (its writer thread) under the same concurrency.
//!
//! After each broker phase the daemon is SIGKILLed and its store read back:
//! every acknowledged send must be there, or have been delivered.
//!
//! ```text
//! cargo run --release -p capwire-bench -- broker
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use capwire_broker::broker::Routed;
use capwire_broker::daemon::{Daemon, DaemonConfig, STORE_FILE};
use capwire_broker::discovery::Discovery;
use capwire_broker::store::{encode, EndpointId, RedbStore, Seq, Store, Write};
use capwire_broker::{Client, Limits};
use futures_util::StreamExt;

use crate::jsonrpc_servers::process_cpu;
use crate::measure::cpu_time;

/// `capwire-bench broker`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Concurrent senders, one run per count; each sender awaits its send's
    /// acknowledgement before the next one. The end-to-end run (with
    /// receivers) uses the largest.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512])]
    senders: Vec<usize>,
    /// Connections the senders share (each registers one sending endpoint).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Endpoints the messages go to.
    #[arg(long, default_value_t = 4)]
    targets: usize,
    /// Measured seconds per phase (after a one-second warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Content bytes per message (a JSON string of this length).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Where the data directories go (default: the system's temp dir; it
    /// must be on the disk being measured, not a tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// In the child: a broker daemon on `dir`, with per-endpoint bounds large
/// enough to hold a whole phase's messages, until killed.
pub async fn serve(dir: &Path) -> anyhow::Result<()> {
    let mut config = DaemonConfig::new(dir);
    let mut limits = Limits::default();
    limits.max_queue_messages = usize::MAX;
    limits.max_queue_bytes = usize::MAX;
    config.limits = limits;
    let daemon = Daemon::start(config).await?;
    std::future::pending::<()>().await;
    drop(daemon);
    Ok(())
}

/// The daemon child; SIGKILLed when dropped.
struct Child9 {
    child: Child,
    discovery: Discovery,
}

impl Child9 {
    fn start(dir: &Path) -> anyhow::Result<Child9> {
        let child = Command::new(std::env::current_exe()?)
            .arg("serve-broker")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()?;
        let mut child = Child9 {
            child,
            discovery: Discovery {
                pid: 0,
                unix: String::new(),
                ws: String::new(),
                http: String::new(),
                admin: None,
                token: String::new(),
                started_at_ms: 0,
            },
        };
        let started = Instant::now();
        loop {
            if let Ok(d) = Discovery::read(dir) {
                if d.pid == child.child.id() {
                    child.discovery = d;
                    return Ok(child);
                }
            }
            if let Some(status) = child.child.try_wait()? {
                anyhow::bail!("the broker exited at start: {status}");
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the broker wrote no discovery file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child9 {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A send the broker acknowledged.
#[derive(Debug, Clone)]
struct AckedSend {
    endpoint: EndpointId,
    seq: Seq,
    correlation_id: String,
}

/// What a phase of sends measured.
#[derive(Debug, Default)]
struct Phase {
    name: String,
    senders: usize,
    /// Sends acknowledged inside the measured window.
    ops: u64,
    /// Deliveries inside the measured window (with receivers).
    delivered: u64,
    elapsed: Duration,
    /// Send→ack latencies of sends begun and acknowledged in the window, sorted.
    latencies: Vec<Duration>,
    /// Store transactions and commit calls in the window.
    commits: u64,
    batches: u64,
    daemon_cpu: Duration,
    client_cpu: Duration,
    /// Every acknowledged send, the warm-up's included.
    acked: u64,
    /// Acknowledged sends found neither in the store nor delivered.
    lost: u64,
    /// One stored message, encoded (for the store-only measurements).
    sample: Vec<u8>,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The measured window: sends are counted when acknowledged inside it.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

#[derive(Default)]
struct SenderOut {
    latencies: Vec<Duration>,
    ops: u64,
    acked: Vec<AckedSend>,
}

async fn sender(
    client: Client,
    from: EndpointId,
    to: EndpointId,
    content: serde_json::Value,
    window: Window,
) -> anyhow::Result<SenderOut> {
    let mut out = SenderOut::default();
    while Instant::now() < window.to {
        let began = Instant::now();
        let sent = client
            .api()
            .send(from, Some(to), None, content.clone(), None, None)
            .await?;
        let done = Instant::now();
        let Routed::Endpoint { endpoint_id, seq } = sent.routed else {
            anyhow::bail!("a send went to the inbox: {:?}", sent.routed);
        };
        if window.contains(done) {
            out.ops += 1;
            if began >= window.from {
                out.latencies.push(done - began);
            }
        }
        out.acked.push(AckedSend {
            endpoint: endpoint_id,
            seq,
            correlation_id: sent.correlation_id,
        });
    }
    Ok(out)
}

/// Delivered correlation ids, and how many arrived in the window.
#[derive(Default)]
struct ReceiverOut {
    seen: HashSet<String>,
    in_window: u64,
}

/// Receives `endpoint`'s messages and acknowledges them in batches (what
/// arrived together, up to 256) until the window closes, as a plugin that
/// keeps receiving while its acks are in flight.
async fn receiver(
    client: Client,
    endpoint: EndpointId,
    window: Window,
    out: Arc<Mutex<ReceiverOut>>,
) -> anyhow::Result<()> {
    let mut stream = client.api().receive(endpoint, Some(1024)).ready_chunks(256);
    let mut acks = tokio::task::JoinSet::new();
    loop {
        let next = tokio::time::timeout_at(window.to.into(), stream.next()).await;
        let Ok(Some(chunk)) = next else { break };
        let now = Instant::now();
        let mut seqs = Vec::with_capacity(chunk.len());
        {
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            for d in chunk {
                let d = d?;
                seqs.push(d.seq);
                if window.contains(now) {
                    out.in_window += 1;
                }
                out.seen.insert(d.envelope.correlation_id);
            }
        }
        let client = client.clone();
        acks.spawn(async move { client.api().ack(endpoint, seqs).await });
        while let Some(done) = acks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    Ok(())
}

/// One broker phase: a fresh daemon on a fresh directory under `root`,
/// senders for the window (and receivers if `receive`), then kill -9 and
/// the loss check.
async fn phase(
    name: String,
    senders: usize,
    args: &Args,
    root: &Path,
    receive: bool,
) -> anyhow::Result<Phase> {
    let dir = tempfile::Builder::new()
        .prefix("capwire-bench-broker-")
        .tempdir_in(root)?;
    let mut daemon = Child9::start(dir.path())?;
    let d = daemon.discovery.clone();
    let pid = std::process::id();

    let mut connections = Vec::new();
    for _ in 0..args.connections.max(1) {
        let client = Client::connect(&d.unix, &d.token).await?;
        let me = client
            .api()
            .register("bench".into(), pid, None, None, None, None, None)
            .await?;
        connections.push((client, me.endpoint_id));
    }
    let admin_client = Client::connect(&d.unix, &d.token).await?;
    let admin = admin_client.admin().await?;
    let mut targets = Vec::new();
    for _ in 0..args.targets.max(1) {
        let client = Client::connect(&d.unix, &d.token).await?;
        let me = client
            .api()
            .register("bench-target".into(), pid, None, None, None, None, None)
            .await?;
        targets.push((client, me.endpoint_id));
    }

    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        from: start + Duration::from_secs(1),
        to: start + Duration::from_secs(1) + Duration::from_secs_f64(args.seconds),
    };
    let received: Vec<_> = targets
        .iter()
        .map(|_| Arc::new(Mutex::new(ReceiverOut::default())))
        .collect();
    let mut receivers = Vec::new();
    if receive {
        for ((client, endpoint), out) in targets.iter().zip(&received) {
            receivers.push(tokio::spawn(receiver(
                client.clone(),
                *endpoint,
                window,
                out.clone(),
            )));
        }
    }
    let content = serde_json::Value::String("x".repeat(args.payload));
    tokio::time::sleep_until(start.into()).await;
    let mut tasks = Vec::new();
    for i in 0..senders.max(1) {
        let (client, from) = &connections[i % connections.len()];
        let to = targets[i % targets.len()].1;
        tasks.push(tokio::spawn(sender(
            client.clone(),
            *from,
            to,
            content.clone(),
            window,
        )));
    }
    // The daemon's counters and CPU at both ends of the window.
    tokio::time::sleep_until(window.from.into()).await;
    let (status0, cpu0, client0) = (
        admin.status().await?,
        process_cpu(daemon.pid())?,
        cpu_time(),
    );
    tokio::time::sleep_until(window.to.into()).await;
    let (status1, cpu1, client1) = (
        admin.status().await?,
        process_cpu(daemon.pid())?,
        cpu_time(),
    );

    let mut out = Phase {
        name,
        senders,
        elapsed: window.to - window.from,
        commits: status1.store.commits - status0.store.commits,
        batches: status1.store.batches - status0.store.batches,
        daemon_cpu: cpu1.saturating_sub(cpu0),
        client_cpu: client1.saturating_sub(client0),
        ..Phase::default()
    };
    let mut acked = Vec::new();
    for s in tasks {
        let s = s.await??;
        out.ops += s.ops;
        out.latencies.extend(s.latencies);
        acked.extend(s.acked);
    }
    for r in receivers {
        r.await??;
    }
    out.latencies.sort_unstable();
    out.acked = acked.len() as u64;
    out.delivered = received
        .iter()
        .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).in_window)
        .sum();

    // Kill -9, then read the store back: every acknowledged send is either
    // still stored or was delivered.
    drop(connections);
    drop(targets);
    drop(admin_client);
    daemon.kill9();
    let store = RedbStore::open(&dir.path().join(STORE_FILE))?;
    let snapshot = store.load()?;
    store.close().await?;
    let stored: HashMap<(EndpointId, Seq), String> = snapshot
        .messages
        .iter()
        .map(|m| ((m.endpoint, m.seq), m.envelope.correlation_id.clone()))
        .collect();
    let delivered: HashSet<String> = received
        .iter()
        .flat_map(|r| {
            std::mem::take(&mut r.lock().unwrap_or_else(|p| p.into_inner()).seen).into_iter()
        })
        .collect();
    for a in &acked {
        let kept = stored.get(&(a.endpoint, a.seq)) == Some(&a.correlation_id);
        if !kept && !delivered.contains(&a.correlation_id) {
            out.lost += 1;
        }
    }
    if let Some(m) = snapshot.messages.first() {
        out.sample = encode(&m.envelope)?;
    }
    Ok(out)
}

/// A store-only measurement.
struct StoreRow {
    msgs_per_s: f64,
    commits_per_s: f64,
    /// This process's CPU per message.
    cpu_per_msg: Duration,
    /// Per message (the store path) or per transaction (redb alone).
    p50: Option<Duration>,
    p99: Option<Duration>,
}

/// redb alone: transactions of `batch` inserts of `message` into a table
/// keyed like the broker's queues, each committed durably
/// (`Durability::Immediate`), for `budget`.
fn redb_alone(
    root: &Path,
    batch: usize,
    targets: u64,
    message: &[u8],
    budget: Duration,
) -> anyhow::Result<StoreRow> {
    const MESSAGES: redb::TableDefinition<'_, (u64, u64), &[u8]> =
        redb::TableDefinition::new("messages");
    let dir = tempfile::Builder::new()
        .prefix("capwire-bench-redb-")
        .tempdir_in(root)?;
    let db = redb::Database::create(dir.path().join("alone.redb"))?;
    let mut seq = 0u64;
    let mut commits = 0u64;
    let mut took = Vec::new();
    let (start, cpu0) = (Instant::now(), cpu_time());
    while start.elapsed() < budget {
        let began = Instant::now();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate);
        {
            let mut table = txn.open_table(MESSAGES)?;
            for _ in 0..batch {
                seq += 1;
                table.insert((seq % targets, seq), message)?;
            }
        }
        txn.commit()?;
        took.push(began.elapsed());
        commits += 1;
    }
    took.sort_unstable();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu0);
    Ok(StoreRow {
        msgs_per_s: seq as f64 / elapsed,
        commits_per_s: commits as f64 / elapsed,
        cpu_per_msg: cpu / u32::try_from(seq.max(1)).unwrap_or(u32::MAX),
        p50: Some(quantile(&took, 0.5)),
        p99: Some(quantile(&took, 0.99)),
    })
}

/// The broker's store (its writer thread and group commit) with
/// `committers` tasks each appending one message per commit call and
/// awaiting it, for `budget`: the broker's write path without RPC.
async fn store_path(
    root: &Path,
    committers: usize,
    targets: u64,
    message: &[u8],
    budget: Duration,
) -> anyhow::Result<StoreRow> {
    let dir = tempfile::Builder::new()
        .prefix("capwire-bench-store-")
        .tempdir_in(root)?;
    let store = Arc::new(RedbStore::open(&dir.path().join(STORE_FILE))?);
    let message = Arc::new(message.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let start = Instant::now();
    let window = Window {
        from: start + budget / 5,
        to: start + budget / 5 + budget,
    };
    let stats0: Arc<Mutex<Option<(_, Duration)>>> = Arc::new(Mutex::new(None));
    let mut tasks = Vec::new();
    for _ in 0..committers.max(1) {
        let (store, message, next, stats0) =
            (store.clone(), message.clone(), next.clone(), stats0.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ops = 0u64;
            while Instant::now() < window.to {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let began = Instant::now();
                if began >= window.from {
                    let mut s = stats0.lock().unwrap_or_else(|p| p.into_inner());
                    if s.is_none() {
                        *s = Some((store.stats(), cpu_time()));
                    }
                }
                store
                    .commit(vec![Write::Append {
                        endpoint: seq % targets,
                        seq,
                        bytes: message.to_vec(),
                    }])
                    .await?;
                let done = Instant::now();
                if window.contains(done) {
                    ops += 1;
                    if began >= window.from {
                        latencies.push(done - began);
                    }
                }
            }
            anyhow::Ok((ops, latencies))
        }));
    }
    let mut ops = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (o, l) = t.await??;
        ops += o;
        latencies.extend(l);
    }
    let (stats1, cpu1) = (store.stats(), cpu_time());
    let (stats0, cpu0) = stats0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default();
    store.close().await?;
    latencies.sort_unstable();
    let elapsed = budget.as_secs_f64();
    Ok(StoreRow {
        msgs_per_s: ops as f64 / elapsed,
        commits_per_s: (stats1.commits - stats0.commits) as f64 / elapsed,
        cpu_per_msg: cpu1.saturating_sub(cpu0) / u32::try_from(ops.max(1)).unwrap_or(u32::MAX),
        p50: Some(quantile(&latencies, 0.5)),
        p99: Some(quantile(&latencies, 0.99)),
    })
}

/// The disk's own fsync: 4 KiB written and `fdatasync`ed, one at a time,
/// for `budget`; returns (per second, p50, p99).
fn fsync_alone(root: &Path, budget: Duration) -> anyhow::Result<(f64, Duration, Duration)> {
    use std::io::Write as _;
    let dir = tempfile::Builder::new()
        .prefix("capwire-bench-fsync-")
        .tempdir_in(root)?;
    let mut file = std::fs::File::create(dir.path().join("fsync"))?;
    let block = [7u8; 4096];
    let mut took = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        took.push(t.elapsed());
    }
    let n = took.len() as f64 / start.elapsed().as_secs_f64();
    took.sort_unstable();
    Ok((n, quantile(&took, 0.5), quantile(&took, 0.99)))
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.1} k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

/// Runs the whole broker benchmark and returns its Markdown report.
pub async fn run(args: &Args) -> anyhow::Result<String> {
    let root = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut counts = args.senders.clone();
    counts.retain(|n| *n > 0);
    if counts.is_empty() {
        counts.push(64);
    }
    let most = counts.iter().copied().max().unwrap_or(64);
    let mut phases = Vec::new();
    for &n in &counts {
        eprintln!("broker: sends only, {n} senders");
        let p = phase(format!("sends, {n} senders"), n, args, &root, false)
            .await
            .with_context(|| format!("sends with {n} senders"))?;
        phases.push(p);
    }
    eprintln!("broker: sends, receives and acks, {most} senders");
    let through = phase(
        format!("sends + receive + ack, {most} senders"),
        most,
        args,
        &root,
        true,
    )
    .await
    .context("the end-to-end phase")?;

    let message = phases
        .iter()
        .find(|p| !p.sample.is_empty())
        .map_or_else(|| vec![b'x'; 200], |p| p.sample.clone());
    let stored_bytes = message.len();
    let targets = args.targets.max(1) as u64;
    let budget = Duration::from_secs_f64(args.seconds.clamp(0.5, 3.0));
    let batch = |p: &Phase| {
        (p.batches as f64 / p.commits.max(1) as f64)
            .round()
            .max(1.0) as usize
    };
    eprintln!("broker: the store alone");
    let fsync = fsync_alone(&root, Duration::from_secs(1))?;
    let mut beside = Vec::new();
    for p in &phases {
        let path = store_path(&root, p.senders, targets, &message, budget).await?;
        let alone = redb_alone(&root, batch(p), targets, &message, budget)?;
        beside.push((path, alone));
    }
    let mut sweep = Vec::new();
    for b in [1, 64, 256, 1024] {
        sweep.push((b, redb_alone(&root, b, targets, &message, budget)?));
    }

    let mut doc = String::new();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        doc,
        "- command: `{command}`\n\
         - senders on {} connections over the Unix socket, each sender awaiting its ack before \
         its next send, to {} endpoints; {} bytes of content, {stored_bytes} bytes per message as \
         stored; {:.0} s measured after 1 s of warm-up\n\
         - the daemon is a child process (one current-thread runtime and the store's writer \
         thread); the client is this process (one current-thread runtime); the store-only runs \
         are in this process\n\
         - the disk in this run: {:.0} fsyncs/s of 4 KiB one at a time, p50 {}, p99 {}\n",
        args.connections,
        args.targets,
        args.payload,
        args.seconds,
        fsync.0,
        us(fsync.1),
        us(fsync.2),
    );
    doc.push_str(
        "| run | sends/s | delivered/s | send→ack p50 | p99 | p99.9 | commits/s | sends per commit | daemon CPU µs/send | client CPU µs/send | acked | lost after kill -9 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in phases.iter().chain([&through]) {
        let secs = p.elapsed.as_secs_f64();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / p.ops.max(1) as f64;
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            p.name,
            rate(p.ops as f64 / secs),
            if std::ptr::eq(p, &through) {
                rate(p.delivered as f64 / secs)
            } else {
                "–".into()
            },
            us(quantile(&p.latencies, 0.5)),
            us(quantile(&p.latencies, 0.99)),
            us(quantile(&p.latencies, 0.999)),
            rate(p.commits as f64 / secs),
            p.batches as f64 / p.commits.max(1) as f64,
            per(p.daemon_cpu),
            per(p.client_cpu),
            p.acked,
            p.lost,
        );
    }
    doc.push_str(
        "\nThe store alone, same message, same run, no RPC: the broker's store \
         (`RedbStore`: writer thread, group commit) with as many committers as senders, and \
         redb alone committing transactions of the batch size the broker reached:\n\n\
         | senders | broker sends/s | store, same concurrency: msgs/s | p50 | p99 | CPU µs/msg | broker ÷ store | redb alone, same batch: msgs/s | commits/s | CPU µs/msg | broker ÷ redb alone |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (p, (path, alone)) in phases.iter().zip(&beside) {
        let broker = p.ops as f64 / p.elapsed.as_secs_f64();
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} (batch {}) | {} | {:.1} | {:.2} |",
            p.senders,
            rate(broker),
            rate(path.msgs_per_s),
            path.p50.map_or("–".into(), us),
            path.p99.map_or("–".into(), us),
            path.cpu_per_msg.as_secs_f64() * 1e6,
            broker / path.msgs_per_s.max(1e-9),
            rate(alone.msgs_per_s),
            batch(p),
            rate(alone.commits_per_s),
            alone.cpu_per_msg.as_secs_f64() * 1e6,
            broker / alone.msgs_per_s.max(1e-9),
        );
    }
    doc.push_str(
        "\nredb alone by batch size (its batched-commit ceiling):\n\n\
         | messages per transaction | msgs/s | commits/s | transaction p50 | p99 | CPU µs/msg |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for (b, r) in &sweep {
        let _ = writeln!(
            doc,
            "| {b} | {} | {} | {} | {} | {:.1} |",
            rate(r.msgs_per_s),
            rate(r.commits_per_s),
            r.p50.map_or("–".into(), us),
            r.p99.map_or("–".into(), us),
            r.cpu_per_msg.as_secs_f64() * 1e6,
        );
    }
    doc.push('\n');
    let lost: u64 = phases.iter().chain([&through]).map(|p| p.lost).sum();
    if lost > 0 {
        let _ = writeln!(doc, "**ACKNOWLEDGED SENDS LOST: {lost}**\n");
    }
    print!("{doc}");
    if let Some(path) = &args.out {
        std::fs::write(path, &doc)?;
    }
    anyhow::ensure!(lost == 0, "acknowledged sends were lost");
    Ok(doc)
}
