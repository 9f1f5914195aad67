//! The page the relay serves at `GET /`, over a real socket, beside the
//! WebSocket clients attaching on the same path.

use std::time::Duration;

use capwire::transport::{self, Address, TransportConfig};
use capwire_relay::{AgentCommand, Relay, RelayConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay whose agent is `cat` (these tests send it nothing).
async fn relay(page: bool) -> Relay {
    let mut config = RelayConfig::new(AgentCommand::new("cat", Vec::<String>::new()));
    config.page = page;
    Relay::start(config).await.expect("relay starts")
}

/// `GET path` over a plain TCP connection: (status line, headers, body).
async fn get(url: &str, path: &str) -> (String, String, Vec<u8>) {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("a ws:// url");
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status.to_owned(), headers.to_ascii_lowercase(), body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

#[tokio::test]
async fn get_slash_serves_the_page_and_websockets_still_attach() {
    let relay = relay(true).await;
    let (status, headers, body) = get(relay.url(), "/").await;
    assert!(status.contains(" 200"), "{status}");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert_eq!(body, capwire_relay::page::PAGE.as_bytes());
    let page = String::from_utf8(body).unwrap();
    for needed in [
        "_relay/attach",
        "session/prompt",
        "location.hash",
        "lastSeq",
    ] {
        assert!(page.contains(needed), "the page lacks {needed}");
    }
    // Unauthenticated: the page holds no secret. Other paths are 404.
    let (status, _, _) = get(relay.url(), "/other").await;
    assert!(status.contains(" 404"), "{status}");

    // The same path still upgrades to the relay's WebSocket, token required.
    let addr: Address = relay.url().parse().unwrap();
    let mut config = TransportConfig::default();
    config.bearer = Some(relay.token().to_owned());
    let mut t = transport::connect(&addr, &config).await.unwrap();
    t.sender
        .send(
            serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "_relay/list_sessions", "params": {}}),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), t.receiver.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_slice(&f).unwrap();
    assert_eq!(v["result"]["sessions"], json!([]), "{v}");
    relay.shutdown().await;
}

#[tokio::test]
async fn the_page_can_be_turned_off() {
    let relay = relay(false).await;
    let (status, _, body) = get(relay.url(), "/").await;
    assert!(!status.contains(" 200"), "{status}");
    assert_ne!(body, capwire_relay::page::PAGE.as_bytes());
    relay.shutdown().await;
}
