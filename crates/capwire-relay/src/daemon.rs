//! The relay process: a WebSocket listener whose connections must present
//! the pairing token, the agent's supervisor, and one task that drives the
//! router with their events and carries out what it asks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use capwire::attestation::TransportKind;
use capwire::auth::Tokens;
use capwire::transport::{Address, CloseReason, FrameSender, Listener, Transport, TransportConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent::{self, AgentCommand, AgentEvent};
use crate::delivery::{self, Delivery, End};
use crate::discovery::{self, Discovery};
use crate::ids::ConnId;
use crate::ring::RingLimits;
use crate::router::{Output, Router, RouterConfig};

/// How to run a relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Where clients attach: a `ws://` (or `wss://`, with
    /// `transport.tls_server`) address. Default `ws://127.0.0.1:0/` (a free
    /// port; [`Relay::url`] tells which).
    pub listen: Address,
    /// The agent.
    pub agent: AgentCommand,
    /// The pairing token; a random 256-bit one when unset.
    pub token: Option<String>,
    /// Where to write the discovery file (pid, URL, token; mode 0600).
    /// None by default; the `capwire relay` command writes one.
    pub discovery: Option<PathBuf>,
    /// Start the agent again when it exits. Default false.
    pub restart: bool,
    /// The controller lease. Default off: every device drives.
    pub lease: bool,
    /// Frames each session's replay ring keeps. Default 4096.
    pub ring_frames: usize,
    /// Bytes each session's replay ring keeps. Default 8 MiB.
    pub ring_bytes: usize,
    /// Live sessions before the oldest idle, unviewed one is evicted. Default 16.
    pub max_sessions: usize,
    /// How long an agent request waits for a client that can answer it
    /// (none attached, or its client left) before the relay answers it
    /// (`cancelled` for a permission). Default 60 s.
    pub hold_timeout: Duration,
    /// Longest line the agent may write, and largest client message. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Frames queued toward one client's socket before its delivery waits.
    /// This bounds what a client that stops reading holds. Default 64.
    pub client_queue_frames: usize,
    /// Serve the browser page ([`crate::page`]) at `GET` of the listen
    /// path (`/`). Default true.
    pub page: bool,
    /// Transport settings (TLS for `wss://`).
    pub transport: TransportConfig,
}

impl RelayConfig {
    /// A relay for `agent` on a free loopback port.
    pub fn new(agent: AgentCommand) -> RelayConfig {
        RelayConfig {
            listen: Address::Ws {
                authority: "127.0.0.1:0".into(),
                path: "/".into(),
                tls: false,
            },
            agent,
            token: None,
            discovery: None,
            restart: false,
            lease: false,
            ring_frames: 4096,
            ring_bytes: 8 << 20,
            max_sessions: 16,
            hold_timeout: Duration::from_secs(60),
            max_frame_bytes: 16 << 20,
            client_queue_frames: 64,
            page: true,
            transport: TransportConfig::default(),
        }
    }
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The listen address is not a WebSocket address.
    #[error("the relay listens on ws:// or wss:// addresses, not {0}")]
    NotWebSocket(String),
    /// Binding failed.
    #[error(transparent)]
    Transport(#[from] capwire::transport::TransportError),
    /// The token or the discovery file could not be made.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running relay. Dropping it stops it (and the agent).
#[derive(Debug)]
pub struct Relay {
    url: String,
    token: String,
    discovery: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

enum Event {
    Agent(AgentEvent),
    Connected(ConnId, mpsc::Sender<Delivery>),
    Frame(ConnId, Bytes),
    Gone(ConnId),
}

impl Relay {
    /// Binds, writes the discovery file, starts the agent, and serves.
    pub async fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        if !matches!(config.listen, Address::Ws { .. }) {
            return Err(RelayError::NotWebSocket(config.listen.to_string()));
        }
        let token = match &config.token {
            Some(t) => t.clone(),
            None => discovery::new_token()?,
        };
        let mut transport = config.transport.clone();
        transport.max_frame_bytes = config.max_frame_bytes;
        transport.queue_frames = config.client_queue_frames.max(1);
        if config.page {
            if let Address::Ws { path, .. } = &config.listen {
                let path = if path.is_empty() { "/" } else { path.as_str() };
                transport.get_routes.push(crate::page::route(path));
            }
        }
        let listener = Listener::bind(&config.listen, transport).await?;
        let url = listener.local_addr().to_string();
        if let Some(path) = &config.discovery {
            let started_at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Discovery {
                pid: std::process::id(),
                url: url.clone(),
                token: token.clone(),
                agent: std::iter::once(config.agent.program.clone())
                    .chain(config.agent.args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
                started_at_ms,
            }
            .write(path)?;
        }
        let router = Router::new(RouterConfig {
            ring: RingLimits {
                frames: config.ring_frames.max(1),
                bytes: config.ring_bytes.max(1),
            },
            max_sessions: config.max_sessions,
            lease: config.lease,
            hold_timeout: config.hold_timeout,
            epoch: discovery::new_tag(),
        });
        let discovery_path = config.discovery.clone();
        let (stop, stopped) = oneshot::channel();
        let tokens = Tokens::new().with(&token, "paired");
        let task = tokio::spawn(run(config, listener, router, tokens, stopped));
        Ok(Relay {
            url,
            token,
            discovery: discovery_path,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The URL clients attach to (`ws://127.0.0.1:PORT/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pairing token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Stops the relay and the agent, and removes the discovery file.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(path) = self.discovery.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Serves until the task ends (a stop, or a failure to start the agent).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn run(
    config: RelayConfig,
    mut listener: Listener,
    mut router: Router,
    tokens: Tokens,
    mut stopped: oneshot::Receiver<()>,
) {
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let (agent_tx, mut agent_rx) = mpsc::channel::<AgentEvent>(1024);
    let discovery = config.discovery.clone();
    let supervisor = tokio::spawn(agent::supervise(
        config.agent.clone(),
        config.restart,
        config.max_frame_bytes,
        agent_tx,
    ));
    let mut agent: Option<FrameSender> = None;
    let mut clients: HashMap<ConnId, mpsc::Sender<Delivery>> = HashMap::new();
    let mut next_conn: ConnId = 0;
    let batch = config.client_queue_frames.max(1);
    loop {
        let deadline = router.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(t) => {
                    next_conn += 1;
                    tokio::spawn(connection(next_conn, t, tokens.clone(), events_tx.clone(), batch));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            ev = agent_rx.recv() => match ev {
                Some(ev) => Event::Agent(ev),
                // The supervisor is done (no restart): keep serving the
                // rings, with the agent reported gone.
                None => {
                    agent_rx = mpsc::channel(1).1;
                    continue;
                }
            },
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = sleep => {
                router.timeout(std::time::Instant::now());
                apply(&mut router, &mut clients, agent.as_ref());
                continue;
            }
        };
        let now = std::time::Instant::now();
        match event {
            Event::Agent(AgentEvent::Started(sender)) => {
                agent = Some(sender);
                router.agent_started(now);
            }
            Event::Agent(AgentEvent::Frame(f)) => router.agent_frame(&f, now),
            Event::Agent(AgentEvent::Exited(exit)) => {
                agent = None;
                router.agent_exited(exit, now);
            }
            Event::Agent(AgentEvent::Failed(why)) => {
                tracing::error!("{why}");
                agent = None;
            }
            Event::Connected(conn, tx) => {
                clients.insert(conn, tx);
                router.connected(conn);
            }
            Event::Frame(conn, f) => router.client_frame(conn, &f, now),
            Event::Gone(conn) => {
                clients.remove(&conn);
                router.disconnected(conn, now);
            }
        }
        apply(&mut router, &mut clients, agent.as_ref());
    }
    supervisor.abort();
    if let Some(path) = discovery {
        let _ = std::fs::remove_file(path);
    }
}

/// Carries out the router's outputs. Nothing here waits for a client.
fn apply(
    router: &mut Router,
    clients: &mut HashMap<ConnId, mpsc::Sender<Delivery>>,
    agent: Option<&FrameSender>,
) {
    for output in router.take_output() {
        match output {
            Output::Agent(bytes) => match agent {
                Some(a) => {
                    if a.send_now(bytes).is_err() {
                        tracing::warn!("the agent's stdin is closed; frame dropped");
                    }
                }
                None => tracing::warn!("no agent to send to; frame dropped"),
            },
            Output::Deliver(conn, d) => {
                let Some(tx) = clients.get(&conn) else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(d) {
                    // Thousands of answers it has not taken: let it go (its
                    // delivery task ends when the sender is dropped).
                    tracing::warn!(
                        conn,
                        "client too far behind on its own answers; disconnecting"
                    );
                    clients.remove(&conn);
                }
            }
        }
    }
}

/// One client: authentication, then its reader and its delivery, until
/// either ends.
async fn connection(
    conn: ConnId,
    mut transport: Transport,
    tokens: Tokens,
    events: mpsc::Sender<Event>,
    batch: usize,
) {
    let peer = transport.attestation.peer_addr.clone();
    if transport.attestation.transport != TransportKind::WebSocket {
        refuse(
            &transport.sender,
            -32600,
            "the relay serves WebSocket connections only",
        )
        .await;
        return;
    }
    if !transport.attestation.authenticate(&tokens) {
        tracing::info!(?peer, "connection without the pairing token refused");
        refuse(
            &transport.sender,
            -32000,
            "unauthenticated: present the pairing token (Authorization: Bearer, or ?token=)",
        )
        .await;
        return;
    }
    tracing::debug!(conn, ?peer, "client attached");
    let (tx, rx) = mpsc::channel(1024);
    if events.send(Event::Connected(conn, tx)).await.is_err() {
        return;
    }
    let sender = transport.sender.clone();
    let mut receiver = transport.receiver;
    let read = async {
        loop {
            match receiver.recv().await {
                Ok(Some(frame)) => {
                    if events.send(Event::Frame(conn, frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(conn, error = %e, "client connection failed");
                    return;
                }
            }
        }
    };
    tokio::select! {
        end = delivery::run(sender.clone(), rx, batch) => {
            if end == End::Released {
                tracing::warn!(conn, ?peer, "client disconnected by the relay");
            }
        }
        _ = read => {}
    }
    let _ = events.send(Event::Gone(conn)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.close(CloseReason::normal())).await;
}

async fn refuse(sender: &FrameSender, code: i64, message: &str) {
    let e = capwire::dialect::jsonrpc::ErrorObject::new(code, message);
    let _ = sender
        .send(crate::frame::error(&crate::frame::null(), &e))
        .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sender.close(CloseReason::new(1008, "unauthenticated")),
    )
    .await;
}
