//! A plugin with no Rust in it: `interop/python/broker_plugin.py` registers,
//! sends, receives, acks and replies over JSON-RPC on the WebSocket, and
//! checks the errors of bad input (installed by the README's test command:
//! `pip install -r interop/python/requirements.txt`).

use capwire_broker::daemon::{Daemon, DaemonConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_uses_the_broker_over_json_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(DaemonConfig::new(dir.path())).await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../interop/python/broker_plugin.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(dir.path().join("broker.json"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "the Python plugin failed:\n{stdout}\n{stderr}"
    );
    // It really went through the broker: two python endpoints, both closed
    // by now (bob unregistered; alice's process exited with its connection).
    let closed = || {
        let endpoints = daemon.broker().endpoints();
        endpoints.len() == 2
            && endpoints.iter().all(|e| {
                e.record.kind == "python" && e.record.state == capwire_broker::EndpointState::Closed
            })
    };
    for _ in 0..100 {
        if closed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(closed(), "{:?}", daemon.broker().endpoints());
    daemon.shutdown().await;
}
