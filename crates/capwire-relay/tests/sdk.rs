//! Clients built on the official ACP SDK's client side (Node, over a
//! WebSocket bridge, `interop/acp/bridge.mjs`) attach to the SDK-based test
//! agent through the relay.

mod common;

use common::*;

/// Two SDK clients; one drops mid-turn and resumes with its last sequence
/// number, ending with every chunk exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_drop_and_resume_without_loss_or_duplicates() {
    let Some(dir) = interop() else { return };
    let Some(config) = config() else { return };
    let relay = start(config).await;
    let out = run_node(&dir, "sdk_resume.mjs", &relay).await;
    assert!(out.contains("\"ok\":true"), "{out}");
    relay.shutdown().await;
}

/// The lease and a permission hand-over with SDK clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_hand_over_a_pending_permission() {
    let Some(dir) = interop() else { return };
    let Some(mut config) = config() else { return };
    config.lease = true;
    let relay = start(config).await;
    let out = run_node(&dir, "sdk_permission.mjs", &relay).await;
    assert!(out.contains("\"ok\":true"), "{out}");
    relay.shutdown().await;
}
