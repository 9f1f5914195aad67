//! Loopback tests run against every transport: round trips, the frame limit
//! from both sides, peers that vanish mid-frame, refused connections, and
//! many connections at once.

use std::time::Duration;

use bytes::Bytes;
use capwire::attestation::TransportKind;
use capwire::proto::FramingError;
use capwire::transport::{
    self, memory_pair, Address, CloseReason, Listener, Transport, TransportConfig, TransportError,
};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Mem,
    Tcp,
    Unix,
    Ws,
    /// A child process (`cat`) echoing its stdin to its stdout.
    Process,
}

const ALL: [Kind; 5] = [Kind::Mem, Kind::Tcp, Kind::Unix, Kind::Ws, Kind::Process];

fn listen_addr(kind: Kind, dir: &tempfile::TempDir) -> Address {
    match kind {
        Kind::Tcp => "tcp://127.0.0.1:0".parse().expect("addr"),
        Kind::Unix => Address::Unix(dir.path().join("t.sock")),
        Kind::Ws => "ws://127.0.0.1:0/rpc".parse().expect("addr"),
        Kind::Mem | Kind::Process => unreachable!("no listener for {kind:?}"),
    }
}

/// Echoes every frame back until the peer goes away.
fn spawn_echo(mut t: Transport) {
    tokio::spawn(async move {
        while let Ok(Some(frame)) = t.receiver.recv().await {
            if t.sender.send(frame).await.is_err() {
                break;
            }
        }
    });
}

/// A client connected to an echoing peer over `kind`.
async fn echo_client(
    kind: Kind,
    config: &TransportConfig,
    dir: &tempfile::TempDir,
) -> (Transport, Option<Listener>) {
    match kind {
        Kind::Mem => {
            let (a, b) = memory_pair(config);
            spawn_echo(b);
            (a, None)
        }
        Kind::Process => {
            let addr: Address = "exec:cat".parse().expect("addr");
            (
                transport::connect(&addr, config).await.expect("spawn cat"),
                None,
            )
        }
        _ => {
            let mut listener = Listener::bind(&listen_addr(kind, dir), config.clone())
                .await
                .expect("bind");
            let client = transport::connect(listener.local_addr(), config)
                .await
                .expect("connect");
            let server = listener.accept().await.expect("accept");
            spawn_echo(server);
            (client, Some(listener))
        }
    }
}

async fn recv(t: &mut Transport) -> Result<Option<Bytes>, TransportError> {
    tokio::time::timeout(Duration::from_secs(10), t.receiver.recv())
        .await
        .expect("no answer within 10 s")
}

#[tokio::test]
async fn round_trip_in_order_on_every_transport() {
    for kind in ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TransportConfig::default();
        let (mut c, _l) = echo_client(kind, &config, &dir).await;
        let frames: Vec<Bytes> = (0..200usize)
            .map(|i| {
                if i % 2 == 0 {
                    Bytes::from(format!("{{\"ping\":{{\"nonce\":{i}}}}}"))
                } else if i % 25 == 1 {
                    // Large enough to skip the writer's batch buffer.
                    Bytes::from(vec![0x81; 70_000 + i])
                } else {
                    Bytes::from(vec![0x81; i * 37])
                }
            })
            .collect();
        let sender = c.sender.clone();
        let to_send = frames.clone();
        tokio::spawn(async move {
            for f in to_send {
                sender.send(f).await.expect("send");
            }
        });
        for want in &frames {
            let got = recv(&mut c).await.expect("recv").expect("frame");
            assert_eq!(&got, want, "{kind:?}");
        }
    }
}

#[tokio::test]
async fn frame_exactly_at_the_limit_passes_and_one_over_is_refused_on_send() {
    for kind in ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TransportConfig::default().max_frame_bytes(4096);
        let (mut c, _l) = echo_client(kind, &config, &dir).await;
        let at = Bytes::from(vec![b'x'; 4096]);
        c.sender.send(at.clone()).await.expect("at limit");
        assert_eq!(
            recv(&mut c).await.expect("recv").expect("frame"),
            at,
            "{kind:?}"
        );

        let err = c
            .sender
            .send(Bytes::from(vec![b'x'; 4097]))
            .await
            .expect_err("over limit");
        assert!(
            matches!(
                err,
                TransportError::Framing(FramingError::TooLarge {
                    len: 4097,
                    max: 4096
                })
            ),
            "{kind:?}: {err}"
        );
        assert_eq!(
            err.to_string(),
            "frame of 4097 bytes exceeds the limit of 4096 bytes"
        );
        // Nothing was sent, and the connection is still fine.
        c.sender
            .send(Bytes::from_static(b"after"))
            .await
            .expect("send");
        assert_eq!(
            recv(&mut c).await.expect("recv").as_deref(),
            Some(&b"after"[..]),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn over_limit_frame_from_the_peer_closes_the_connection_with_that_reason() {
    for kind in [Kind::Tcp, Kind::Unix, Kind::Ws] {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = TransportConfig::default().max_frame_bytes(1024);
        let big = TransportConfig::default().max_frame_bytes(1 << 20);
        let mut listener = Listener::bind(&listen_addr(kind, &dir), small)
            .await
            .expect("bind");
        let mut client = transport::connect(listener.local_addr(), &big)
            .await
            .expect("connect");
        let mut server = listener.accept().await.expect("accept");

        client
            .sender
            .send(Bytes::from(vec![b'y'; 5000]))
            .await
            .expect("send");
        let err = recv(&mut server).await.expect_err("over limit");
        assert!(
            matches!(
                err,
                TransportError::Framing(FramingError::TooLarge { max: 1024, .. })
            ),
            "{kind:?}: {err}"
        );
        // The receiver is done, and the peer sees the connection close.
        assert!(recv(&mut server).await.expect("fused").is_none());
        match recv(&mut client).await {
            Ok(None) => assert_ne!(kind, Kind::Ws, "WebSocket peers get the reason"),
            Err(TransportError::ClosedByPeer(reason)) => {
                assert_eq!(kind, Kind::Ws);
                assert_eq!(reason.code, CloseReason::TOO_BIG);
                assert!(
                    reason.message.contains("exceeds the limit of 1024"),
                    "{}",
                    reason.message
                );
            }
            Err(TransportError::Io(_)) => assert_ne!(kind, Kind::Ws),
            other => panic!("{kind:?}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn child_process_sending_an_oversize_or_truncated_frame() {
    let config = TransportConfig::default().max_frame_bytes(1024);
    let huge: Address = r#"exec:sh -c 'printf "\377\377\377\377"; sleep 5'"#
        .parse()
        .expect("addr");
    let mut t = transport::connect(&huge, &config).await.expect("spawn");
    let err = recv(&mut t).await.expect_err("too large");
    assert!(
        matches!(
            err,
            TransportError::Framing(FramingError::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ),
        "{err}"
    );

    let cut: Address = r#"exec:sh -c 'printf "\000\000\000\012abc"'"#
        .parse()
        .expect("addr");
    let mut t = transport::connect(&cut, &config).await.expect("spawn");
    let err = recv(&mut t).await.expect_err("truncated");
    assert_eq!(
        err.to_string(),
        "connection closed mid-frame: 7 of 14 bytes received"
    );
    assert_eq!(t.attestation.transport, TransportKind::Process);
}

#[tokio::test]
async fn peer_closing_mid_frame_is_a_clear_error() {
    for kind in [Kind::Tcp, Kind::Unix] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listener = Listener::bind(&listen_addr(kind, &dir), TransportConfig::default())
            .await
            .expect("bind");
        let local = listener.local_addr().clone();
        let raw = tokio::spawn(async move {
            let bytes: &[u8] = &[0, 0, 0, 100, 1, 2, 3];
            match local {
                Address::Tcp(a) => {
                    let mut s = tokio::net::TcpStream::connect(a).await.expect("connect");
                    s.write_all(bytes).await.expect("write");
                }
                Address::Unix(p) => {
                    let mut s = tokio::net::UnixStream::connect(p).await.expect("connect");
                    s.write_all(bytes).await.expect("write");
                }
                _ => unreachable!(),
            }
        });
        let mut server = listener.accept().await.expect("accept");
        raw.await.expect("raw client");
        let err = recv(&mut server).await.expect_err("truncated");
        assert!(
            matches!(
                err,
                TransportError::Framing(FramingError::Truncated { have: 7, need: 104 })
            ),
            "{kind:?}: {err}"
        );
    }

    // A WebSocket peer that drops the TCP connection mid-message.
    let mut listener = Listener::bind(
        &"ws://127.0.0.1:0/".parse().expect("addr"),
        TransportConfig::default(),
    )
    .await
    .expect("bind");
    let Address::Ws { authority, .. } = listener.local_addr().clone() else {
        unreachable!()
    };
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("tcp");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{authority}/"), tcp)
        .await
        .expect("handshake");
    let mut server = listener.accept().await.expect("accept");
    // Write a frame header announcing 100 bytes, 3 bytes of it, then vanish.
    let stream = ws.get_mut();
    stream
        .write_all(&[0x82, 0x80 | 100, 0, 0, 0, 0, 1, 2, 3])
        .await
        .expect("raw");
    drop(ws);
    let got = recv(&mut server).await;
    assert!(
        matches!(
            got,
            Err(TransportError::WebSocket(_) | TransportError::Io(_)) | Ok(None)
        ),
        "{got:?}"
    );
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    // Find a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TransportConfig::default();
    for addr in [
        format!("tcp://127.0.0.1:{port}"),
        format!("ws://127.0.0.1:{port}/"),
        format!("unix://{}", dir.path().join("nobody.sock").display()),
        "exec:/nonexistent/capwire-test-program".to_owned(),
    ] {
        let parsed: Address = addr.parse().expect("addr");
        let err = transport::connect(&parsed, &config).await.expect_err(&addr);
        assert!(
            matches!(err, TransportError::Connect { .. }),
            "{addr}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {addr}")),
            "{err}"
        );
    }
    let err = Listener::bind(&"stdio:".parse().expect("addr"), config)
        .await
        .expect_err("stdio");
    assert!(err.to_string().contains("cannot listen on stdio:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    for kind in [Kind::Tcp, Kind::Unix, Kind::Ws] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TransportConfig::default();
        let mut listener = Listener::bind(&listen_addr(kind, &dir), config.clone())
            .await
            .expect("bind");
        let addr = listener.local_addr().clone();
        let acceptor = tokio::spawn(async move {
            for _ in 0..200 {
                let t = listener.accept().await.expect("accept");
                spawn_echo(t);
            }
            listener
        });
        let mut clients = Vec::new();
        for i in 0..200u32 {
            let addr = addr.clone();
            let config = config.clone();
            clients.push(tokio::spawn(async move {
                let mut t = transport::connect(&addr, &config).await.expect("connect");
                for j in 0..10u32 {
                    let msg = Bytes::from(format!("{i}:{j}"));
                    t.sender.send(msg.clone()).await.expect("send");
                    assert_eq!(recv(&mut t).await.expect("recv"), Some(msg));
                }
            }));
        }
        for c in clients {
            c.await.expect("client");
        }
        acceptor.await.expect("acceptor");
    }
}

#[tokio::test]
async fn close_reasons_reach_the_peer() {
    let config = TransportConfig::default();
    let (a, mut b) = memory_pair(&config);
    a.sender
        .close(CloseReason::new(4000, "bye now"))
        .await
        .expect("close");
    let err = b.receiver.recv().await.expect_err("reason");
    assert_eq!(err.to_string(), "connection closed by peer: 4000 bye now");

    let mut listener = Listener::bind(&"ws://127.0.0.1:0/x".parse().expect("addr"), config.clone())
        .await
        .expect("bind");
    let client = transport::connect(listener.local_addr(), &config)
        .await
        .expect("connect");
    let mut server = listener.accept().await.expect("accept");
    client
        .sender
        .send(Bytes::from_static(b"{}"))
        .await
        .expect("send");
    client
        .sender
        .close(CloseReason::new(3000, "protocol violation"))
        .await
        .expect("close");
    assert_eq!(
        recv(&mut server).await.expect("frame").as_deref(),
        Some(&b"{}"[..])
    );
    let err = recv(&mut server).await.expect_err("close reason");
    assert!(
        matches!(
            err,
            TransportError::ClosedByPeer(CloseReason { code: 3000, .. })
        ),
        "{err}"
    );

    // A normal close is a clean end of stream.
    let (a, mut b) = memory_pair(&config);
    a.sender.close(CloseReason::normal()).await.expect("close");
    assert!(b.receiver.recv().await.expect("clean").is_none());
    assert!(a.sender.send(Bytes::from_static(b"x")).await.is_ok() || a.sender.is_closed());
}

#[tokio::test]
async fn attestation_describes_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TransportConfig::default();

    let mut l = Listener::bind(&listen_addr(Kind::Unix, &dir), config.clone())
        .await
        .expect("bind");
    let _c = transport::connect(l.local_addr(), &config)
        .await
        .expect("connect");
    let s = l.accept().await.expect("accept");
    assert_eq!(s.attestation.transport, TransportKind::Unix);
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc"));
    let cred = s.attestation.unix.expect("SO_PEERCRED");
    assert_eq!(cred.uid, me);
    assert_eq!(
        cred.pid,
        Some(i32::try_from(std::process::id()).expect("pid"))
    );
    assert_eq!(
        s.attestation.identity, None,
        "nothing is trusted by default"
    );

    let mut l = Listener::bind(&"ws://127.0.0.1:0/".parse().expect("addr"), config.clone())
        .await
        .expect("bind");
    let Address::Ws { authority, .. } = l.local_addr().clone() else {
        unreachable!()
    };
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{authority}/agents/7?x=1"),
    )
    .expect("request");
    req.headers_mut()
        .insert("origin", "http://localhost:5173".parse().expect("header"));
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("tcp");
    let (_ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake");
    let s = l.accept().await.expect("accept");
    assert_eq!(s.attestation.transport, TransportKind::WebSocket);
    assert_eq!(s.attestation.path.as_deref(), Some("/agents/7"));
    assert_eq!(
        s.attestation.origin.as_deref(),
        Some("http://localhost:5173")
    );
    assert!(s
        .attestation
        .peer_addr
        .expect("peer")
        .starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn stale_unix_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    let addr = Address::Unix(path.clone());
    // A socket file left behind by a dead process.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let live = Listener::bind(&addr, TransportConfig::default())
        .await
        .expect("replace stale");
    let err = Listener::bind(&addr, TransportConfig::default())
        .await
        .expect_err("in use");
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    drop(live);
    assert!(!path.exists(), "the listener removes its socket file");
}
