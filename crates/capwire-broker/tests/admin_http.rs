//! The admin HTTP API: plain `GET`s answered with JSON behind the token;
//! nothing at all without it; read-only.

use capwire_broker::daemon::{Daemon, DaemonConfig};
use capwire_broker::{Client, Limits};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request on a connection of its own: (status code, JSON body).
async fn request(base: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let authority = base
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("an http:// URL");
    let mut socket = tokio::net::TcpStream::connect(authority).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (code, serde_json::from_str(body).expect("a JSON body"))
}

#[tokio::test]
async fn get_status_endpoints_and_inbox_with_the_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(DaemonConfig::new(dir.path())).await.unwrap();
    let d = daemon.discovery().clone();
    let base = d.admin.clone().expect("the admin API runs by default");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // Something to see: two endpoints, a queued message, an inbox entry.
    let plugin = Client::connect(&d.unix, &d.token).await.unwrap();
    let pid = std::process::id();
    let a = plugin
        .api()
        .register(
            "admin-test".into(),
            pid,
            Some("alice".into()),
            None,
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .endpoint_id;
    let b = plugin
        .api()
        .register("admin-test".into(), pid, None, None, None, None, None)
        .await
        .unwrap()
        .endpoint_id;
    plugin
        .api()
        .send(a, Some(b), None, json!("queued"), None, None)
        .await
        .unwrap();
    plugin
        .api()
        .send(a, Some(9999), None, json!("nobody"), None, None)
        .await
        .unwrap();

    let token = Some(d.token.as_str());
    let (code, status) = request(&base, "GET", "/admin/status", token).await;
    assert_eq!(code, 200);
    assert_eq!(
        (&status["active"], &status["queued"], &status["inbox"]),
        (&json!(2), &json!(1), &json!(1))
    );
    let commits = daemon.broker().status().store.commits;
    assert_eq!(status["store"]["commits"], json!(commits));

    let (code, endpoints) = request(&base, "GET", "/admin/endpoints/", token).await;
    assert_eq!(code, 200);
    assert_eq!(
        endpoints,
        serde_json::to_value(daemon.broker().endpoints()).unwrap()
    );
    assert_eq!(endpoints[0]["label"], json!("alice"));
    assert_eq!(endpoints[1]["queued"], json!(1));

    let (code, inbox) = request(&base, "GET", "/admin/inbox", token).await;
    assert_eq!(code, 200);
    assert_eq!(inbox[0]["reason"], json!("unknown_endpoint"));
    assert_eq!(inbox[0]["envelope"]["content"], json!("nobody"));

    // The token in the query works too (for a browser).
    let (code, _) = request(
        &base,
        "GET",
        &format!("/admin/status?token={}", d.token),
        None,
    )
    .await;
    assert_eq!(code, 200);

    // Without the token, or with a wrong one: unauthenticated and nothing else,
    // whatever the path or method.
    for (method, path, token) in [
        ("GET", "/admin/status", None),
        ("GET", "/admin/endpoints", Some("wrong")),
        ("GET", "/admin/nothing-here", None),
        ("POST", "/admin/inbox", Some("wrong")),
    ] {
        let (code, body) = request(&base, method, path, token).await;
        assert_eq!(code, 401, "{method} {path}");
        assert_eq!(body["error"]["status"], json!("unauthenticated"));
        assert!(body.get("active").is_none() && !body.is_array());
    }
    // With it: read-only, and unknown paths are 404.
    let (code, body) = request(&base, "POST", "/admin/inbox", token).await;
    assert_eq!(
        (code, &body["error"]["status"]),
        (405, &json!("method_not_allowed"))
    );
    let (code, body) = request(&base, "GET", "/admin/nothing-here", token).await;
    assert_eq!((code, &body["error"]["status"]), (404, &json!("not_found")));

    daemon.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DaemonConfig::new(dir.path());
    config.admin_listen = None;
    config.limits = Limits::default();
    let daemon = Daemon::start(config).await.unwrap();
    assert_eq!(daemon.discovery().admin, None);
    daemon.shutdown().await;
}
