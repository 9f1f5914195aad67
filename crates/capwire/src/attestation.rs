//! What a connection's transport can vouch for about the peer.

use serde::Serialize;

/// The kind of transport a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// An in-process pair.
    Memory,
    /// A TCP socket.
    Tcp,
    /// A Unix domain socket.
    Unix,
    /// A WebSocket.
    WebSocket,
    /// One HTTP batch request (capnweb's `POST` of newline-separated messages).
    HttpBatch,
    /// One JSON-RPC HTTP request (a `POST` with `Content-Type:
    /// application/json`): its body is a request or a batch.
    HttpJsonRpc,
    /// This process's own stdin/stdout.
    Stdio,
    /// The stdin/stdout of a child process this side spawned.
    Process,
}

/// Credentials of a Unix-socket peer, read with `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UnixPeer {
    /// User id of the peer process.
    pub uid: u32,
    /// Group id of the peer process.
    pub gid: u32,
    /// Process id, where the platform reports it.
    pub pid: Option<i32>,
}

/// Facts about the peer, filled in by the transport that accepted or opened
/// the connection. Nothing here is trusted unless the transport can prove it:
/// a fresh attestation has no identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Attestation {
    /// The transport kind.
    pub transport: TransportKind,
    /// The peer's address (`ip:port`, socket path, or command line).
    pub peer_addr: Option<String>,
    /// Unix peer credentials.
    pub unix: Option<UnixPeer>,
    /// The WebSocket `Origin` header, if the peer sent one.
    pub origin: Option<String>,
    /// The WebSocket request path.
    pub path: Option<String>,
    /// An identity the peer proved: by a bearer token it presented (see
    /// [`crate::auth`]), or else by a verified TLS client certificate (its
    /// first subject alternative name, or its common name).
    pub identity: Option<String>,
    /// Whether the connection runs over TLS.
    pub tls: bool,
    /// The peer's TLS certificate, when it presented one that verified.
    pub certificate: Option<crate::transport::PeerCertificate>,
    /// The token the transport saw (a WebSocket or HTTP request's bearer
    /// token), checked when the connection is served; never serialized.
    #[serde(skip)]
    pub(crate) presented: Option<crate::auth::Presented>,
}

impl Attestation {
    /// An attestation for `transport` that knows nothing else.
    pub fn new(transport: TransportKind) -> Attestation {
        Attestation {
            transport,
            peer_addr: None,
            unix: None,
            origin: None,
            path: None,
            identity: None,
            tls: false,
            certificate: None,
            presented: None,
        }
    }

    /// Sets the peer address.
    pub fn with_peer_addr(mut self, addr: impl Into<String>) -> Attestation {
        self.peer_addr = Some(addr.into());
        self
    }

    /// Checks the bearer token the transport saw (a WebSocket or HTTP
    /// request's `Authorization` header or `token=` query) against `tokens`,
    /// for servers that take connections from a
    /// [`Listener`](crate::transport::Listener) without
    /// [`dialect::serve`](crate::dialect::serve). On a match the identity is
    /// set and true returned; the presented token is forgotten either way.
    pub fn authenticate(&mut self, tokens: &crate::auth::Tokens) -> bool {
        let presented = self.presented.take();
        match presented.as_ref().and_then(|p| tokens.identify(&p.0)) {
            Some(identity) => {
                self.identity = Some(identity.to_owned());
                true
            }
            None => false,
        }
    }
}
