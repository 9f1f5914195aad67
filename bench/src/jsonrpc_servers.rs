//! JSON-RPC servers under one client: jsonrpsee's WebSocket client drives
//! jsonrpsee's server and capwire's JSON-RPC dialect, each server in a child
//! process of its own (this binary's `serve-jsonrpc` command, one
//! current-thread runtime), so the server's CPU per call is measured alone
//! (the client's share, the same for both, is reported beside it).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;

use crate::measure::cpu_time;
use crate::net::Endpoint;
use crate::work::{payload, DEPTH};

/// The servers compared.
pub const SERVERS: [&str; 2] = ["jsonrpsee", "capwire-jsonrpc"];

/// One row: a server's throughput and CPU.
pub struct Row {
    /// The server.
    pub server: &'static str,
    /// Calls in flight.
    pub depth: usize,
    /// Calls per second.
    pub rate: f64,
    /// The server process's CPU per call.
    pub server_cpu: Duration,
    /// The client's (this process's) CPU per call.
    pub client_cpu: Duration,
}

/// In the child: serve `server` on 127.0.0.1, print `tcp ADDR`, serve until killed.
pub async fn serve(server: &str) -> anyhow::Result<()> {
    let ep = match server {
        "jsonrpsee" => {
            let (ep, handle) = crate::peers::jsonrpsee_server().await?;
            std::mem::forget(handle);
            ep
        }
        "capwire-jsonrpc" => {
            let (ep, server) = crate::peers::capwire_jsonrpc_server().await?;
            std::mem::forget(server);
            ep
        }
        other => anyhow::bail!("unknown JSON-RPC server {other}"),
    };
    match ep {
        Endpoint::Tcp(addr) => println!("tcp {addr}"),
        Endpoint::Unix(_) => anyhow::bail!("JSON-RPC servers run over TCP"),
    }
    std::future::pending::<()>().await;
    Ok(())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time of process `pid` (user + system), from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports them in clock ticks of 1/100 s (USER_HZ).
    Ok(Duration::from_millis(ticks * 10))
}

/// Drives `server` with `depth` calls in flight for `budget`.
pub async fn measure(server: &'static str, depth: usize, budget: Duration) -> anyhow::Result<Row> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve-jsonrpc", server])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let child = Server(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("tcp ")
        .with_context(|| format!("the {server} server said {line:?}"))?;
    let ep = Endpoint::Tcp(addr.parse()?);
    let client = crate::peers::jsonrpsee_client(&ep).await?;
    let method = match server {
        "jsonrpsee" => "echo",
        _ => "bench/echo",
    };
    let arg = payload();
    let call = || async {
        let _: String = client.request(method, rpc_params![arg.clone()]).await?;
        anyhow::Ok(())
    };
    let mut running = FuturesUnordered::new();
    for _ in 0..depth {
        running.push(call());
    }
    let warm = Instant::now();
    while warm.elapsed() < budget / 5 {
        if let Some(r) = running.next().await {
            r?;
            running.push(call());
        }
    }
    let (server0, client0, start) = (process_cpu(child.0.id())?, cpu_time(), Instant::now());
    let mut ops = 0u64;
    while start.elapsed() < budget {
        if let Some(r) = running.next().await {
            r?;
            ops += 1;
            running.push(call());
        }
    }
    let elapsed = start.elapsed();
    let server_cpu = process_cpu(child.0.id())?.saturating_sub(server0);
    let client_cpu = cpu_time().saturating_sub(client0);
    while let Some(r) = running.next().await {
        r?;
    }
    let per = |d: Duration| d / u32::try_from(ops.max(1)).unwrap_or(u32::MAX);
    Ok(Row {
        server,
        depth,
        rate: ops as f64 / elapsed.as_secs_f64(),
        server_cpu: per(server_cpu),
        client_cpu: per(client_cpu),
    })
}

/// The Markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "### JSON-RPC servers under jsonrpsee's WebSocket client (TCP; each server in its own process, one thread)\n\n\
         | server | in flight | calls/s | server CPU µs/call | client CPU µs/call | × jsonrpsee calls/s | × jsonrpsee server CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|o| o.server == "jsonrpsee" && o.depth == r.depth);
        let (rate, cpu) = match base {
            Some(b) => (
                format!("{:.2}×", r.rate / b.rate),
                format!(
                    "{:.2}×",
                    r.server_cpu.as_secs_f64() / b.server_cpu.as_secs_f64().max(1e-12)
                ),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} k | {:.1} | {:.1} | {rate} | {cpu} |",
            r.server,
            r.depth,
            r.rate / 1000.0,
            r.server_cpu.as_secs_f64() * 1e6,
            r.client_cpu.as_secs_f64() * 1e6,
        );
    }
    out.push('\n');
    out
}

/// Both servers at 1 and `DEPTH` calls in flight.
pub async fn all(budget: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    for depth in [1, DEPTH] {
        for server in SERVERS {
            eprintln!("jsonrpc: {server}, {depth} in flight");
            match measure(server, depth, budget).await {
                Ok(row) => rows.push(row),
                Err(e) => eprintln!("jsonrpc {server}: {e:#}"),
            }
        }
    }
    rows
}
