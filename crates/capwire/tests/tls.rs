//! TLS on `tls://`, `wss://` and `https://`: certificates from a throwaway
//! CA, mutual TLS whose client identity reaches the handler and the policy,
//! and the wrong cases — an untrusted server, a missing client certificate,
//! plain text on a TLS port and TLS on a plain port — each with a clear error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
use capwire::dialect::{ServeConfig, Server};
use capwire::policy::{policy_fn, Decision};
use capwire::transport::{
    self, Address, CertIdentity, ClientTls, DevCa, Listener, ServerTls, TransportConfig,
    TransportError, TrustRoots,
};
use capwire::{Methods, Registry, Session, SessionConfig, Value};
use serde_json::{json, Value as Json};

struct Pki {
    ca: DevCa,
    server: CertIdentity,
    alice: CertIdentity,
}

fn pki() -> Pki {
    let ca = DevCa::new("capwire test CA").unwrap();
    let server = ca
        .server(&["localhost", "127.0.0.1"])
        .unwrap()
        .identity()
        .unwrap();
    let alice = ca.client("alice").unwrap().identity().unwrap();
    Pki { ca, server, alice }
}

/// Serves `who/ami`, which answers with what the connection's attestation
/// says about TLS, and records what the bootstrap policy saw.
async fn serve_who(
    addr: &str,
    tls: ServerTls,
) -> (Address, Server, Arc<Mutex<Vec<Option<String>>>>) {
    let registry = Registry::new();
    registry
        .serve(
            "who",
            "1.0",
            Methods::new("who").method("ami", |_args: Value, ctx| async move {
                let att = ctx.attestation();
                Value::new(&json!({
                    "tls": att.tls,
                    "identity": att.identity,
                    "subject": att.certificate.as_ref().map(|c| c.subject.clone()),
                    "sha256": att.certificate.as_ref().map(|c| c.sha256.len()),
                }))
            }),
        )
        .unwrap()
        .forget();
    let listener = Listener::bind(
        &addr.parse().unwrap(),
        TransportConfig::default().tls_server(tls),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_policy = seen.clone();
    let mut config = ServeConfig::default();
    config.session = SessionConfig::default().policy(policy_fn(move |req| {
        let identity = req.attestation.identity.clone();
        seen_by_policy.lock().unwrap().push(identity.clone());
        Ok(match identity.as_deref() {
            Some("mallory") => Decision::Deny("not mallory".into()),
            _ => Decision::Allow,
        })
    }));
    config.capnweb_main = Some("who".into());
    (addr, Server::start(listener, registry, config), seen)
}

fn on_localhost(addr: &Address) -> Address {
    // The certificate names `localhost`: connect by that name.
    addr.to_string()
        .replace("127.0.0.1", "localhost")
        .parse()
        .unwrap()
}

async fn ami(addr: &Address, tls: ClientTls) -> Result<Json, String> {
    let t = transport::connect(addr, &TransportConfig::default().tls_client(tls))
        .await
        .map_err(|e| e.to_string())?;
    let session = Session::new(t, Registry::new(), SessionConfig::default());
    let who = session
        .bootstrap("who", None)
        .await
        .map_err(|e| e.to_string())?;
    let got = who
        .call("ami", Value::null())
        .await
        .map_err(|e| e.to_string())?;
    Ok(got.to_json().unwrap())
}

#[tokio::test]
async fn native_sessions_over_tls_and_wss_trust_the_given_ca() {
    let pki = pki();
    for scheme in ["tls://127.0.0.1:0", "wss://127.0.0.1:0/"] {
        let (addr, server, _) =
            serve_who(scheme, ServerTls::new(pki.server.clone()).unwrap()).await;
        let addr = on_localhost(&addr);
        let client = ClientTls::new(pki.ca.trust().unwrap()).unwrap();
        let got = ami(&addr, client).await.unwrap();
        assert_eq!(
            got,
            json!({"tls": true, "identity": null, "subject": null, "sha256": null}),
            "{addr}"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn mutual_tls_identity_reaches_the_handler_and_the_policy() {
    let pki = pki();
    for scheme in ["tls://127.0.0.1:0", "wss://127.0.0.1:0/rpc"] {
        let tls = ServerTls::mutual(pki.server.clone(), pki.ca.trust().unwrap()).unwrap();
        let (addr, server, seen) = serve_who(scheme, tls).await;
        let addr = on_localhost(&addr);
        let client = ClientTls::with_identity(pki.ca.trust().unwrap(), pki.alice.clone()).unwrap();
        let got = ami(&addr, client).await.unwrap();
        assert_eq!(got["tls"], true, "{addr}");
        assert_eq!(got["identity"], "alice", "{addr}");
        assert_eq!(got["subject"], "CN=alice", "{addr}");
        assert_eq!(got["sha256"], 64, "{addr}");
        assert_eq!(*seen.lock().unwrap(), vec![Some("alice".to_owned())]);

        // The policy decides on the certificate's identity.
        let mallory = pki.ca.client("mallory").unwrap().identity().unwrap();
        let client = ClientTls::with_identity(pki.ca.trust().unwrap(), mallory).unwrap();
        let err = ami(&addr, client).await.unwrap_err();
        assert!(err.contains("not mallory"), "{err}");

        // No client certificate: the handshake is refused, nothing is served.
        let client = ClientTls::new(pki.ca.trust().unwrap()).unwrap();
        let err = ami(&addr, client).await.unwrap_err();
        assert!(err.contains("CertificateRequired"), "{err}");

        // A certificate from another CA: refused too.
        let other = DevCa::new("someone else").unwrap();
        let stranger = other.client("alice").unwrap().identity().unwrap();
        let client = ClientTls::with_identity(pki.ca.trust().unwrap(), stranger).unwrap();
        assert!(ami(&addr, client).await.is_err());
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "refused handshakes never reach the policy"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_server_the_client_does_not_trust_is_refused_with_the_reason() {
    let pki = pki();
    let (addr, server, _) = serve_who(
        "tls://127.0.0.1:0",
        ServerTls::new(pki.server.clone()).unwrap(),
    )
    .await;
    let addr = on_localhost(&addr);
    let other = DevCa::new("not the server's CA").unwrap();
    let err = ami(&addr, ClientTls::new(other.trust().unwrap()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );

    // The address's IP is among the certificate's names: accepted.
    let ca_only = ClientTls::new(pki.ca.trust().unwrap()).unwrap();
    let by_ip: Address = addr
        .to_string()
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap();
    ami(&by_ip, ca_only.clone()).await.unwrap();
    server.shutdown().await;

    // Right CA, a name the certificate does not cover: refused.
    let only_localhost = pki.ca.server(&["localhost"]).unwrap().identity().unwrap();
    let (addr, server, _) =
        serve_who("tls://127.0.0.1:0", ServerTls::new(only_localhost).unwrap()).await;
    let err = ami(&addr, ca_only).await.unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn plain_text_on_a_tls_port_is_told_to_use_tls() {
    let pki = pki();
    let (addr, server, _) = serve_who(
        "tls://127.0.0.1:0",
        ServerTls::new(pki.server.clone()).unwrap(),
    )
    .await;
    let Address::Tls(authority) = &addr else {
        unreachable!()
    };
    // A raw capwire/1 client: a `goaway` naming the scheme.
    let plain: Address = format!("tcp://{authority}").parse().unwrap();
    let t = transport::connect(&plain, &TransportConfig::default())
        .await
        .unwrap();
    let session = Session::new(t, Registry::new(), SessionConfig::default());
    let err = session.bootstrap("who", None).await.unwrap_err();
    assert!(err.message.contains("tls://"), "{err}");
    server.shutdown().await;

    // An HTTP client on a wss:// port: a 400 naming the scheme.
    let (addr, server, _) = serve_who(
        "wss://127.0.0.1:0/",
        ServerTls::new(pki.server.clone()).unwrap(),
    )
    .await;
    let Address::Ws { authority, .. } = &addr else {
        unreachable!()
    };
    let plain: Address = format!("ws://{authority}/").parse().unwrap();
    let err = transport::connect(&plain, &TransportConfig::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("400"), "{err}");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("wss://"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn tls_on_a_plain_port_is_named_on_both_sides() {
    let registry = Registry::new();
    for plain in ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/"] {
        let listener = Listener::bind(&plain.parse().unwrap(), TransportConfig::default())
            .await
            .unwrap();
        let authority = match listener.local_addr() {
            Address::Tcp(a) => a.clone(),
            Address::Ws { authority, .. } => authority.clone(),
            other => panic!("{other}"),
        };
        let server = Server::start(listener, registry.clone(), ServeConfig::default());
        let tls_addr: Address = format!("tls://{authority}").parse().unwrap();
        let ca = DevCa::new("ca").unwrap();
        let config =
            TransportConfig::default().tls_client(ClientTls::new(ca.trust().unwrap()).unwrap());
        let err = tokio::time::timeout(
            Duration::from_secs(15),
            transport::connect(&tls_addr, &config),
        )
        .await
        .expect("the client hears back, not a hang")
        .unwrap_err();
        assert!(matches!(err, TransportError::Tls(_)), "{plain}: {err}");
        let text = err.to_string();
        assert!(text.contains("probably a plain port"), "{plain}: {text}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn listening_on_tls_without_a_certificate_says_what_is_missing() {
    for addr in [
        "tls://127.0.0.1:0",
        "wss://127.0.0.1:0/",
        "https://127.0.0.1:0/",
    ] {
        let err = Listener::bind(&addr.parse().unwrap(), TransportConfig::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-cert"), "{addr}: {err}");
    }
    // Bad PEM: the file and the reason.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = CertIdentity::from_pem_files(&cert, &cert)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cert.pem") && err.contains("no certificate"),
        "{err}"
    );
    let err = TrustRoots::from_pem_file(dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[tokio::test]
async fn json_rpc_over_https_and_wss() {
    let pki = pki();
    for scheme in ["wss://127.0.0.1:0/", "https://127.0.0.1:0/"] {
        let tls = ServerTls::mutual(pki.server.clone(), pki.ca.trust().unwrap()).unwrap();
        let (addr, server, _) = serve_who(scheme, tls).await;
        let addr = on_localhost(&addr);
        let client = ClientTls::with_identity(pki.ca.trust().unwrap(), pki.alice.clone()).unwrap();
        let t = transport::connect(&addr, &TransportConfig::default().tls_client(client))
            .await
            .unwrap();
        let session = JsonRpcSession::connect(t, Registry::new(), JsonRpcConfig::default());
        let got = session
            .peer()
            .request("who/ami", Some(json!([])), None)
            .await
            .unwrap();
        assert_eq!(got["identity"], "alice", "{addr}");
        assert_eq!(got["tls"], true, "{addr}");
        server.shutdown().await;
    }
}
