//! The connecting side of `http://`: each frame sent is one `POST` with
//! `Content-Type: application/json`, and each response body that is not
//! empty is a frame received. Up to 64 requests run concurrently, over a pool of
//! kept-alive connections (hyper's HTTP/1.1 client), so the order in which
//! the server sees them is not guaranteed, as with any HTTP client. A
//! request that fails (no connection, a status other than 200 or 204)
//! closes the transport with the reason, so whoever waits learns of it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{
    CloseReason, FrameReceiver, FrameSender, Outgoing, ReceiverInner, Transport, TransportConfig,
    TransportError,
};
use crate::attestation::{Attestation, TransportKind};

/// Idle connections kept for the next requests.
const POOL: usize = 8;

/// Requests in flight at once (each holds a connection): past it, frames
/// wait in the send queue.
const MAX_IN_FLIGHT: usize = 64;

struct Client {
    authority: String,
    /// `https://`: each connection is a TLS connection made with this.
    tls: Option<super::ClientTls>,
    /// `http` or `https`, for messages.
    scheme: &'static str,
    path: String,
    max_frame_bytes: usize,
    authorization: Option<HeaderValue>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Client {
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut s) = pooled else { break };
            // A connection the server closed meanwhile is dropped.
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| {
            format!(
                "cannot connect to {}://{}: {e}",
                self.scheme, self.authority
            )
        })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let mut att = Attestation::new(TransportKind::HttpJsonRpc);
                let stream = super::tls::connect(tcp, &self.authority, Some(tls), &mut att)
                    .await
                    .map_err(|e| e.to_string())?;
                self.handshake(stream).await
            }
            None => self.handshake(tcp).await,
        }
    }

    /// HTTP/1.1 on an open connection; its driver runs in its own task.
    async fn handshake<S>(&self, io: S) -> Result<SendRequest<Full<Bytes>>, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.authority))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP client connection ended");
            }
        });
        Ok(sender)
    }

    /// POSTs one frame; the response body, if any.
    async fn post(&self, frame: Bytes) -> Result<Option<Bytes>, String> {
        let mut sender = self.sender().await?;
        let mut req = Request::new(Full::new(frame));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self
            .path
            .parse()
            .map_err(|e| format!("bad request path {}: {e}", self.path))?;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            h.insert(header::HOST, host);
        }
        if let Some(auth) = &self.authorization {
            h.insert(header::AUTHORIZATION, auth.clone());
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request to {} failed: {e}", self.authority))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.max_frame_bytes)
            .collect()
            .await
            .map_err(|e| format!("HTTP response from {} not read: {e}", self.authority))?
            .to_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL {
            idle.push(sender);
        }
        drop(idle);
        match status {
            StatusCode::OK if body.is_empty() => Ok(None),
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NO_CONTENT => Ok(None),
            other => Err(format!(
                "{}://{}{} answered {other}: {}",
                self.scheme,
                self.authority,
                self.path,
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
        }
    }
}

/// A transport to an HTTP JSON-RPC endpoint (`https://` when `tls`).
pub(super) fn connect(
    authority: &str,
    path: &str,
    tls: bool,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let client_tls = match (tls, &config.tls_client) {
        (false, _) => None,
        (true, Some(t)) => Some(t.clone()),
        (true, None) => {
            Some(super::ClientTls::system().map_err(|e| TransportError::Tls(e.to_string()))?)
        }
    };
    let client = Arc::new(Client {
        authority: authority.to_owned(),
        tls: client_tls,
        scheme: if tls { "https" } else { "http" },
        path: path.to_owned(),
        max_frame_bytes: config.max_frame_bytes,
        authorization: config
            .bearer
            .as_ref()
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
        idle: Mutex::new(Vec::new()),
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(config.queue_frames.max(1));
    let (in_tx, in_rx) = mpsc::channel::<Outgoing>(config.queue_frames.max(1));
    let sender = FrameSender::new(out_tx, config.max_frame_bytes);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(out) = out_rx.recv().await {
            let frame = match out {
                Outgoing::Frame(f) => f,
                Outgoing::Close(reason) => {
                    let _ = in_tx.send(Outgoing::Close(reason)).await;
                    return;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, in_tx) = (client.clone(), in_tx.clone());
            tokio::spawn(async move {
                let posted = client.post(frame).await;
                drop(slot);
                match posted {
                    Ok(Some(body)) => {
                        let _ = in_tx.send(Outgoing::Frame(body)).await;
                    }
                    Ok(None) => {}
                    Err(why) => {
                        tracing::debug!(%why, "HTTP request failed");
                        let reason = CloseReason::new(CloseReason::PROTOCOL_ERROR, why);
                        let _ = in_tx.send(Outgoing::Close(reason)).await;
                    }
                }
            });
        }
    });
    let mut attestation = Attestation::new(TransportKind::HttpJsonRpc);
    attestation.peer_addr = Some(authority.to_owned());
    attestation.path = Some(path.to_owned());
    attestation.tls = tls;
    Ok(Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(in_rx), sender.clone()),
        sender,
        attestation,
    })
}
