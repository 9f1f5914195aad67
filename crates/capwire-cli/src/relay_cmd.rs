//! `capwire relay`: spawns a stdio JSON-RPC agent (ACP first) and serves it
//! to many WebSocket clients that present the pairing token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use capwire_relay::{AgentCommand, Relay, RelayConfig};
use clap::Args;

/// The arguments of `capwire relay`.
#[derive(Args)]
pub(crate) struct RelayArgs {
    /// Where clients attach (ws://, or wss:// with --tls-cert/--tls-key).
    #[arg(long, default_value = "ws://127.0.0.1:7300/")]
    listen: String,
    /// The pairing token; by default $CAPWIRE_RELAY_TOKEN, else a random one.
    #[arg(long)]
    token: Option<String>,
    /// Start the agent again when it exits.
    #[arg(long)]
    restart: bool,
    /// Turn the controller lease on: one device drives, the others watch.
    #[arg(long)]
    lease: bool,
    /// The discovery file (pid, URL, token; mode 0600); by default
    /// $CAPWIRE_RELAY_DISCOVERY, else ~/.local/state/capwire/relay.json.
    #[arg(long)]
    discovery: Option<PathBuf>,
    /// Write no discovery file.
    #[arg(long, conflicts_with = "discovery")]
    no_discovery: bool,
    /// Frames each session's replay ring keeps.
    #[arg(long, default_value_t = 4096)]
    ring_frames: usize,
    /// Live sessions before the oldest idle, unviewed one is evicted.
    #[arg(long, default_value_t = 16)]
    max_sessions: usize,
    /// How long an agent request waits for a client able to answer, in ms.
    #[arg(long, default_value_t = 60_000)]
    hold_ms: u64,
    /// The agent's working directory.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Do not serve the browser page at `GET /`.
    #[arg(long)]
    no_page: bool,
    #[command(flatten)]
    tls: crate::tls::ServerTlsArgs,
    /// The agent's command line, after `--`.
    #[arg(last = true, required = true, value_name = "AGENT_CMD")]
    agent: Vec<String>,
}

pub(crate) async fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.agent.split_first() else {
        anyhow::bail!("name the agent after `--`: capwire relay -- AGENT_CMD ARGS…");
    };
    let mut agent = AgentCommand::new(program.clone(), rest.iter().cloned());
    if let Some(cwd) = args.cwd {
        agent = agent.cwd(cwd);
    }
    let mut config = RelayConfig::new(agent);
    config.listen = args.listen.parse()?;
    config.token = args.token.or_else(|| {
        std::env::var("CAPWIRE_RELAY_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    config.restart = args.restart;
    config.lease = args.lease;
    config.ring_frames = args.ring_frames;
    config.max_sessions = args.max_sessions;
    config.hold_timeout = Duration::from_millis(args.hold_ms);
    config.page = !args.no_page;
    config.transport = args.tls.apply(config.transport)?;
    if !args.no_discovery {
        config.discovery = Some(args.discovery.unwrap_or_else(default_discovery));
    }
    let discovery = config.discovery.clone();
    let relay = Relay::start(config)
        .await
        .context("cannot start the relay")?;
    println!(
        "capwire relay: serving `{}` on {}",
        args.agent.join(" "),
        relay.url()
    );
    println!("pairing token: {}", relay.token());
    println!("attach: {}?token={}", relay.url(), relay.token());
    if !args.no_page {
        // The token goes in the fragment: browsers do not send it to the server.
        let page = relay
            .url()
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1);
        println!("page: {page}#token={}", relay.token());
    }
    if let Some(path) = discovery {
        println!("discovery file: {}", path.display());
    }
    capwire::dialect::shutdown_signal().await?;
    relay.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn default_discovery() -> PathBuf {
    if let Some(p) = std::env::var_os("CAPWIRE_RELAY_DISCOVERY") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/capwire/relay.json")
}
