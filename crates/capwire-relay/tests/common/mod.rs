//! Helpers for the relay's end-to-end tests: a relay in this process with the
//! SDK-based test agent (`interop/acp/agent.mjs`) as a real child process,
//! and a raw JSON-RPC WebSocket client over loopback.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use capwire::transport::{self, Address, FrameReceiver, FrameSender, TransportConfig};
use capwire_relay::{AgentCommand, Relay, RelayConfig};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(20);

/// The interop directory, or None when Node tests are skipped.
pub fn interop() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    if dir.join("node_modules/@agentclientprotocol/sdk").exists() {
        return Some(dir);
    }
    if std::env::var_os("CAPWIRE_SKIP_NODE").is_some() {
        eprintln!("skipping: CAPWIRE_SKIP_NODE is set");
        return None;
    }
    panic!("the interop packages are not installed: run `npm ci --prefix interop`");
}

/// A relay config for the test agent (None when Node tests are skipped).
pub fn config() -> Option<RelayConfig> {
    let dir = interop()?;
    let agent = AgentCommand::new("node", [dir.join("acp/agent.mjs").display().to_string()]);
    Some(RelayConfig::new(agent))
}

pub async fn start(config: RelayConfig) -> Relay {
    let _ = tracing_init();
    Relay::start(config).await.expect("relay starts")
}

fn tracing_init() -> Option<()> {
    None
}

/// A raw JSON-RPC client: everything it receives is kept in `log`, in order.
pub struct Client {
    pub tx: FrameSender,
    rx: FrameReceiver,
    next: u64,
    pub log: Vec<Value>,
    /// Why the connection ended, once it has.
    pub closed: Option<String>,
    /// Index in `log` of the first frame not yet looked at by `until`.
    cursor: usize,
}

impl Client {
    pub async fn connect(relay: &Relay) -> Client {
        Client::connect_with(relay.url(), Some(relay.token())).await
    }

    pub async fn connect_with(url: &str, token: Option<&str>) -> Client {
        let addr: Address = url.parse().expect("ws url");
        let mut config = TransportConfig::default();
        config.bearer = token.map(str::to_owned);
        let t = transport::connect(&addr, &config).await.expect("connect");
        Client {
            tx: t.sender,
            rx: t.receiver,
            next: 0,
            log: Vec::new(),
            closed: None,
            cursor: 0,
        }
    }

    pub async fn send(&self, v: Value) {
        self.tx
            .send(serde_json::to_vec(&v).unwrap().into())
            .await
            .expect("send");
    }

    /// The next frame, or None when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        let f = match tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a frame in time")
        {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.closed = Some("closed".into());
                return None;
            }
            Err(e) => {
                self.closed = Some(e.to_string());
                return None;
            }
        };
        let v: Value = serde_json::from_slice(&f).expect("JSON from the relay");
        self.log.push(v.clone());
        Some(v)
    }

    /// Sends a request and returns its response (other frames go to `log`).
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = format!("t{}", self.next);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.until(|v| v["id"] == json!(id) && v.get("method").is_none())
            .await
    }

    /// Sends a request without waiting; returns its id.
    pub async fn start_request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = json!(format!("t{}", self.next));
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        id
    }

    /// The first frame from the cursor on that matches (reading more as needed).
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            while self.cursor < self.log.len() {
                let v = &self.log[self.cursor];
                self.cursor += 1;
                if pred(v) {
                    return v.clone();
                }
            }
            if self.next_frame().await.is_none() {
                panic!("connection closed while waiting; log: {:#?}", self.log);
            }
        }
    }

    /// Like [`until`](Self::until), but looks at everything received so far
    /// first (a frame may have arrived before an answer that was awaited).
    pub async fn seen(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> Value {
        if let Some(v) = self.log.iter().find(|v| pred(v)) {
            return v.clone();
        }
        self.until(pred).await
    }

    pub async fn attach(&mut self, params: Value) -> Value {
        let r = self.request("_relay/attach", params).await;
        assert!(r.get("error").is_none(), "attach failed: {r}");
        r["result"].clone()
    }

    pub async fn initialize(&mut self) {
        let r = self
            .request(
                "initialize",
                json!({"protocolVersion": 1, "clientCapabilities": {}}),
            )
            .await;
        assert!(r.get("result").is_some(), "initialize: {r}");
    }

    pub async fn new_session(&mut self) -> String {
        let r = self
            .request("session/new", json!({"cwd": "/tmp", "mcpServers": []}))
            .await;
        r["result"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    pub fn prompt_params(session: &str, text: &str) -> Value {
        json!({"sessionId": session, "prompt": [{"type": "text", "text": text}]})
    }

    /// Every `_seq` in `log`, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.log.iter().filter_map(|v| v["_seq"].as_u64()).collect()
    }

    /// Agent text chunks in `log`, in order.
    pub fn chunks(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|v| chunk_text(v).map(str::to_owned))
            .collect()
    }

    pub async fn close(self) {
        let _ = self
            .tx
            .close(capwire::transport::CloseReason::normal())
            .await;
    }
}

pub fn chunk_text(v: &Value) -> Option<&str> {
    (v["method"] == "session/update"
        && v["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .then(|| v["params"]["update"]["content"]["text"].as_str())
        .flatten()
}

/// Asserts `seqs` are consecutive.
pub fn assert_consecutive(seqs: &[u64]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a hole or a duplicate in {seqs:?}");
    }
}

/// Runs a Node script from `interop/acp` with the relay's URL and token.
pub async fn run_node(dir: &std::path::Path, script: &str, relay: &Relay) -> String {
    let out = tokio::process::Command::new("node")
        .arg(dir.join("acp").join(script))
        .arg(relay.url())
        .arg(relay.token())
        .current_dir(dir)
        .output()
        .await
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
