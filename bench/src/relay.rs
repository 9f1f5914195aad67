//! The relay (issue 17): one agent streaming `session/update`
//! notifications behind a real relay, fanned out to 1, 10 and 100
//! WebSocket clients on loopback.
//!
//! Three processes, as in use: the agent (this binary's `relay agent`, a
//! plain stdio JSON-RPC program), the relay (`relay serve`: the
//! `capwire-relay` library on a multi-thread runtime, the way `capwire
//! relay` runs it) and the clients (this process, a 2-worker runtime).
//! Every frame carries the agent's wall-clock time just before its write;
//! a client's latency is its receive time minus that.
//!
//! ```text
//! cargo run --release -p capwire-bench -- relay            # about a minute
//! cargo run --release -p capwire-bench -- relay --quick
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use capwire::transport::{self, Address, FrameReceiver, FrameSender, TransportConfig};
use serde_json::{json, Value};

/// `capwire-bench relay`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Attached clients per row.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    clients: Vec<usize>,
    /// Frames the agent streams in the as-fast-as-it-can rows.
    #[arg(long, default_value_t = 50_000)]
    frames: u64,
    /// Frames per second in the fixed-rate rows.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of each fixed-rate row.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Text bytes per frame (the frame is about 190 bytes more).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Short runs, for smoke checks.
    #[arg(long)]
    quick: bool,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(clap::Subcommand, Debug)]
enum Role {
    /// (internal) The agent: JSON-RPC on stdio; a prompt `stream N RATE SIZE`
    /// streams N `session/update` notifications (RATE 0: as fast as it can).
    Agent,
    /// (internal) A relay in front of `relay agent`; prints `URL TOKEN`,
    /// serves until stdin closes.
    Serve,
}

/// Runs `capwire-bench relay …`.
pub(crate) fn main(args: Args) -> anyhow::Result<()> {
    match args.role {
        Some(Role::Agent) => return agent(),
        Some(Role::Serve) => {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve())
        }
        None => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (frames, seconds) = if args.quick {
        (args.frames.min(10_000), args.seconds.min(1.5))
    } else {
        (args.frames, args.seconds)
    };
    let fixed = (args.rate as f64 * seconds) as u64;
    let mut max_rows = Vec::new();
    let mut rate_rows = Vec::new();
    for &n in &args.clients {
        eprintln!("relay: {n} clients, as fast as the agent can ({frames} frames)");
        max_rows.push(rt.block_on(run(Plan {
            clients: n,
            stuck: 0,
            frames,
            rate: 0,
            size: args.size,
        }))?);
    }
    for &n in &args.clients {
        eprintln!("relay: {n} clients, {} frames/s", args.rate);
        rate_rows.push(rt.block_on(run(Plan {
            clients: n,
            stuck: 0,
            frames: fixed,
            rate: args.rate,
            size: args.size,
        }))?);
    }
    // One client that stops reading, beside ten that read; frames of 1 KiB
    // so that unbounded buffering would show.
    let stuck_frames = (args.rate as f64 * seconds * 2.0) as u64;
    let mut stuck_rows = Vec::new();
    for stuck in [0, 1] {
        eprintln!("relay: 10 clients + {stuck} that never reads");
        stuck_rows.push(rt.block_on(run(Plan {
            clients: 10,
            stuck,
            frames: stuck_frames,
            rate: args.rate,
            size: 1024,
        }))?);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut doc = format!(
        "### Run\n\n- command: `{command}`\n{}- agent, relay and clients are three processes on this machine; the relay runs on a multi-thread runtime (one worker per core), the clients on a 2-worker runtime\n\n",
        crate::machine()
    );
    doc.push_str(&table(
        &format!(
            "As fast as the agent can write ({frames} frames of {} text bytes)",
            args.size
        ),
        &max_rows,
        false,
    ));
    doc.push_str(&table(
        &format!(
            "At {} frames/s for {seconds} s ({} text bytes)",
            args.rate, args.size
        ),
        &rate_rows,
        false,
    ));
    doc.push_str(&table(
        &format!(
            "One client that never reads, beside 10 that do ({} frames/s, {stuck_frames} frames of 1 KiB text)",
            args.rate
        ),
        &stuck_rows,
        true,
    ));
    print!("{doc}");
    if let Some(path) = args.out {
        std::fs::write(path, &doc)?;
    }
    Ok(())
}

struct Plan {
    clients: usize,
    stuck: usize,
    frames: u64,
    rate: u64,
    size: usize,
}

/// One row.
struct Row {
    clients: usize,
    stuck: usize,
    /// The agent's write rate (first to last frame, by its timestamps).
    agent_rate: f64,
    /// Frames/s each reading client received: median and lowest.
    per_client_median: f64,
    per_client_min: f64,
    total_rate: f64,
    /// Frames the readers did not receive (the ring left them behind).
    missed: u64,
    resets: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// Relay's resident set growth per client attached after the first,
    /// before the stream.
    rss_per_client_kib: Option<f64>,
    rss_idle_kib: u64,
    rss_peak_kib: u64,
    /// Relay CPU per delivered frame.
    cpu_per_frame_us: f64,
}

fn table(title: &str, rows: &[Row], stuck: bool) -> String {
    let mut s = format!("#### {title}\n\n");
    s.push_str(if stuck {
        "| readers | never reads | frames/s per reader (median / lowest) | missed | p50 | p99 | max | relay RSS before → peak | relay CPU per delivery |\n|---|---|---|---|---|---|---|---|---|\n"
    } else {
        "| clients | agent frames/s | per client (median / lowest) | total delivered/s | missed (resets) | p50 | p99 | max | relay RSS per client | relay RSS before → peak | relay CPU per delivery |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    });
    for r in rows {
        let lat = format!("{} | {} | {}", ms(r.p50_us), ms(r.p99_us), ms(r.max_us));
        let rss = format!(
            "{:.1} → {:.1} MiB",
            r.rss_idle_kib as f64 / 1024.0,
            r.rss_peak_kib as f64 / 1024.0
        );
        if stuck {
            s.push_str(&format!(
                "| {} | {} | {:.0} / {:.0} | {} | {lat} | {rss} | {:.1} µs |\n",
                r.clients,
                r.stuck,
                r.per_client_median,
                r.per_client_min,
                r.missed,
                r.cpu_per_frame_us
            ));
        } else {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} / {:.0} | {:.0} | {} ({}) | {lat} | {} | {rss} | {:.1} µs |\n",
                r.clients,
                r.agent_rate,
                r.per_client_median,
                r.per_client_min,
                r.total_rate,
                r.missed,
                r.resets,
                r.rss_per_client_kib
                    .map_or_else(|| "–".to_owned(), |k| format!("{k:.0} KiB")),
                r.cpu_per_frame_us
            ));
        }
    }
    s.push('\n');
    s
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} ms", us as f64 / 1000.0)
    }
}

/// The relay child; stopped (stdin closed, then killed) on drop.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of process `pid` (user + system), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct Conn {
    tx: FrameSender,
    rx: FrameReceiver,
}

async fn connect(url: &str, token: &str) -> anyhow::Result<Conn> {
    let addr: Address = url.parse()?;
    let mut config = TransportConfig::default();
    config.bearer = Some(token.to_owned());
    let t = transport::connect(&addr, &config).await?;
    Ok(Conn {
        tx: t.sender,
        rx: t.receiver,
    })
}

impl Conn {
    async fn send(&self, v: Value) -> anyhow::Result<()> {
        self.tx
            .send(Bytes::from(serde_json::to_vec(&v)?))
            .await
            .map_err(|e| anyhow::anyhow!("send: {e}"))
    }

    /// A request and its answer (other frames are skipped).
    async fn request(&mut self, id: &str, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            let f = tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
                .await
                .context("no answer in time")??
                .context("closed")?;
            let v: Value = serde_json::from_slice(&f)?;
            if v["id"] == json!(id) && v.get("method").is_none() {
                if let Some(e) = v.get("error") {
                    anyhow::bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    lat_us: Vec<u32>,
    frames: u64,
    resets: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// The agent's timestamps of frame 0 and frame N-1, when received.
    ts_first: Option<u64>,
    ts_last: Option<u64>,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The decimal number right after `key` in `frame` (no JSON parse: the
/// client side must cost little next to the relay).
fn num_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = frame.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

async fn read_stream(mut rx: FrameReceiver, frames: u64, deadline: tokio::time::Instant) -> Stats {
    let mut s = Stats {
        lat_us: Vec::with_capacity(frames as usize),
        ..Stats::default()
    };
    while let Ok(Ok(Some(f))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let now = unix_ns();
        let Some(ts) = num_after(&f, b"\"ts\":") else {
            if f.windows(14).any(|w| w == b"\"_relay/reset\"") {
                s.resets += 1;
            }
            continue;
        };
        let i = num_after(&f, b"\"i\":");
        let at = Instant::now();
        s.lat_us
            .push((now.saturating_sub(ts) / 1000).min(u64::from(u32::MAX)) as u32);
        s.frames += 1;
        s.first.get_or_insert(at);
        s.last = Some(at);
        if i == Some(0) {
            s.ts_first = Some(ts);
        }
        if i == Some(frames - 1) {
            s.ts_last = Some(ts);
            break;
        }
    }
    s
}

async fn run(plan: Plan) -> anyhow::Result<Row> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["relay", "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let child = RelayProcess(child);
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let (url, token) = line
        .trim()
        .split_once(' ')
        .with_context(|| format!("the relay said {line:?}"))?;
    let (url, token) = (url.to_owned(), token.to_owned());

    let mut driver = connect(&url, &token).await?;
    driver
        .request(
            "i",
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {}}),
        )
        .await?;
    let sid = driver
        .request("s", "session/new", json!({"cwd": "/tmp", "mcpServers": []}))
        .await?["sessionId"]
        .as_str()
        .context("sessionId")?
        .to_owned();
    // The baseline: the relay, its agent, one session and one client.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss0 = rss_kib(pid);
    let mut readers = vec![driver];
    for _ in 1..plan.clients {
        let mut c = connect(&url, &token).await?;
        c.request("a", "_relay/attach", json!({"sessionId": sid}))
            .await?;
        readers.push(c);
    }
    let mut stuck = Vec::new();
    for _ in 0..plan.stuck {
        let mut c = connect(&url, &token).await?;
        c.request("a", "_relay/attach", json!({"sessionId": sid}))
            .await?;
        stuck.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss1 = rss_kib(pid);
    let expected = if plan.rate > 0 {
        Duration::from_secs_f64(plan.frames as f64 / plan.rate as f64)
    } else {
        Duration::from_secs(2)
    };
    let deadline = tokio::time::Instant::now() + expected * 4 + Duration::from_secs(20);

    let txs: Vec<FrameSender> = readers.iter().map(|c| c.tx.clone()).collect();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|c| tokio::spawn(read_stream(c.rx, plan.frames, deadline)))
        .collect();
    let sampler_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = sampler_stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.max(rss_kib(pid))
        })
    };
    let cpu0 = process_cpu(pid);
    let text = format!("stream {} {} {}", plan.frames, plan.rate, plan.size);
    let prompt = json!({"jsonrpc": "2.0", "id": "p", "method": "session/prompt",
        "params": {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}});
    txs[0]
        .send(Bytes::from(serde_json::to_vec(&prompt)?))
        .await
        .map_err(|e| anyhow::anyhow!("prompt: {e}"))?;
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await?);
    }
    let cpu = process_cpu(pid).saturating_sub(cpu0);
    sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rss_peak = sampler.await?;
    drop(stuck);
    drop(txs);
    drop(child);

    let mut rates: Vec<f64> = stats
        .iter()
        .map(|s| match (s.first, s.last) {
            (Some(a), Some(b)) if s.frames > 1 => {
                (s.frames - 1) as f64 / (b - a).as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let delivered: u64 = stats.iter().map(|s| s.frames).sum();
    let missed = (plan.frames * plan.clients as u64).saturating_sub(delivered);
    let resets = stats.iter().map(|s| s.resets).sum();
    let span = {
        let first = stats.iter().filter_map(|s| s.first).min();
        let last = stats.iter().filter_map(|s| s.last).max();
        match (first, last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
            _ => 1.0,
        }
    };
    let ts_first = stats.iter().filter_map(|s| s.ts_first).min();
    let ts_last = stats.iter().filter_map(|s| s.ts_last).max();
    let agent_rate = match (ts_first, ts_last) {
        (Some(a), Some(b)) if b > a => (plan.frames - 1) as f64 / ((b - a) as f64 / 1e9),
        _ => 0.0,
    };
    let mut lat: Vec<u32> = stats.into_iter().flat_map(|s| s.lat_us).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        u64::from(lat[((lat.len() - 1) as f64 * p).round() as usize])
    };
    Ok(Row {
        clients: plan.clients,
        stuck: plan.stuck,
        agent_rate,
        per_client_median: rates[rates.len() / 2],
        per_client_min: rates[0],
        total_rate: delivered as f64 / span,
        missed,
        resets,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: pct(1.0),
        rss_per_client_kib: match plan.clients - 1 + plan.stuck {
            0 => None,
            more => Some(rss1.saturating_sub(rss0) as f64 / more as f64),
        },
        rss_idle_kib: rss1,
        rss_peak_kib: rss_peak,
        cpu_per_frame_us: cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
    })
}

/// `relay serve`: a relay in front of this binary's `relay agent`.
async fn serve() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let agent = capwire_relay::AgentCommand::new(exe.display().to_string(), ["relay", "agent"]);
    let relay = capwire_relay::Relay::start(capwire_relay::RelayConfig::new(agent)).await?;
    println!("{} {}", relay.url(), relay.token());
    std::io::stdout().flush()?;
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await?;
    relay.shutdown().await;
    Ok(())
}

/// `relay agent`: the smallest stdio JSON-RPC agent that streams.
fn agent() -> anyhow::Result<()> {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut sessions = 0u64;
    for line in stdin.lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = msg.get("id").cloned() else {
            continue;
        };
        let result = match msg["method"].as_str().unwrap_or("") {
            "initialize" => json!({"protocolVersion": 1, "agentCapabilities": {}}),
            "session/new" => {
                sessions += 1;
                json!({"sessionId": format!("bench-{sessions}")})
            }
            "session/prompt" => {
                let sid = msg["params"]["sessionId"].as_str().unwrap_or("").to_owned();
                let text = msg["params"]["prompt"][0]["text"].as_str().unwrap_or("");
                let mut words = text.split_whitespace().skip(1).map(|w| w.parse::<u64>());
                let (n, rate, size) = match (words.next(), words.next(), words.next()) {
                    (Some(Ok(n)), Some(Ok(r)), Some(Ok(s))) => (n, r, s as usize),
                    _ => (0, 0, 0),
                };
                stream(&mut out, &sid, n, rate, size)?;
                json!({"stopReason": "end_turn"})
            }
            _ => json!({}),
        };
        serde_json::to_writer(
            &mut out,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

/// Writes `n` `session/update` frames, one write each, paced at `rate`
/// per second (0: as fast as the pipe takes them).
fn stream(out: &mut impl Write, sid: &str, n: u64, rate: u64, size: usize) -> std::io::Result<()> {
    let pad = "x".repeat(size);
    let start = Instant::now();
    let mut line = Vec::with_capacity(size + 256);
    for i in 0..n {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        line.clear();
        writeln!(
            line,
            "{{\"jsonrpc\":\"2.0\",\"method\":\"session/update\",\"params\":{{\"sessionId\":\"{sid}\",\"update\":{{\"sessionUpdate\":\"agent_message_chunk\",\"content\":{{\"type\":\"text\",\"text\":\"{pad}\"}}}},\"_meta\":{{\"bench\":{{\"i\":{i},\"n\":{n},\"ts\":{}}}}}}}}}",
            unix_ns()
        )?;
        out.write_all(&line)?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::num_after;

    #[test]
    fn numbers_are_read_after_their_key() {
        let f = br#"{"_seq":3,"params":{"_meta":{"bench":{"i":17,"n":20,"ts":1234567}}}}"#;
        assert_eq!(num_after(f, b"\"ts\":"), Some(1_234_567));
        assert_eq!(num_after(f, b"\"i\":"), Some(17));
        assert_eq!(num_after(f, b"\"x\":"), None);
        assert_eq!(num_after(br#"{"ts":"a"}"#, b"\"ts\":"), None);
    }
}
