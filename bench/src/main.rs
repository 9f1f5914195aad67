//! `capwire-bench`: capwire against the raw-socket floor and peer RPC
//! libraries, side by side in one run, on both tokio runtimes.
//!
//! ```text
//! cargo run --release -p capwire-bench -- --quick        # under a minute
//! cargo run --release -p capwire-bench -- --out docs/benchmarks.md
//! cargo run --release -p capwire-bench -- relay          # the relay (issue 17)
//! cargo run --release -p capwire-bench -- broker         # the broker (issue 16)
//! ```

/// Code generated from `proto/bench.capnp` (for the capnp-rpc peer).
#[allow(missing_docs, clippy::all, unused)]
mod bench_capnp {
    include!(concat!(env!("OUT_DIR"), "/bench_capnp.rs"));
}
mod broker;
mod capwire_peer;
mod floor;
mod idle;
mod jsonrpc_servers;
mod measure;
mod net;
mod peers;
mod relay;
mod report;
mod work;

use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use capwire::proto::Codec;
use net::Net;
use report::Row;
use work::{Opts, Work, LARGE_ITEM, SMALL_ITEM};

#[derive(Parser, Debug)]
#[command(about = "capwire vs the raw-socket floor and peer RPC libraries")]
struct Args {
    /// Short runs, for smoke checks (under a minute).
    #[arg(long)]
    quick: bool,
    /// Only these peers (comma-separated: floor, capwire-msgpack, capwire-json, tarpc, …).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these workloads (unary, inflight, chain, unary-delayed,
    /// chain-delayed, stream16, stream64k).
    #[arg(long, value_delimiter = ',')]
    work: Vec<String>,
    /// Only this runtime (current-thread or multi-thread).
    #[arg(long)]
    runtime: Option<String>,
    /// Only this transport (unix or tcp).
    #[arg(long)]
    net: Option<String>,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Idle connections to hold (default 1000 and 10000; 200 with --quick).
    #[arg(long, value_delimiter = ',')]
    idle: Vec<usize>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// (internal) Serve one peer for the idle-connection measurement.
    ServeIdle {
        /// The peer.
        peer: String,
    },
    /// (internal) Serve one JSON-RPC server for the JSON-RPC comparison.
    ServeJsonrpc {
        /// The server.
        server: String,
    },
    /// The relay (issue 17): one agent fanned out to 1, 10, 100 WebSocket clients.
    Relay(relay::Args),
    /// The broker: durable sends/s and send→ack latency against a daemon,
    /// next to the store's own ceiling.
    Broker(broker::Args),
    /// (internal) Run a broker daemon on a data directory until killed.
    ServeBroker {
        /// The data directory.
        dir: std::path::PathBuf,
    },
}

const WORKS: [Work; 7] = [
    Work::Unary,
    Work::InFlight,
    Work::Chain,
    Work::UnaryDelayed,
    Work::ChainDelayed,
    Work::Stream(SMALL_ITEM),
    Work::Stream(LARGE_ITEM),
];

fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

/// Runs of the 64 KiB stream per peer, the best kept: one run moves a few
/// hundred megabytes in a fraction of a second, short enough for one
/// scheduling hiccup on a shared machine to halve it (the floor included).
const LARGE_STREAM_RUNS: usize = 3;

async fn run_one(
    peer: &str,
    work: Work,
    net: Net,
    opts: &Opts,
) -> anyhow::Result<Option<measure::Sample>> {
    if !matches!(work, Work::Stream(n) if n >= 1024) {
        return run_once(peer, work, net, opts).await;
    }
    let mut best: Option<measure::Sample> = None;
    for _ in 0..LARGE_STREAM_RUNS {
        if let Some(sample) = run_once(peer, work, net, opts).await? {
            if best
                .as_ref()
                .is_none_or(|b| sample.byte_rate() > b.byte_rate())
            {
                best = Some(sample);
            }
        }
    }
    Ok(best)
}

async fn run_once(
    peer: &str,
    work: Work,
    net: Net,
    opts: &Opts,
) -> anyhow::Result<Option<measure::Sample>> {
    match peer {
        "floor" => floor::run(work, net, opts).await,
        "capwire-msgpack" => capwire_peer::run(work, net, Codec::Msgpack, opts).await,
        "capwire-json" => capwire_peer::run(work, net, Codec::Json, opts).await,
        other => peers::run(other, work, net, opts).await,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("- date: {date}\n- nproc: {nproc}\n- CPU: {cpu}\n")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Cmd::ServeIdle { peer }) => return runtime(false)?.block_on(idle::serve(peer)),
        Some(Cmd::ServeJsonrpc { server }) => {
            return runtime(false)?.block_on(jsonrpc_servers::serve(server))
        }
        Some(Cmd::Relay(_)) => {
            if let Some(Cmd::Relay(a)) = args.command {
                return relay::main(a);
            }
        }
        Some(Cmd::Broker(args)) => return runtime(false)?.block_on(broker::run(args)).map(drop),
        Some(Cmd::ServeBroker { dir }) => return runtime(false)?.block_on(broker::serve(dir)),
        None => {}
    }
    let opts = if args.quick {
        Opts {
            budget: Duration::from_millis(150),
            small_items: 50_000,
            large_items: 1_000,
        }
    } else {
        Opts {
            budget: Duration::from_millis(1500),
            small_items: 1_000_000,
            large_items: 10_000,
        }
    };
    let mut all: Vec<String> = ["floor", "capwire-msgpack", "capwire-json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(peers::PEERS.iter().map(|s| s.to_string()));
    let chosen: Vec<String> = if args.only.is_empty() {
        all
    } else {
        all.into_iter().filter(|p| args.only.contains(p)).collect()
    };
    let idle_counts = if !args.idle.is_empty() {
        args.idle.clone()
    } else if args.quick {
        vec![200]
    } else {
        vec![1000, 10_000]
    };

    let works: Vec<Work> = WORKS
        .into_iter()
        .filter(|w| args.work.is_empty() || args.work.iter().any(|n| n == w.name()))
        .collect();
    let runtimes: Vec<(bool, &str)> = [(false, "current-thread"), (true, "multi-thread")]
        .into_iter()
        .filter(|(_, n)| args.runtime.as_deref().is_none_or(|r| r == *n))
        .collect();
    let nets: Vec<Net> = [Net::Unix, Net::Tcp]
        .into_iter()
        .filter(|n| args.net.as_deref().is_none_or(|r| r == n.name()))
        .collect();
    let runs = runtimes.len() * nets.len() * works.len() * chosen.len();
    let bar = ProgressBar::new(runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for &(multi, rt_name) in &runtimes {
        let rt = runtime(multi)?;
        for &net in &nets {
            for &work in &works {
                for peer in &chosen {
                    bar.set_message(format!("{rt_name} {} {peer}: {}", net.name(), work.title()));
                    let sample = rt.block_on(run_one(peer, work, net, &opts));
                    match sample {
                        Ok(Some(sample)) => rows.push(Row {
                            work,
                            peer: peer.clone(),
                            net: net.name(),
                            runtime: rt_name,
                            sample,
                        }),
                        Ok(None) => {}
                        Err(e) => bar.println(format!("{peer} {}: {e:#}", work.title())),
                    }
                    bar.inc(1);
                }
            }
        }
        rt.shutdown_timeout(Duration::from_millis(100));
    }
    bar.finish_and_clear();

    let rt = runtime(true)?;
    let mut idle_rows = Vec::new();
    for &n in idle_counts.iter().filter(|n| **n > 0) {
        for peer in &chosen {
            let name = match peer.as_str() {
                "capwire-msgpack" => "capwire",
                // capwire-json and capwire-jsonrpc are the same server;
                // capnp-rpc's handles are `!Send`.
                "capwire-json" | "capwire-jsonrpc" | "capnp-rpc" => continue,
                p => p,
            };
            eprintln!("idle: {n} connections to {name}");
            match rt.block_on(idle::measure(name, n)) {
                Ok(row) => idle_rows.push(row),
                Err(e) => eprintln!("idle {name} {n}: {e:#}"),
            }
        }
    }

    // The JSON-RPC servers, when both JSON-RPC peers are chosen.
    let jsonrpc_rows = if ["jsonrpsee", "capwire-jsonrpc"]
        .iter()
        .all(|p| chosen.iter().any(|c| c == p))
    {
        runtime(false)?.block_on(jsonrpc_servers::all(opts.budget))
    } else {
        Vec::new()
    };

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut doc = format!(
        "## Run\n\n- command: `{command}`\n{}- peers: {}\n- client and server share one process and one runtime (current-thread: one thread for both; multi-thread: 2 workers); CPU is the whole process's\n\n",
        machine(),
        chosen.join(", ")
    );
    doc.push_str(&report::tables(&rows, &WORKS));
    doc.push_str(&report::idle_table(&idle_rows));
    if !jsonrpc_rows.is_empty() {
        doc.push_str(&jsonrpc_servers::table(&jsonrpc_rows));
    }
    print!("{doc}");
    if let Some(path) = args.out {
        std::fs::write(path, &doc)?;
    }
    Ok(())
}
