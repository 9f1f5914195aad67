//! Plain HTTP `GET`s for operators: `/admin/status`, `/admin/endpoints`,
//! `/admin/inbox`, answered with JSON, behind the daemon's bearer token.
//!
//! They have a loopback port of their own: capwire's HTTP listener (the
//! WebSocket port) serves WebSocket upgrades and `POST`s and answers every
//! other request with `405`, and has no hook for routes of an application.
//! The JSON-RPC admin interface (`capwire.broker.admin`) stays on both
//! listeners; this is the same information for `curl` and dashboards.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capwire::auth::Tokens;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::Broker;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin HTTP listener.
#[derive(Debug)]
pub(crate) struct AdminHttp {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl AdminHttp {
    /// Binds `addr` (`HOST:PORT`; port 0 picks one) and serves.
    pub(crate) async fn start(
        addr: &str,
        broker: Broker,
        tokens: Tokens,
    ) -> std::io::Result<AdminHttp> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let accepting = tokio::spawn(accept_loop(listener, broker, tokens, stopped));
        Ok(AdminHttp {
            local,
            stop,
            accepting,
        })
    }

    /// Its base URL (`http://HOST:PORT/admin/`).
    pub(crate) fn url(&self) -> String {
        format!("http://{}/admin/", self.local)
    }

    /// Stops accepting; requests in progress are dropped with their
    /// connections.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accepting.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Broker,
    tokens: Tokens,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted.map(|a| (a, slot)),
        };
        let ((stream, _), slot) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "admin HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (broker, tokens) = (broker.clone(), tokens.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = answer(&req, &broker, &tokens);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "admin HTTP connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|e| {
        format!("{{\"error\": {{\"status\": \"internal\", \"message\": \"{e}\"}}}}").into_bytes()
    });
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, name: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": {"status": name, "message": message}}),
    )
}

/// The token a request presents: `Authorization: Bearer …`, or `?token=`.
fn presented(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    header.or_else(|| {
        req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("token=").map(str::to_owned))
        })
    })
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    broker: &Broker,
    tokens: &Tokens,
) -> Response<Full<Bytes>> {
    // The token first: without it, nothing else is said.
    let authenticated = presented(req).is_some_and(|t| tokens.identify(&t).is_some());
    if !authenticated {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "present the broker's token: Authorization: Bearer TOKEN",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if req.method() != Method::GET {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the admin HTTP API is read-only: GET; changes go through capwire.broker.admin",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match req.uri().path().trim_end_matches('/') {
        "/admin/status" => json(StatusCode::OK, &broker.status()),
        "/admin/endpoints" => json(StatusCode::OK, &broker.endpoints()),
        "/admin/inbox" => json(StatusCode::OK, &broker.inbox()),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GET /admin/status, /admin/endpoints or /admin/inbox",
        ),
    }
}
