//! Transports: ordered, reliable, framed message pipes with a close reason.
//!
//! Every transport — in-memory, TCP, Unix socket, WebSocket, stdio — ends up
//! as the same [`Transport`]: a cloneable [`FrameSender`] feeding one writer
//! task, a [`FrameReceiver`] read by its owner, and the [`Attestation`] the
//! transport could establish about the peer. Frames are opaque bytes here;
//! the codec lives in `capwire-proto`.

mod address;
#[cfg(feature = "dev-certs")]
mod dev_certs;
mod http;
mod http_client;
mod listener;
mod mem;
mod sender;
mod stream;
mod tls;
mod writer;
mod ws;

use std::io;

use bytes::Bytes;
use capwire_proto::{Framing, FramingError, DEFAULT_MAX_FRAME_BYTES};
use tokio::sync::mpsc;

pub use address::Address;
#[cfg(feature = "dev-certs")]
pub use dev_certs::{DevCa, DevCert};
pub use listener::Listener;
pub use mem::memory_pair;
pub use sender::FrameSender;
pub use stream::{spawn_child, stdio, stream_transport};
pub use tls::{CertIdentity, ClientTls, PeerCertificate, ServerTls, TlsError, TrustRoots};
pub use writer::spawn_stream_writer;

use crate::attestation::Attestation;

/// Settings shared by every transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Largest frame sent or accepted, in bytes. Default 16 MiB. Larger
    /// incoming frames close the connection before they are buffered.
    pub max_frame_bytes: usize,
    /// Framing on byte-stream transports (TCP, Unix, stdio). Default
    /// length-prefixed; choose ndjson for stdio peers that speak JSON lines.
    pub framing: Framing,
    /// Frames that may wait for the writer before `send` waits. Default 1024.
    pub queue_frames: usize,
    /// Most bytes the writer gathers into one write. Default 256 KiB.
    pub max_batch_bytes: usize,
    /// A bearer token the connecting side presents where the transport
    /// carries one (`Authorization` on WebSocket and HTTP requests).
    pub bearer: Option<String>,
    /// The certificate a listener on `tls://`, `wss://` or `https://`
    /// presents (and the client roots it requires, for mutual TLS).
    pub tls_server: Option<ServerTls>,
    /// What a client connecting to `tls://`, `wss://` or `https://`
    /// trusts (and presents); the system's roots when unset.
    pub tls_client: Option<ClientTls>,
    /// On a WebSocket/HTTP listener: `GET` paths answered with what a
    /// function renders (metrics for Prometheus, a web page and its
    /// scripts). Unauthenticated; other `GET`s get `405`.
    pub get_routes: Vec<GetRoute>,
}

/// A `GET` path on the WebSocket/HTTP port and what answers it: where
/// Prometheus scrapes the [`metrics`](crate::metrics), or a page a browser
/// loads before it opens its WebSocket.
#[derive(Clone)]
pub struct GetRoute {
    /// The path, e.g. `/metrics`.
    pub path: String,
    content_type: &'static str,
    render: std::sync::Arc<dyn Fn() -> Bytes + Send + Sync>,
}

impl GetRoute {
    /// Answers `GET path` with what `render` returns, as `content_type`.
    pub fn new(
        path: impl Into<String>,
        content_type: &'static str,
        render: impl Fn() -> Bytes + Send + Sync + 'static,
    ) -> GetRoute {
        GetRoute {
            path: path.into(),
            content_type,
            render: std::sync::Arc::new(render),
        }
    }

    /// Always the same body (a page, a script).
    pub fn fixed(path: impl Into<String>, content_type: &'static str, body: Bytes) -> GetRoute {
        GetRoute::new(path, content_type, move || body.clone())
    }

    /// Text in Prometheus' exposition format, rendered per scrape.
    pub fn metrics(
        path: impl Into<String>,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> GetRoute {
        GetRoute::new(
            path,
            "text/plain; version=0.0.4; charset=utf-8",
            move || Bytes::from(render()),
        )
    }

    pub(crate) fn content_type(&self) -> &'static str {
        self.content_type
    }

    pub(crate) fn render(&self) -> Bytes {
        (self.render)()
    }
}

impl std::fmt::Debug for GetRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetRoute")
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            framing: Framing::LengthPrefixed,
            queue_frames: 1024,
            max_batch_bytes: 256 * 1024,
            bearer: None,
            tls_server: None,
            tls_client: None,
            get_routes: Vec::new(),
        }
    }
}

impl TransportConfig {
    /// Sets the frame size limit.
    pub fn max_frame_bytes(mut self, n: usize) -> TransportConfig {
        self.max_frame_bytes = n;
        self
    }

    /// Sets what a TLS listener presents.
    pub fn tls_server(mut self, tls: ServerTls) -> TransportConfig {
        self.tls_server = Some(tls);
        self
    }

    /// Sets what a TLS client trusts and presents.
    pub fn tls_client(mut self, tls: ClientTls) -> TransportConfig {
        self.tls_client = Some(tls);
        self
    }

    /// Sets the framing of byte-stream transports.
    pub fn framing(mut self, framing: Framing) -> TransportConfig {
        self.framing = framing;
        self
    }
}

/// Why a connection was closed, as carried by WebSocket close frames and
/// in-memory pipes (byte streams can only carry EOF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// A WebSocket-style close code.
    pub code: u16,
    /// Human-readable text.
    pub message: String,
}

impl CloseReason {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected condition on the closing side.
    pub const INTERNAL_ERROR: u16 = 1011;

    /// A close reason.
    pub fn new(code: u16, message: impl Into<String>) -> CloseReason {
        CloseReason {
            code,
            message: message.into(),
        }
    }

    /// A normal close.
    pub fn normal() -> CloseReason {
        CloseReason::new(CloseReason::NORMAL, "")
    }
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket or pipe failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame was too large or the stream ended inside a frame.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The TLS handshake failed, or TLS is not configured where needed.
    #[error("{0}")]
    Tls(String),
    /// The WebSocket layer failed.
    #[error("websocket error: {0}")]
    WebSocket(String),
    /// The peer closed the connection with a non-normal reason.
    #[error("connection closed by peer: {} {}", .0.code, .0.message)]
    ClosedByPeer(CloseReason),
    /// This side's connection is closed: nothing more can be sent.
    #[error("connection closed")]
    Closed,
    /// An address could not be parsed.
    #[error("invalid address `{input}`: {reason}")]
    Address {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The address kind cannot be used that way (e.g. listening on `exec:`).
    #[error("{0}")]
    Unsupported(String),
}

/// What travels from a [`FrameSender`] to the writer (or, in memory, to the peer).
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Bytes),
    Close(CloseReason),
}

/// The receiving half of a transport.
pub struct FrameReceiver {
    inner: ReceiverInner,
    /// Lets the receiver close the connection when the peer breaks framing.
    control: FrameSender,
    close_on_error: bool,
    done: bool,
    /// A frame given back with [`FrameReceiver::unread`], returned first.
    pushed_back: Option<Bytes>,
}

enum ReceiverInner {
    Stream(Box<stream::StreamReader>),
    Ws(ws::WsReader),
    Mem(mpsc::Receiver<Outgoing>),
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl FrameReceiver {
    fn new(inner: ReceiverInner, control: FrameSender) -> FrameReceiver {
        FrameReceiver {
            inner,
            control,
            close_on_error: true,
            done: false,
            pushed_back: None,
        }
    }

    /// Gives a frame back: the next [`recv`](Self::recv) returns it. For a
    /// listener that reads the first frame to tell the dialect, then hands
    /// the connection to the session that speaks it.
    pub fn unread(&mut self, frame: Bytes) {
        self.pushed_back = Some(frame);
    }

    /// Whether a framing violation closes the connection at once (the
    /// default). An owner that first tells the peer why — a Session sends
    /// `goaway` — turns this off and closes the connection itself.
    pub fn close_on_framing_error(&mut self, close: bool) {
        self.close_on_error = close;
    }

    /// The next frame; `Ok(None)` when the peer closed normally.
    ///
    /// A framing violation (an over-limit frame, EOF inside a frame) is
    /// returned as an error and closes the connection with that reason; after
    /// any error or end, every later call returns `Ok(None)`.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        if let Some(frame) = self.pushed_back.take() {
            return Ok(Some(frame));
        }
        if self.done {
            return Ok(None);
        }
        let result = match &mut self.inner {
            ReceiverInner::Stream(r) => r.recv().await,
            ReceiverInner::Ws(r) => r.recv().await,
            ReceiverInner::Mem(rx) => match rx.recv().await {
                Some(Outgoing::Frame(f)) => Ok(Some(f)),
                Some(Outgoing::Close(reason)) if reason.code == CloseReason::NORMAL => Ok(None),
                Some(Outgoing::Close(reason)) => Err(TransportError::ClosedByPeer(reason)),
                None => Ok(None),
            },
        };
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.done = true,
            Err(e) => {
                self.done = true;
                if let (true, TransportError::Framing(fe)) = (self.close_on_error, e) {
                    let code = match fe {
                        FramingError::TooLarge { .. } => CloseReason::TOO_BIG,
                        _ => CloseReason::PROTOCOL_ERROR,
                    };
                    self.control
                        .close_now(CloseReason::new(code, fe.to_string()));
                }
            }
        }
        result
    }
}

/// One connection: its two halves and what is known about the peer.
#[derive(Debug)]
pub struct Transport {
    /// Sends frames.
    pub sender: FrameSender,
    /// Receives frames.
    pub receiver: FrameReceiver,
    /// What the transport knows about the peer.
    pub attestation: Attestation,
}

/// Opens a connection to `addr`.
///
/// `stdio:` uses this process's own stdin/stdout; `exec:` spawns the command
/// and talks to its stdin/stdout; `http:` sends each frame as one `POST`
/// (`Content-Type: application/json`) and receives the response bodies as
/// frames: for JSON-RPC clients of HTTP servers.
pub async fn connect(
    addr: &Address,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    match addr {
        Address::Tcp(authority) => stream::connect_tcp(authority, config).await,
        Address::Tls(authority) => stream::connect_tls(authority, config).await,
        Address::Unix(path) => stream::connect_unix(path, config).await,
        Address::Ws {
            authority,
            path,
            tls,
        } => ws::connect(authority, path, *tls, config).await,
        Address::Http {
            authority,
            path,
            tls,
        } => http_client::connect(authority, path, *tls, config),
        Address::Stdio => Ok(stdio(config)),
        Address::Exec { program, args } => spawn_child(program, args, config),
    }
}
