//! The daemon's connections. Each lasting connection (a Unix socket, a
//! WebSocket) is served with a service of its own that knows it, so that
//! the broker sees the connection end: the endpoints it registered become
//! reconnecting even if they never opened `receive`. One-request HTTP
//! connections share one service without a connection; their endpoints live
//! on heartbeats.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::attestation::TransportKind;
use capwire::dialect::{serve, ServeConfig, Served};
use capwire::transport::{Listener, TransportError};
use capwire::{Registry, ServeHandle, Status};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::service::Service;

/// How long the accept loop waits after a failed accept (typically out of
/// file descriptors) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One listener's connections, served until [`shutdown`](Listening::shutdown).
#[derive(Debug)]
pub(crate) struct Listening {
    stop: watch::Sender<bool>,
    sessions: Arc<Mutex<Vec<Served>>>,
    accepting: JoinHandle<()>,
    /// Ends (`None`) once the accept loop and every connection's task have.
    finished: mpsc::Receiver<()>,
}

impl Listening {
    /// Starts accepting on `listener`.
    pub(crate) fn start(
        listener: Listener,
        broker: Broker,
        config: ServeConfig,
    ) -> Result<Listening, Status> {
        // One-request connections share one registry (and no connection).
        let shared = Registry::new();
        let handles = Service::new(broker.clone()).serve(&shared)?;
        let (stop, stopped) = watch::channel(false);
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let (running, finished) = mpsc::channel(1);
        let accepting = tokio::spawn(accept_loop(
            listener,
            broker,
            Shared {
                registry: shared,
                _handles: handles,
            },
            config,
            stopped,
            sessions.clone(),
            running,
        ));
        Ok(Listening {
            stop,
            sessions,
            accepting,
            finished,
        })
    }

    /// Stops accepting, closes every session gracefully (calls in flight
    /// finish within the session's close grace) and returns once all ended
    /// and the broker has been told.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = self.accepting.await;
        let sessions = std::mem::take(&mut *lock(&self.sessions));
        futures_util::future::join_all(sessions.iter().map(Served::close)).await;
        while self.finished.recv().await.is_some() {}
    }
}

/// The registry one-request connections share, and what keeps it served.
struct Shared {
    registry: Registry,
    _handles: Vec<ServeHandle>,
}

fn lock(sessions: &Mutex<Vec<Served>>) -> std::sync::MutexGuard<'_, Vec<Served>> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}

/// True for transports that carry one request and end: they are no
/// plugin's connection.
fn one_request(kind: TransportKind) -> bool {
    matches!(kind, TransportKind::HttpJsonRpc | TransportKind::HttpBatch)
}

async fn accept_loop(
    mut listener: Listener,
    broker: Broker,
    shared: Shared,
    config: ServeConfig,
    mut stopped: watch::Receiver<bool>,
    sessions: Arc<Mutex<Vec<Served>>>,
    running: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let transport = match accepted {
            Ok(t) => t,
            Err(TransportError::Closed) => return,
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (connection, registry, handles) = if one_request(transport.attestation.transport) {
            (None, shared.registry.clone(), Vec::new())
        } else {
            let connection = broker.open_connection();
            let registry = Registry::new();
            let service = Service::on_connection(broker.clone(), connection.id());
            match service.serve(&registry) {
                Ok(handles) => (Some(connection), registry, handles),
                Err(status) => {
                    tracing::error!(%status, "cannot serve a connection");
                    continue;
                }
            }
        };
        let (config, sessions, stopped) = (config.clone(), sessions.clone(), stopped.clone());
        let running = running.clone();
        tokio::spawn(async move {
            let _running = running;
            let served = match serve(transport, registry, config).await {
                Ok(served) => served,
                Err(status) => {
                    tracing::debug!(%status, "connection not served");
                    return;
                }
            };
            {
                let mut list = lock(&sessions);
                list.retain(|s| !s.is_closed());
                list.push(served.clone());
            }
            // Accepted while the daemon was stopping: close it too.
            if *stopped.borrow() {
                served.close().await;
            }
            closed(&served).await;
            // The connection ended: the endpoints it held are lost.
            drop(handles);
            drop(connection);
        });
    }
}

/// Resolves when the session has ended.
async fn closed(served: &Served) {
    match served {
        Served::Native(s) => {
            s.closed().await;
        }
        Served::Capnweb(s) => {
            s.closed().await;
        }
        Served::JsonRpc(s) => s.closed().await,
    }
}
