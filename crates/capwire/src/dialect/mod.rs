//! Dialects: the protocols a capwire listener speaks, told apart by the
//! peer's first message: one port, every client.
//!
//! - a capwire/1 `hello` (a JSON object or a MessagePack map): a native
//!   [`Session`];
//! - a JSON array of capnweb messages: [`capnweb`], with the served object
//!   named by [`ServeConfig::capnweb_main`] as the peer's main object;
//! - a JSON object with a `jsonrpc` member, or a batch of them: [`jsonrpc`]
//!   (also every `POST` with `Content-Type: application/json`, and on a
//!   WebSocket a first message that is not JSON at all, which gets a
//!   JSON-RPC parse error).

pub mod capnweb;
pub mod jsonrpc;
mod server;

pub use server::{shutdown_signal, Server};

use capwire_proto::{Code, Status};

use crate::registry::Registry;
use crate::session::{Session, SessionConfig};
use crate::transport::{Listener, Transport, TransportError};
use crate::Capability;

/// How [`serve`] runs a connection.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ServeConfig {
    /// For native sessions. Their codec is the one the peer's first frame
    /// uses: the accepting side answers in the codec of the peer's `hello`
    /// (protocol.md \[S1\]).
    pub session: SessionConfig,
    /// The served name a capnweb peer gets as its main object; when `None`,
    /// the registry's only served name (capnweb has no bootstrap by name).
    pub capnweb_main: Option<String>,
    /// For JSON-RPC peers: the separator, error classes, limits, and
    /// optionally a registry per connection.
    pub jsonrpc: jsonrpc::JsonRpcConfig,
    /// When set, every connection must present one of these bearer tokens
    /// (see [`crate::auth`]); the identity it proves becomes the
    /// attestation's `identity`. Others get `unauthenticated` in their
    /// dialect and are closed.
    pub tokens: Option<crate::auth::Tokens>,
}

/// A connection being served, in the dialect its peer speaks.
#[derive(Debug, Clone)]
pub enum Served {
    /// A native capwire/1 session.
    Native(Session),
    /// A capnweb session.
    Capnweb(capnweb::CapnwebSession),
    /// A JSON-RPC session.
    JsonRpc(jsonrpc::JsonRpcSession),
}

impl Served {
    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        match self {
            Served::Native(s) => s.is_closed(),
            Served::Capnweb(s) => s.is_closed(),
            Served::JsonRpc(s) => s.is_closed(),
        }
    }

    /// Waits until the session has ended.
    pub async fn closed(&self) {
        match self {
            Served::Native(s) => {
                s.closed().await;
            }
            Served::Capnweb(s) => {
                s.closed().await;
            }
            Served::JsonRpc(s) => s.closed().await,
        }
    }

    fn metrics_dialect(&self) -> crate::metrics::Dialect {
        match self {
            Served::Native(_) => crate::metrics::Dialect::Native,
            Served::Capnweb(_) => crate::metrics::Dialect::Capnweb,
            Served::JsonRpc(_) => crate::metrics::Dialect::JsonRpc,
        }
    }

    /// Closes the session: a native one gracefully ([`Session::close`]: `goaway`,
    /// calls in flight finish within `SessionConfig::close_grace`), a
    /// capnweb one at once.
    pub async fn close(&self) {
        match self {
            Served::Native(s) => s.close().await,
            Served::Capnweb(s) => s.close().await,
            Served::JsonRpc(s) => s.close().await,
        }
    }
}

/// Which dialect a first frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// capwire/1, either codec.
    Native,
    /// capnweb (a JSON array of messages).
    Capnweb,
    /// JSON-RPC 2.0.
    JsonRpc,
}

/// Tells the dialect from the first frame a peer sent (on a transport that
/// is not a WebSocket: text that is not JSON goes to the native decoder,
/// which reports it).
pub fn detect(first: &[u8]) -> Dialect {
    let start = first.iter().find(|b| !b.is_ascii_whitespace());
    match start {
        Some(b'{' | b'[') if jsonrpc::looks_like(first) => Dialect::JsonRpc,
        Some(b'[') => Dialect::Capnweb,
        _ => Dialect::Native,
    }
}

/// [`detect`], knowing the transport: on a WebSocket (and in a JSON-RPC
/// HTTP request) any text that is neither capwire/1 nor capnweb is JSON-RPC.
pub fn detect_on(kind: crate::attestation::TransportKind, first: &[u8]) -> Dialect {
    use crate::attestation::TransportKind;
    match kind {
        TransportKind::HttpJsonRpc => Dialect::JsonRpc,
        TransportKind::WebSocket if jsonrpc::looks_like(first) => Dialect::JsonRpc,
        _ => detect(first),
    }
}

/// Accepts connections on `listener` for as long as it is open, serving each
/// in the dialect its peer speaks (see [`serve`]). An accept error (a file
/// descriptor limit, a connection reset before it was accepted) is logged
/// and survived; only a listener that closed for good ends the loop. For a
/// server that can be shut down gracefully, use [`Server`].
pub async fn serve_forever(
    mut listener: Listener,
    registry: Registry,
    config: ServeConfig,
) -> Result<(), TransportError> {
    loop {
        let t = match listener.accept().await {
            Ok(t) => t,
            Err(TransportError::Closed) => return Err(TransportError::Closed),
            Err(e) => {
                server::accept_failed(&e).await;
                continue;
            }
        };
        tracing::debug!(peer = ?t.attestation.peer_addr, "connection");
        let (registry, config) = (registry.clone(), config.clone());
        tokio::spawn(async move {
            if let Err(status) = serve(t, registry, config).await {
                server::not_served(&status);
            }
        });
    }
}

/// Waits for the peer's first message and serves the connection in its
/// dialect. A peer that closes before saying anything is an `unavailable` error.
pub async fn serve(
    mut transport: Transport,
    registry: Registry,
    config: ServeConfig,
) -> Result<Served, Status> {
    let first = transport
        .receiver
        .recv()
        .await
        .map_err(|e| match e {
            // The peer speaks another protocol or framing: say which.
            TransportError::Framing(f @ capwire_proto::FramingError::NotAFrame { .. }) => {
                Status::protocol_violation(f.to_string())
            }
            e => Status::unavailable(format!("the connection failed: {e}")),
        })?
        .ok_or_else(|| Status::unavailable("the peer closed before its first message"))?;
    let dialect = detect_on(transport.attestation.transport, &first);
    let codec = capwire_proto::Codec::detect(&first).ok();
    let presented = transport.attestation.presented.take();
    if let Some(tokens) = &config.tokens {
        let token = presented.map(|p| p.0).or_else(|| match dialect {
            Dialect::Native => hello_token(&first),
            _ => None,
        });
        match token.as_deref().and_then(|t| tokens.identify(t)) {
            Some(identity) => transport.attestation.identity = Some(identity.to_owned()),
            None => {
                let status = Status::new(
                    Code::Unauthenticated,
                    if token.is_some() {
                        "the bearer token presented is not valid here"
                    } else {
                        "this server requires a bearer token (an Authorization: Bearer header, \
                         a token= query parameter, or the token field of hello)"
                    },
                );
                refuse(transport.sender.clone(), dialect, codec, &status).await;
                return Err(status);
            }
        }
    }
    transport.receiver.unread(first);
    let served = match dialect {
        Dialect::Native => {
            // The accepting side answers in the codec of the peer's hello
            // (protocol.md [S1]); a first frame in no codec meets the
            // decoder, which reports it.
            let mut session = config.session;
            if let Some(codec) = codec {
                session.codec = codec;
            }
            Served::Native(Session::new(transport, registry, session))
        }
        Dialect::Capnweb => {
            let main = capnweb_main(&registry, config.capnweb_main.as_deref())?;
            Served::Capnweb(capnweb::CapnwebSession::with_limits(
                transport,
                main,
                config.session.limits,
            ))
        }
        Dialect::JsonRpc => {
            let registry = config.jsonrpc.per_connection.is_none().then_some(registry);
            Served::JsonRpc(jsonrpc::JsonRpcSession::accept(
                transport,
                registry,
                config.jsonrpc,
            ))
        }
    };
    if let Some(open) = crate::metrics::OpenSession::start(served.metrics_dialect()) {
        let watched = served.clone();
        tokio::spawn(async move {
            watched.closed().await;
            drop(open);
        });
    }
    Ok(served)
}

/// The token of a capwire/1 `hello`, if the frame is one.
fn hello_token(first: &[u8]) -> Option<String> {
    match capwire_proto::codec::decode(first) {
        Ok((capwire_proto::Frame::Hello(hello), _)) => hello.token,
        _ => None,
    }
}

/// Tells a peer it is not admitted, in its dialect, and closes.
async fn refuse(
    sender: crate::transport::FrameSender,
    dialect: Dialect,
    codec: Option<capwire_proto::Codec>,
    status: &Status,
) {
    use capwire_proto::{codec as wire, Frame, Goaway, Hello};
    let frames: Vec<bytes::Bytes> = match dialect {
        Dialect::Native => {
            let codec = codec.unwrap_or(capwire_proto::Codec::Msgpack);
            [
                Frame::Hello(Hello::new()),
                Frame::Goaway(Goaway {
                    status: status.clone(),
                    grace_ms: 0,
                }),
            ]
            .iter()
            .filter_map(|f| wire::encode(f, codec).ok().map(bytes::Bytes::from))
            .collect()
        }
        Dialect::JsonRpc => {
            let error = jsonrpc::ErrorClasses::new().to_error(status);
            let message = serde_json::json!({"jsonrpc": "2.0", "error": error, "id": null});
            vec![bytes::Bytes::from(message.to_string())]
        }
        Dialect::Capnweb => {
            let message = serde_json::json!([
                "abort",
                [
                    "error",
                    "Error",
                    format!("unauthenticated: {}", status.message)
                ]
            ]);
            vec![bytes::Bytes::from(message.to_string())]
        }
    };
    for frame in frames {
        let _ = sender.send(frame).await;
    }
    let reason = crate::transport::CloseReason::new(1008, "unauthenticated");
    let _ = sender.close(reason).await;
}

fn capnweb_main(registry: &Registry, name: Option<&str>) -> Result<Capability, Status> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => {
            let names = registry.names();
            match names.as_slice() {
                [(only, _)] => only.clone(),
                _ => {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        "capnweb peers need a main object: set ServeConfig::capnweb_main",
                    ))
                }
            }
        }
    };
    registry
        .main_capability(&name)
        .ok_or_else(|| Status::new(Code::NotFound, format!("`{name}` is not served")))
}
