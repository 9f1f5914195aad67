//! A listener's server: accepts connections and serves each in its dialect
//! until it is shut down, then closes every session gracefully.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{serve, ServeConfig, Served};
use crate::registry::Registry;
use crate::transport::{Address, Listener, TransportError};

/// How long the accept loop waits after a failed accept (typically the
/// process is out of file descriptors) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running server: connections on one listener, each served in the
/// dialect its peer speaks (see [`serve`](super::serve)).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use capwire::dialect::{Server, ServeConfig};
/// use capwire::transport::Listener;
/// let registry = capwire::Registry::new();
/// let listener = Listener::bind(&"tcp://127.0.0.1:7000".parse()?, Default::default()).await?;
/// let server = Server::start(listener, registry, ServeConfig::default());
/// capwire::dialect::shutdown_signal().await?; // SIGINT or SIGTERM
/// server.shutdown().await; // goaway to every session; calls in flight finish
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    local: Address,
    stop: CancellationToken,
    sessions: Arc<Mutex<Vec<Served>>>,
    accepting: JoinHandle<()>,
}

impl Server {
    /// Starts accepting on `listener`. Accept errors (a file descriptor
    /// limit, a reset connection) are logged and survived.
    pub fn start(listener: Listener, registry: Registry, config: ServeConfig) -> Server {
        let local = listener.local_addr().clone();
        let stop = CancellationToken::new();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let accepting = tokio::spawn(accept_loop(
            listener,
            registry,
            config,
            stop.clone(),
            sessions.clone(),
        ));
        Server {
            local,
            stop,
            sessions,
            accepting,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// Sessions being served now.
    pub fn sessions(&self) -> Vec<Served> {
        let mut sessions = lock(&self.sessions);
        sessions.retain(|s| !s.is_closed());
        sessions.clone()
    }

    /// Shuts down gracefully: stops accepting (the listener is closed),
    /// sends `goaway` to every session and lets its calls in flight finish
    /// within its `SessionConfig::close_grace`, and returns once every
    /// session has ended.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.accepting.await;
        let sessions = std::mem::take(&mut *lock(&self.sessions));
        let closing = sessions.iter().map(Served::close);
        futures_util::future::join_all(closing).await;
    }
}

/// Waits for what stops a long-running server: SIGINT (Ctrl-C) or, on
/// Unix, SIGTERM. Pair it with [`Server::shutdown`].
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn lock(sessions: &Mutex<Vec<Served>>) -> std::sync::MutexGuard<'_, Vec<Served>> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs a failed accept and waits a little before the next one, so that a
/// process out of file descriptors does not spin.
pub(super) async fn accept_failed(error: &TransportError) {
    tracing::warn!(%error, "accept failed; retrying");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Logs a connection that could not be served: a peer speaking another
/// protocol is worth a warning (its message says what arrived), a peer that
/// left before its first message is not.
pub(super) fn not_served(status: &capwire_proto::Status) {
    if status.reason == Some(capwire_proto::Reason::PROTOCOL_VIOLATION) {
        tracing::warn!(%status, "connection not served");
    } else {
        tracing::debug!(%status, "connection not served");
    }
}

async fn accept_loop(
    mut listener: Listener,
    registry: Registry,
    config: ServeConfig,
    stop: CancellationToken,
    sessions: Arc<Mutex<Vec<Served>>>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let t = match accepted {
            Ok(t) => t,
            Err(TransportError::Closed) => return,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        tracing::debug!(peer = ?t.attestation.peer_addr, "connection");
        let (registry, config, sessions, stop) = (
            registry.clone(),
            config.clone(),
            sessions.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            match serve(t, registry, config).await {
                Ok(served) => {
                    {
                        let mut list = lock(&sessions);
                        list.retain(|s| !s.is_closed());
                        list.push(served.clone());
                    }
                    // Accepted while the server was stopping: close it too.
                    if stop.is_cancelled() {
                        served.close().await;
                    }
                }
                Err(status) => not_served(&status),
            }
        });
    }
}
