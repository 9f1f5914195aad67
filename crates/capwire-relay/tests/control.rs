//! The lease, the agent's requests and the agent's life, end to end over
//! loopback WebSockets with the SDK-based test agent as a child process.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// With the lease on, the first client to drive holds it; the others get
/// `not_controller`; `take_control` hands over and every client is told the
/// new epoch.
#[tokio::test]
async fn only_the_lease_holder_drives() {
    let Some(mut config) = config() else { return };
    config.lease = true;
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    let w = a.attach(json!({"clientId": "laptop"})).await;
    assert_eq!(
        w["lease"],
        json!({"enabled": true, "holder": null, "epoch": 0})
    );
    a.initialize().await;
    let sid = a.new_session().await;
    let r = a
        .request("session/prompt", Client::prompt_params(&sid, "one"))
        .await;
    assert_eq!(r["result"]["stopReason"], "end_turn");

    let mut b = Client::connect(&relay).await;
    let w = b
        .attach(json!({"clientId": "phone", "sessionId": sid}))
        .await;
    assert_eq!(w["lease"]["holder"], "laptop");
    let r = b
        .request("session/prompt", Client::prompt_params(&sid, "two"))
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(r["error"]["data"]["reason"], "not_controller");
    assert_eq!(r["error"]["data"]["holder"], "laptop");
    // A refused notification is not silent either.
    b.send(json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}}))
        .await;
    let v = b.until(|v| v["method"] == "_relay/refused").await;
    assert_eq!(v["params"]["reason"], "not_controller");
    // Viewing is not privileged: listing sessions works.
    let r = b.request("_relay/list_sessions", json!({})).await;
    assert!(r.get("result").is_some());

    let took = b.request("_relay/take_control", json!({})).await;
    assert_eq!(took["result"]["holder"], "phone");
    let epoch = took["result"]["epoch"].as_u64().unwrap();
    for c in [&mut a, &mut b] {
        let v = c
            .seen(|v| v["method"] == "_relay/control" && v["params"]["holder"] == "phone")
            .await;
        assert_eq!(v["params"]["epoch"].as_u64(), Some(epoch));
    }
    let r = a
        .request("session/prompt", Client::prompt_params(&sid, "three"))
        .await;
    assert_eq!(r["error"]["data"]["reason"], "not_controller");
    let r = b
        .request("session/prompt", Client::prompt_params(&sid, "four"))
        .await;
    assert_eq!(r["result"]["stopReason"], "end_turn");
    relay.shutdown().await;
}

/// The agent asks the holder for a permission; the holder drops without
/// answering; the request waits, is in the next device's welcome, is sent
/// to it when it takes control, and its answer reaches the agent.
#[tokio::test]
async fn a_pending_permission_passes_to_the_next_holder() {
    let Some(mut config) = config() else { return };
    config.lease = true;
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.attach(json!({"clientId": "laptop"})).await;
    a.initialize().await;
    let sid = a.new_session().await;
    let mut b = Client::connect(&relay).await;
    b.attach(json!({"clientId": "phone", "sessionId": sid}))
        .await;

    a.start_request("session/prompt", Client::prompt_params(&sid, "permission"))
        .await;
    let ask = a
        .until(|v| v["method"] == "session/request_permission")
        .await;
    let tool_call = ask["params"]["toolCall"]["toolCallId"].clone();
    drop(a);

    // A third device attaches: the welcome names the open permission.
    let mut c = Client::connect(&relay).await;
    let w = c
        .attach(json!({"clientId": "tablet", "sessionId": sid}))
        .await;
    assert_eq!(w["pendingPermissionIds"], json!([tool_call]));
    assert_eq!(w["busy"], true);
    assert!(!c
        .log
        .iter()
        .any(|v| v["method"] == "session/request_permission"));

    b.request("_relay/take_control", json!({})).await;
    let ask = b
        .seen(|v| v["method"] == "session/request_permission")
        .await;
    assert_eq!(ask["params"]["toolCall"]["toolCallId"], tool_call);
    b.send(json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"outcome": {"outcome": "selected", "optionId": "allow"}}}))
        .await;
    for client in [&mut b, &mut c] {
        client
            .until(|v| chunk_text(v) == Some("permission: allow"))
            .await;
        client
            .until(|v| v["method"] == "_relay/turn" && v["params"]["busy"] == false)
            .await;
    }
    // Answering again (or under another id) reaches nobody.
    b.send(
        json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"outcome": {"outcome": "cancelled"}}}),
    )
    .await;
    relay.shutdown().await;
}

/// Nobody left to answer: after the hold timeout the relay answers the
/// agent `cancelled` itself, and the agent is never left waiting.
#[tokio::test]
async fn an_unanswerable_permission_is_cancelled_after_the_hold() {
    let Some(mut config) = config() else { return };
    config.hold_timeout = Duration::from_millis(300);
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.initialize().await;
    let sid = a.new_session().await;
    a.start_request("session/prompt", Client::prompt_params(&sid, "permission"))
        .await;
    a.until(|v| v["method"] == "session/request_permission")
        .await;
    let w = a.attach(json!({"clientId": "laptop"})).await;
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    let last = a.seqs().last().copied().unwrap_or(0);
    drop(a);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut b = Client::connect(&relay).await;
    let w = b
        .attach(json!({"sessionId": sid, "lastSeq": last, "epoch": epoch}))
        .await;
    assert_eq!(w["pendingPermissionIds"], json!([]));
    b.until(|v| chunk_text(v) == Some("permission: cancelled"))
        .await;
    relay.shutdown().await;
}

/// The agent crashes mid-turn: the prompt fails with `agent_exited`, every
/// client is told (through the ring, so a late device learns it too), and
/// with `restart` a new agent serves new sessions.
#[tokio::test]
async fn an_agent_crash_is_reported_and_restarted() {
    let Some(mut config) = config() else { return };
    config.restart = true;
    let relay = start(config).await;
    let mut a = Client::connect(&relay).await;
    a.initialize().await;
    let sid = a.new_session().await;
    let mut b = Client::connect(&relay).await;
    b.attach(json!({"sessionId": sid})).await;
    let r = a
        .request("session/prompt", Client::prompt_params(&sid, "crash"))
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    assert_eq!(r["error"]["data"]["reason"], "agent_exited");
    assert_eq!(r["error"]["data"]["code"], 3);
    for c in [&mut a, &mut b] {
        let v = c.seen(|v| v["method"] == "_relay/agent_exited").await;
        assert_eq!(v["params"]["code"], 3);
        assert_eq!(v["params"]["restarting"], true);
        c.seen(|v| v["method"] == "_relay/agent_started").await;
    }
    // The restarted agent was initialized by the relay: new sessions work.
    let s2 = a.new_session().await;
    assert_ne!(s2, sid);
    let r = a
        .request("session/prompt", Client::prompt_params(&s2, "again"))
        .await;
    assert_eq!(r["result"]["stopReason"], "end_turn");
    // A device attaching later still learns of the crash from the ring.
    let mut c = Client::connect(&relay).await;
    c.attach(json!({"sessionId": sid})).await;
    c.until(|v| v["method"] == "_relay/agent_exited").await;
    relay.shutdown().await;
}

/// Without the pairing token (or with another), nothing is served.
#[tokio::test]
async fn the_pairing_token_is_required() {
    let Some(config) = config() else { return };
    let relay = start(config).await;
    for token in [None, Some("wrong")] {
        let mut c = Client::connect_with(relay.url(), token).await;
        c.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
            .await;
        let v = c.next_frame().await.expect("a refusal");
        assert_eq!(v["error"]["code"], -32000, "{v}");
        assert!(c.next_frame().await.is_none(), "closed after the refusal");
    }
    let url_with_token = format!("{}?token={}", relay.url(), relay.token());
    let mut c = Client::connect_with(&url_with_token, None).await;
    let w = c.attach(json!({})).await;
    assert!(w["clientId"].is_string());
    relay.shutdown().await;
}
