//! The daemon: the store in a data directory, a Unix socket and a loopback
//! WebSocket/HTTP port (every dialect on each), one bearer token, the
//! discovery file, and a graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capwire::dialect::ServeConfig;
use capwire::transport::{Address, Listener, TransportConfig};
use capwire::Status;

use crate::admin_http::AdminHttp;
use crate::broker::{now_ms, Broker, Limits};
use crate::connections::Listening;
use crate::discovery::{self, Discovery, Existing};
use crate::spawn::{CommandDriver, SpawnDriver as _};
use crate::store::{RedbStore, Store, StoreError};

/// The store's file name in the data directory.
pub const STORE_FILE: &str = "broker.redb";
/// The Unix socket's file name in the data directory.
pub const SOCKET_FILE: &str = "broker.sock";

/// How the daemon runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// Where the store, the socket and the discovery file live. Default
    /// [`default_data_dir`].
    pub data_dir: PathBuf,
    /// The WebSocket/HTTP listener. Default `ws://127.0.0.1:0/` (a free
    /// loopback port, written to the discovery file).
    pub listen: String,
    /// The bearer token; a new random one per start by default.
    pub token: Option<String>,
    /// Where the admin HTTP API (plain `GET`s, JSON) binds, `HOST:PORT`;
    /// `None` runs none. Default `127.0.0.1:0` (a free loopback port,
    /// written to the discovery file).
    pub admin_listen: Option<String>,
    /// Bounds and timers.
    pub limits: Limits,
    /// Spawn drivers that run a command, one per runtime kind (the
    /// `--spawn KIND=COMMAND` option). Default none.
    pub spawn: Vec<CommandDriver>,
}

impl DaemonConfig {
    /// The defaults, with the store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> DaemonConfig {
        DaemonConfig {
            data_dir: data_dir.into(),
            listen: "ws://127.0.0.1:0/".into(),
            token: None,
            admin_listen: Some("127.0.0.1:0".into()),
            limits: Limits::default(),
            spawn: Vec::new(),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> DaemonConfig {
        DaemonConfig::new(default_data_dir())
    }
}

/// `$CAPWIRE_BROKER_DIR`, else `$XDG_DATA_HOME/capwire/broker`, else
/// `~/.local/share/capwire/broker`, else `./capwire-broker`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPWIRE_BROKER_DIR") {
        return dir.into();
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&xdg).join("capwire/broker");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Path::new(&home).join(".local/share/capwire/broker");
    }
    PathBuf::from("capwire-broker")
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another broker runs on this data directory.
    #[error("a broker (pid {0}) already runs on this data directory")]
    AlreadyRunning(u32),
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// Where.
        address: String,
        /// The error.
        source: capwire::transport::TransportError,
    },
    /// The broker refused to start.
    #[error(transparent)]
    Status(#[from] Status),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    broker: Broker,
    listening: Vec<Listening>,
    admin: Option<AdminHttp>,
    discovery: Discovery,
    data_dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon: opens (and recovers) the store, binds both
    /// listeners, then writes the discovery file.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        match discovery::existing(&dir) {
            Existing::Live(pid) => return Err(DaemonError::AlreadyRunning(pid)),
            Existing::Stale => tracing::warn!("replacing a stale discovery file"),
            Existing::None => {}
        }
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join(STORE_FILE))?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::Permissions::from_mode(0o600);
            let _ = std::fs::set_permissions(dir.join(STORE_FILE), mode);
        }
        let broker = Broker::open(store, config.limits.clone())?;
        for driver in &config.spawn {
            tracing::info!(kind = driver.kind(), "spawn driver");
            broker.add_spawn_driver(Arc::new(driver.clone()));
        }
        let token = match config.token {
            Some(t) => t,
            None => discovery::new_token().map_err(io("cannot make a token"))?,
        };
        let tokens = capwire::auth::Tokens::new().with(&token, "plugin");
        let admin = match &config.admin_listen {
            Some(addr) => Some(
                AdminHttp::start(addr, broker.clone(), tokens.clone())
                    .await
                    .map_err(io(format!("cannot listen on {addr} (admin HTTP)")))?,
            ),
            None => None,
        };
        let mut serve = ServeConfig::default();
        serve.tokens = Some(tokens);
        serve.capnweb_main = Some("capwire.broker".into());

        let socket = dir.join(SOCKET_FILE);
        // No live broker owns it (checked above): a leftover socket file.
        let _ = std::fs::remove_file(&socket);
        let unix_addr = Address::Unix(socket.clone());
        let unix = Listener::bind(&unix_addr, TransportConfig::default())
            .await
            .map_err(|source| DaemonError::Listen {
                address: unix_addr.to_string(),
                source,
            })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
        }
        let ws_addr: Address = config
            .listen
            .parse()
            .map_err(|source| DaemonError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let ws = Listener::bind(&ws_addr, TransportConfig::default())
            .await
            .map_err(|source| DaemonError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let ws_local = ws.local_addr().clone();
        let (ws_url, http_url) = match &ws_local {
            Address::Ws {
                authority, path, ..
            }
            | Address::Http {
                authority, path, ..
            } => (
                format!("ws://{authority}{path}"),
                format!("http://{authority}{path}"),
            ),
            other => (other.to_string(), other.to_string()),
        };
        let listening = vec![
            Listening::start(unix, broker.clone(), serve.clone())?,
            Listening::start(ws, broker.clone(), serve)?,
        ];
        let discovery = Discovery {
            pid: std::process::id(),
            unix: unix_addr.to_string(),
            ws: ws_url,
            http: http_url,
            admin: admin.as_ref().map(AdminHttp::url),
            token,
            started_at_ms: now_ms(),
        };
        discovery
            .write(&dir)
            .map_err(io("cannot write the discovery file"))?;
        tracing::info!(unix = %discovery.unix, ws = %discovery.ws, "broker listening");
        Ok(Daemon {
            broker,
            listening,
            admin,
            discovery,
            data_dir: dir,
            socket,
        })
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Where it listens and its token.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Shuts down gracefully: stops accepting, lets calls in flight finish
    /// (each send is acknowledged or refused), closes the store cleanly,
    /// and removes the socket and the discovery file.
    pub async fn shutdown(self) {
        self.broker.stop();
        futures_util::future::join_all(self.listening.into_iter().map(Listening::shutdown)).await;
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        self.broker.close().await;
        let _ = std::fs::remove_file(&self.socket);
        // Only our own file: another broker may have replaced a stale one.
        if Discovery::read(&self.data_dir).is_ok_and(|d| d.pid == self.discovery.pid) {
            let _ = std::fs::remove_file(self.data_dir.join(discovery::FILE_NAME));
        }
    }
}

/// Runs a daemon until SIGINT or SIGTERM, printing where it listens.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let daemon = Daemon::start(config).await?;
    let d = daemon.discovery();
    println!("capwire broker (pid {}) ready", d.pid);
    println!("  unix socket: {}", d.unix);
    println!("  websocket:   {}", d.ws);
    println!("  http:        {}", d.http);
    if let Some(admin) = &d.admin {
        println!("  admin:       {admin}");
    }
    println!(
        "  discovery:   {}",
        daemon.data_dir().join(discovery::FILE_NAME).display()
    );
    capwire::dialect::shutdown_signal()
        .await
        .map_err(io("cannot wait for signals"))?;
    eprintln!("capwire broker: shutting down");
    daemon.shutdown().await;
    Ok(())
}
