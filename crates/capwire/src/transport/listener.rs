//! Accepting connections on TCP, Unix and WebSocket addresses.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{http, stream, tls, Address, Transport, TransportConfig, TransportError};
use crate::attestation::{Attestation, TransportKind};

/// A bound listening address.
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    local: Address,
    config: TransportConfig,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Connections are prepared in their own tasks (one slow client never
    /// blocks accept): hyper serves HTTP, whose upgrades and one-shot
    /// sessions arrive here, and TLS handshakes finish here.
    Spawned(mpsc::Receiver<Transport>, JoinHandle<()>),
}

impl Listener {
    /// Binds `addr`. Port 0 picks a free port; [`local_addr`](Self::local_addr)
    /// tells which. A stale Unix socket file (nobody listening) is replaced.
    ///
    /// `tls://`, `wss://` and `https://` need `config.tls_server`; other
    /// addresses ignore it.
    pub async fn bind(
        addr: &Address,
        mut config: TransportConfig,
    ) -> Result<Listener, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        };
        let wants_tls = matches!(
            addr,
            Address::Tls(_) | Address::Ws { tls: true, .. } | Address::Http { tls: true, .. }
        );
        if !wants_tls {
            config.tls_server = None;
        } else if config.tls_server.is_none() {
            return Err(TransportError::Tls(format!(
                "listening on {addr} needs a certificate and key (TransportConfig::tls_server; \
                 the capwire command takes --tls-cert and --tls-key)"
            )));
        }
        match addr {
            Address::Tcp(authority) => {
                let l = TcpListener::bind(authority.as_str())
                    .await
                    .map_err(bind_err)?;
                let local = Address::Tcp(l.local_addr().map_err(bind_err)?.to_string());
                Ok(Listener {
                    inner: Inner::Tcp(l),
                    local,
                    config,
                })
            }
            Address::Tls(authority) => {
                let l = TcpListener::bind(authority.as_str())
                    .await
                    .map_err(bind_err)?;
                let local = Address::Tls(l.local_addr().map_err(bind_err)?.to_string());
                let (tx, rx) = mpsc::channel(64);
                let task = tokio::spawn(tls_accept_loop(l, tx, config.clone()));
                Ok(Listener {
                    inner: Inner::Spawned(rx, task),
                    local,
                    config,
                })
            }
            Address::Unix(path) => {
                let l = match UnixListener::bind(path) {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        if UnixStream::connect(path).await.is_ok() {
                            return Err(bind_err(e));
                        }
                        std::fs::remove_file(path).map_err(bind_err)?;
                        UnixListener::bind(path).map_err(bind_err)?
                    }
                    Err(e) => return Err(bind_err(e)),
                };
                Ok(Listener {
                    inner: Inner::Unix(l, path.clone()),
                    local: addr.clone(),
                    config,
                })
            }
            Address::Ws {
                authority,
                path,
                tls,
            }
            | Address::Http {
                authority,
                path,
                tls,
            } => {
                let l = TcpListener::bind(authority.as_str())
                    .await
                    .map_err(bind_err)?;
                let bound = l.local_addr().map_err(bind_err)?.to_string();
                let local = match addr {
                    Address::Http { .. } => Address::Http {
                        authority: bound,
                        path: path.clone(),
                        tls: *tls,
                    },
                    _ => Address::Ws {
                        authority: bound,
                        path: path.clone(),
                        tls: *tls,
                    },
                };
                let (tx, rx) = mpsc::channel(64);
                let task = tokio::spawn(ws_accept_loop(l, tx, config.clone()));
                Ok(Listener {
                    inner: Inner::Spawned(rx, task),
                    local,
                    config,
                })
            }
            Address::Stdio | Address::Exec { .. } => Err(TransportError::Unsupported(format!(
                "cannot listen on {addr}: use transport::connect for stdio and exec"
            ))),
        }
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// Waits for the next connection.
    pub async fn accept(&mut self) -> Result<Transport, TransportError> {
        match &mut self.inner {
            Inner::Tcp(l) => {
                let (s, _) = l.accept().await?;
                Ok(stream::tcp_transport(s, &self.config))
            }
            Inner::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok(stream::unix_transport(s, &self.config))
            }
            Inner::Spawned(rx, _) => rx.recv().await.ok_or(TransportError::Closed),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Unix(_, path) => {
                let _ = std::fs::remove_file(path);
            }
            Inner::Spawned(_, task) => task.abort(),
            Inner::Tcp(_) => {}
        }
    }
}

async fn ws_accept_loop(l: TcpListener, tx: mpsc::Sender<Transport>, config: TransportConfig) {
    loop {
        let tcp = match l.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "websocket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        // One task per connection: hyper serves its requests (keep-alive),
        // each upgrade or session-making POST is handed to `accept`.
        tokio::spawn(http::serve_connection(tcp, tx.clone(), config.clone()));
    }
}

/// Accepts TCP connections and hands each to `accept` once its TLS
/// handshake is done; a handshake that fails is logged and forgotten.
async fn tls_accept_loop(l: TcpListener, tx: mpsc::Sender<Transport>, config: TransportConfig) {
    let Some(server) = config.tls_server.clone() else {
        return;
    };
    loop {
        let tcp = match l.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (tx, config, server) = (tx.clone(), config.clone(), server.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut att = Attestation::new(TransportKind::Tcp);
            att.peer_addr = tcp.peer_addr().ok().map(|a| a.to_string());
            match tls::accept(tcp, &server, &mut att, "tls://").await {
                Ok(stream) => {
                    let (r, w) = tokio::io::split(stream);
                    let _ = tx.send(stream::stream_transport(r, w, att, &config)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, peer = ?att.peer_addr, "TLS connection refused")
                }
            }
        });
    }
}
