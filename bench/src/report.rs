//! Markdown tables: absolute figures and ratios to the floor and the best peer.

use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::Sample;
use crate::work::Work;

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Row {
    /// The workload.
    pub work: Work,
    /// `floor`, `capwire (msgpack)`, `tarpc`, …
    pub peer: String,
    /// `unix` or `tcp`.
    pub net: &'static str,
    /// `current-thread` or `multi-thread`.
    pub runtime: &'static str,
    /// What was measured.
    pub sample: Sample,
}

/// Peers that are ours or the floor, not compared as "best peer".
fn is_ours(peer: &str) -> bool {
    peer == "floor" || peer.starts_with("capwire")
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// The figure a workload is judged by: p50 latency (lower is better) or
/// rate (higher is better).
fn figure(work: Work, s: &Sample) -> f64 {
    if work.is_latency() {
        s.quantile(0.5).as_secs_f64()
    } else {
        s.rate()
    }
}

/// One table per workload, rows grouped by runtime and transport.
pub fn tables(rows: &[Row], works: &[Work]) -> String {
    let mut out = String::new();
    for &work in works {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.work == work).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {}\n", work.title());
        let chain = matches!(work, Work::Chain | Work::ChainDelayed);
        let base_name = if chain { "× one call" } else { "× floor" };
        if work.is_latency() {
            let _ = writeln!(
                out,
                "| runtime | transport | peer | p50 µs | p99 µs | mean µs | calls/s | CPU µs/call | {base_name} | × best peer |"
            );
            let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        } else {
            let unit = if matches!(work, Work::Stream(_)) {
                "items/s"
            } else {
                "calls/s"
            };
            let _ = writeln!(
                out,
                "| runtime | transport | peer | {unit} | MB/s | CPU µs/op | × floor | × best peer |"
            );
            let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|");
        }
        for r in &mine {
            let same = |w: Work, peer: Option<&str>| {
                rows.iter()
                    .filter(|o| o.work == w && o.net == r.net && o.runtime == r.runtime)
                    .filter(|o| peer.is_none_or(|p| o.peer == p))
                    .map(|o| figure(w, &o.sample))
                    .collect::<Vec<f64>>()
            };
            let value = figure(work, &r.sample);
            let base = if chain {
                let one = if work == Work::Chain {
                    Work::Unary
                } else {
                    Work::UnaryDelayed
                };
                same(one, Some(&r.peer)).first().copied()
            } else {
                same(work, Some("floor")).first().copied()
            };
            let peers: Vec<f64> = rows
                .iter()
                .filter(|o| o.work == work && o.net == r.net && o.runtime == r.runtime)
                .filter(|o| !is_ours(&o.peer))
                .map(|o| figure(work, &o.sample))
                .collect();
            let best = if work.is_latency() {
                peers.iter().copied().reduce(f64::min)
            } else {
                peers.iter().copied().reduce(f64::max)
            };
            let s = &r.sample;
            if work.is_latency() {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.runtime,
                    r.net,
                    r.peer,
                    us(s.quantile(0.5)),
                    us(s.quantile(0.99)),
                    us(s.mean()),
                    rate(s.rate()),
                    us(s.cpu_per_op()),
                    ratio(value, base),
                    ratio(value, best),
                );
            } else {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                    r.runtime,
                    r.net,
                    r.peer,
                    rate(s.rate()),
                    s.byte_rate() / 1e6,
                    us(s.cpu_per_op()),
                    ratio(value, base),
                    ratio(value, best),
                );
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// Resident memory per idle connection, measured in the server's process.
#[derive(Debug, Clone)]
pub struct IdleRow {
    /// The peer.
    pub peer: String,
    /// Connections held open.
    pub connections: usize,
    /// Growth of the server's resident set, in bytes, per connection.
    pub per_connection: f64,
}

/// The idle-connection table.
pub fn idle_table(rows: &[IdleRow]) -> String {
    let mut out = String::from(
        "### Idle connections (Unix socket; TCP for jsonrpsee), resident memory of the server process\n\n\
         | peer | connections | KiB per connection | × floor |\n|---|---:|---:|---:|\n",
    );
    for r in rows {
        let floor = rows
            .iter()
            .find(|o| o.peer == "floor" && o.connections == r.connections)
            .map(|o| o.per_connection);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} |",
            r.peer,
            r.connections,
            r.per_connection / 1024.0,
            ratio(r.per_connection, floor)
        );
    }
    out.push('\n');
    out
}
