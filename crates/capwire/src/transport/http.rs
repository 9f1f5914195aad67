//! HTTP on the WebSocket port, served by hyper: an upgrade becomes a
//! WebSocket; a `POST` with `Content-Type: application/json` is one
//! JSON-RPC request or batch (its response is the body, `204` when there is
//! none); any other `POST` is capnweb's HTTP batch — its body's lines are
//! the messages of one short session, and the response holds the session's
//! messages, joined by `\n`. Other methods get `405`. A connection stays
//! open for further requests (HTTP/1.1 keep-alive).
//!
//! Each request that becomes a session is a [`Transport`] handed to the
//! listener, like a WebSocket: the request body is its input, and what the
//! session sends before it closes is the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::ws::{ws_config, ws_transport};
use super::{FrameReceiver, FrameSender, Outgoing, ReceiverInner, Transport, TransportConfig};
use crate::attestation::{Attestation, TransportKind};

/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request of one connection shares.
struct Conn {
    accepted: mpsc::Sender<Transport>,
    config: TransportConfig,
    /// What the connection itself established: the peer's address and,
    /// over TLS, its certificate.
    base: Attestation,
}

type Body = Full<Bytes>;

/// The hint a raw capwire/1 client on this port is given.
const RAW_ON_HTTP_PORT: &str = "this port speaks WebSocket and HTTP: connect with its ws:// \
     address; raw capwire/1 clients (tcp://, unix://) need the server's raw capwire/1 port";

/// Serves one accepted TCP connection until it closes: over TLS when the
/// listener has a certificate, else in plain text.
pub(super) async fn serve_connection(
    mut tcp: TcpStream,
    accepted: mpsc::Sender<Transport>,
    config: TransportConfig,
) {
    let _ = tcp.set_nodelay(true);
    let mut base = Attestation::new(TransportKind::WebSocket);
    base.peer_addr = tcp.peer_addr().ok().map(|a| a.to_string());
    if let Some(tls) = config.tls_server.clone() {
        match super::tls::accept(tcp, &tls, &mut base, "wss:// or https://").await {
            Ok(stream) => serve_http(TokioIo::new(stream), accepted, config, base).await,
            Err(e) => tracing::debug!(error = %e, peer = ?base.peer_addr, "TLS connection refused"),
        }
        return;
    }
    // A raw capwire/1 client (length-prefixed frames) is answered in its
    // own protocol before HTTP sees a byte; a TLS client is told nothing
    // it could read, so it is logged and closed.
    let mut first = [0u8; 8];
    match tokio::time::timeout(HEAD_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(0)) | Err(_) => return,
        Ok(Ok(n)) if super::tls::is_client_hello(&first[..n]) => {
            tracing::warn!(
                peer = ?base.peer_addr,
                "a TLS client reached a plain WebSocket/HTTP port (it should use ws:// or http://, \
                 or the server should be given a certificate)"
            );
            return;
        }
        Ok(Ok(n)) if !could_be_http(&first[..n]) => {
            refuse_raw_capwire(&mut tcp, &first[..n], RAW_ON_HTTP_PORT).await;
            return;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP connection failed before its first byte");
            return;
        }
    }
    serve_http(TokioIo::new(tcp), accepted, config, base).await;
}

/// Serves HTTP/1.1 requests on `io` until the connection closes.
async fn serve_http<I>(
    io: TokioIo<I>,
    accepted: mpsc::Sender<Transport>,
    config: TransportConfig,
    base: Attestation,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let conn = Arc::new(Conn {
        accepted,
        config,
        base,
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    r
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn attestation(conn: &Conn, req: &Request<Incoming>, kind: TransportKind) -> Attestation {
    let mut att = conn.base.clone();
    att.transport = kind;
    att.path = Some(req.uri().path().to_owned());
    att.origin = header_str(req, header::ORIGIN).map(str::to_owned);
    let token = header_str(req, header::AUTHORIZATION)
        .and_then(crate::auth::bearer)
        .map(str::to_owned)
        .or_else(|| req.uri().query().and_then(crate::auth::query_token));
    att.presented = token.map(crate::auth::Presented);
    att
}

async fn handle(mut req: Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let upgrade =
        header_str(&req, header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if upgrade {
        return websocket(&mut req, conn);
    }
    if req.method() == Method::GET {
        let path = req.uri().path();
        if let Some(route) = conn.config.get_routes.iter().find(|r| r.path == path) {
            let mut r = Response::new(Full::new(route.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(route.content_type()),
            );
            return r;
        }
        // A listener that serves pages answers other paths as a web server does.
        if !conn.config.get_routes.is_empty() {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
    }
    if req.method() != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "JSON-RPC requests and capnweb batches are POSTs; WebSocket clients upgrade\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let json = header_str(&req, header::CONTENT_TYPE).is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    let max = conn.config.max_frame_bytes;
    let announced = header_str(&req, header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
    if announced.is_some_and(|n| n > max) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over the frame limit\n",
        );
    }
    let kind = if json {
        TransportKind::HttpJsonRpc
    } else {
        TransportKind::HttpBatch
    };
    let att = attestation(&conn, &req, kind);
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body over the frame limit\n",
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "HTTP body not read");
            return plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            );
        }
    };
    if json {
        json_rpc(&conn, att, body).await
    } else {
        capnweb_batch(&conn, att, body).await
    }
}

/// Answers the upgrade and hands the WebSocket to the listener once hyper
/// gives the connection up.
fn websocket(req: &mut Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let key = match header_str(req, header::SEC_WEBSOCKET_KEY) {
        Some(k) if req.method() == Method::GET => k.as_bytes().to_vec(),
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade is a GET with Sec-WebSocket-Key\n",
            )
        }
    };
    if header_str(req, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        let mut r = plain(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let att = attestation(&conn, req, TransportKind::WebSocket);
    let upgrading = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config(&conn.config)),
                )
                .await;
                let _ = conn
                    .accepted
                    .send(ws_transport(ws, att, &conn.config))
                    .await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// A transport whose input is `frames` and whose output is collected until
/// the session closes it: what the session sent, in order.
fn one_shot(
    conn: &Conn,
    attestation: Attestation,
    frames: Vec<Bytes>,
) -> (Transport, oneshot::Receiver<Vec<Bytes>>) {
    let (in_tx, in_rx) = mpsc::channel(frames.len().max(1));
    for frame in frames {
        let _ = in_tx.try_send(Outgoing::Frame(frame));
    }
    drop(in_tx);
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(conn.config.queue_frames.max(1));
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Some(out) = out_rx.recv().await {
            match out {
                Outgoing::Frame(frame) => sent.push(frame),
                Outgoing::Close(_) => break,
            }
        }
        let _ = done_tx.send(sent);
    });
    let sender = FrameSender::new(out_tx, conn.config.max_frame_bytes);
    let transport = Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(in_rx), sender.clone()),
        sender,
        attestation,
    };
    (transport, done_rx)
}

/// Runs a one-shot session through the listener and waits for its output.
async fn run_one_shot(
    conn: &Conn,
    attestation: Attestation,
    frames: Vec<Bytes>,
) -> Result<Vec<Bytes>, Response<Body>> {
    let (transport, done) = one_shot(conn, attestation, frames);
    if conn.accepted.send(transport).await.is_err() {
        return Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down\n",
        ));
    }
    done.await.map_err(|_| {
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session ended without an answer\n",
        )
    })
}

/// One JSON-RPC request or batch: the body is the session's one frame
/// (even empty: it gets a parse error); its first message is the answer.
async fn json_rpc(conn: &Conn, attestation: Attestation, body: Bytes) -> Response<Body> {
    let sent = match run_one_shot(conn, attestation, vec![body]).await {
        Ok(sent) => sent,
        Err(r) => return r,
    };
    let mut r = match sent.into_iter().next() {
        Some(answer) => Response::new(Full::new(answer)),
        None => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// capnweb's HTTP batch: the body's lines are the messages of one session;
/// the response holds what it sent, one message per line.
async fn capnweb_batch(conn: &Conn, attestation: Attestation, body: Bytes) -> Response<Body> {
    let lines: Vec<Bytes> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| body.slice_ref(l))
        .collect();
    if lines.is_empty() {
        return plain(StatusCode::OK, "");
    }
    let sent = match run_one_shot(conn, attestation, lines).await {
        Ok(sent) => sent,
        Err(r) => return r,
    };
    let mut out = BytesMut::new();
    for (i, frame) in sent.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(frame);
    }
    let mut r = Response::new(Full::new(out.freeze()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    r
}

/// True while `start` can still be the start of an HTTP request: a method
/// token of capital letters, then a space.
fn could_be_http(start: &[u8]) -> bool {
    let token = start.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match start.get(token) {
        None => token == start.len() && token <= 16,
        Some(b' ') => token > 0,
        Some(_) => false,
    }
}

/// A raw capwire/1 client (length-prefixed frames) reached the WebSocket
/// port: answer it in its own protocol — a `hello`, then a `goaway` that
/// says where it should connect — so it reports that rather than a closed
/// connection.
pub(super) async fn refuse_raw_capwire(tcp: &mut TcpStream, first: &[u8], hint: &str) {
    use capwire_proto::{codec, framing, Code, Codec, Frame, Goaway, Hello, Reason, Status};
    // The byte after the 4-byte length prefix tells the client's codec.
    let codec = match first.get(4) {
        Some(b'{' | b' ' | b'\n' | b'\t' | b'\r') => Codec::Json,
        _ => Codec::Msgpack,
    };
    let status =
        Status::new(Code::FailedPrecondition, hint).with_reason(Reason::PROTOCOL_VIOLATION);
    let frames = [
        Frame::Hello(Hello::new()),
        Frame::Goaway(Goaway {
            status,
            grace_ms: 0,
        }),
    ];
    let mut out = BytesMut::new();
    for frame in &frames {
        if let Ok(bytes) = codec::encode(frame, codec) {
            let _ = framing::encode_frame(
                framing::Framing::LengthPrefixed,
                &bytes,
                usize::MAX,
                &mut out,
            );
        }
    }
    let _ = tcp.write_all(&out).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn raw_capwire_bytes_are_not_an_http_request() {
        assert!(super::could_be_http(b"GET / HT"));
        assert!(super::could_be_http(b"POS"));
        assert!(!super::could_be_http(&[0, 0, 0, 17, b'{']));
        assert!(!super::could_be_http(&[0, 0, 0, 9, 0x81]));
        assert!(!super::could_be_http(b"{\"hello\""));
    }
}
