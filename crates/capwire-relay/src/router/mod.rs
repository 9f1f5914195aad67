//! The router: which client views which session, where each frame goes, and
//! the ids it goes under. Plain data driven by events and a `now`: no I/O,
//! no clock, no tasks (the daemon drives it and carries out its outputs).
//!
//! Client → agent: requests get a relay id (and their answers come back to
//! the asker under its own id); `session/prompt` is echoed into the
//! session's ring as `user_message_chunk` updates, so every device shows what
//! was typed; privileged methods pass the lease first; `session/load` of a
//! session the relay holds is a replay of its ring, not a trip to the agent.
//!
//! Agent → clients: notifications go into the ring of the session they name
//! (every client viewing it follows the ring); answers go to the one client
//! that asked; the agent's requests go to one client — the lease holder, or
//! without a lease the client that drives the session — and wait, while
//! nobody can answer, for at most the hold timeout before the relay answers
//! `cancelled` (permissions) or an error (anything else) itself.
//!
//! Attaching, switching sessions and the welcome are in [`view`]; the
//! agent's requests to clients (who is asked, hand-over, the hold timeout)
//! in [`requests`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capwire::dialect::jsonrpc::{ErrorObject, INVALID_REQUEST, METHOD_NOT_FOUND};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::delivery::Delivery;
use crate::frame::{self, raw, Envelope, Kind};
use crate::ids::{ConnId, IdMap};
use crate::lease::{self, Lease, Verdict};
use crate::ring::RingLimits;
use crate::session::Sessions;
use crate::welcome::Attach;

mod requests;
mod view;

/// JSON-RPC code for "resource exhausted" (capwire's table).
const RESOURCE_EXHAUSTED: i64 = -32005;

/// Requests one client may have waiting for the agent's answers: past it
/// the relay answers `resource_exhausted`, so a client that floods cannot
/// grow the id tables without bound.
pub(crate) const MAX_IN_FLIGHT_PER_CLIENT: usize = 256;

/// Requests all clients together may have waiting for the agent (those of
/// clients gone since stay until the agent answers them).
pub(crate) const MAX_IN_FLIGHT_TO_AGENT: usize = 4096;

/// JSON-RPC code for "unavailable" (capwire's table): the agent is not running.
const UNAVAILABLE: i64 = -32007;
/// JSON-RPC code for "not found" (capwire's table): an unknown session.
const NOT_FOUND: i64 = -32002;

/// The method name the relay's own `initialize` of a restarted agent is
/// recorded under.
const REINITIALIZE: &str = "_relay/reinitialize";

/// What the router needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub(crate) ring: RingLimits,
    pub(crate) max_sessions: usize,
    pub(crate) lease: bool,
    pub(crate) hold_timeout: Duration,
    /// Prefix of ring epochs (differs per relay start).
    pub(crate) epoch: String,
}

/// What the router wants done.
#[derive(Debug)]
pub(crate) enum Output {
    /// Write a frame to the agent.
    Agent(Bytes),
    /// Hand something to a client's delivery task.
    Deliver(ConnId, Delivery),
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentExit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) restarting: bool,
}

#[derive(Debug)]
struct Conn {
    client_id: String,
    view: Option<String>,
}

pub(crate) struct Router {
    config: RouterConfig,
    sessions: Sessions,
    conns: HashMap<ConnId, Conn>,
    /// Client id → its newest connection.
    clients: HashMap<String, ConnId>,
    /// Client id → the session it viewed last (kept across reconnects).
    last_view: HashMap<String, String>,
    lease: Lease,
    ids: IdMap,
    agent_running: bool,
    agent_starts: u64,
    /// The params of the first `initialize`, sent again to a restarted agent.
    initialize: Option<Box<RawValue>>,
    out: Vec<Output>,
}

impl Router {
    pub(crate) fn new(config: RouterConfig) -> Router {
        Router {
            sessions: Sessions::new(config.ring, config.max_sessions, config.epoch.clone()),
            lease: Lease::new(config.lease),
            config,
            conns: HashMap::new(),
            clients: HashMap::new(),
            last_view: HashMap::new(),
            ids: IdMap::default(),
            agent_running: false,
            agent_starts: 0,
            initialize: None,
            out: Vec::new(),
        }
    }

    /// Takes what the router wants done, in order.
    pub(crate) fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// When [`timeout`](Self::timeout) should run next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.ids.oldest_hold().map(|t| t + self.config.hold_timeout)
    }

    // ---- connections ------------------------------------------------------

    pub(crate) fn connected(&mut self, conn: ConnId) {
        let client_id = format!("conn-{conn}");
        self.clients.insert(client_id.clone(), conn);
        self.conns.insert(
            conn,
            Conn {
                client_id,
                view: None,
            },
        );
    }

    pub(crate) fn disconnected(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if self.clients.get(&c.client_id) == Some(&conn) {
            self.clients.remove(&c.client_id);
        }
        let orphaned = self.ids.conn_closed(conn, now);
        if !orphaned.is_empty() {
            tracing::info!(client = %c.client_id, requests = orphaned.len(), "client left with agent requests open; holding them for the next client");
        }
        self.route_open_requests();
    }

    pub(crate) fn client_frame(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let Some(client) = self.conns.get(&conn).map(|c| c.client_id.clone()) else {
            return;
        };
        let Some(env) = Envelope::parse(bytes) else {
            let e = ErrorObject::new(
                INVALID_REQUEST,
                "not a JSON-RPC 2.0 message (the relay takes one object per WebSocket message)",
            );
            self.direct(conn, frame::error(&frame::null(), &e));
            return;
        };
        match env.kind() {
            Some(Kind::Response) => self.client_answer(conn, &env),
            _ if env.method().starts_with("_relay/") => self.relay_method(conn, &client, &env),
            _ => self.client_call(conn, &client, &env, bytes, now),
        }
    }

    fn client_answer(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let id = env.id_text().unwrap_or("null");
        match self.ids.answered_by_client(conn, id) {
            Some(request) => self.send_agent(frame::with_id(env, &request.agent_id)),
            None => tracing::debug!(
                conn,
                id,
                "an answer to no open request of this client (answered already, or handed over)"
            ),
        }
    }

    fn client_call(
        &mut self,
        conn: ConnId,
        client: &str,
        env: &Envelope<'_>,
        bytes: &[u8],
        now: Instant,
    ) {
        let method = env.method();
        let session = env.session_id();
        if lease::is_privileged(method) {
            match self.lease.check(client) {
                Verdict::Allowed => {}
                Verdict::Claimed => self.broadcast_control(),
                Verdict::NotController => return self.not_controller(conn, env),
            }
        }
        if let Some(s) = session.as_deref().and_then(|s| self.sessions.get_mut(s)) {
            s.last_active = now;
        }
        if method == "session/load" {
            if let (Some(sid), Some(id)) = (&session, env.id) {
                if self.sessions.get(sid).is_some() {
                    // The relay holds it: replay the ring instead of asking
                    // the agent to replay into it again.
                    self.switch_view(conn, Some(sid.clone()), 0, None, None);
                    self.direct(conn, frame::result(id, &json!({})));
                    return;
                }
            }
        }
        if !self.agent_running {
            if let Some(id) = env.id {
                let e = ErrorObject::new(UNAVAILABLE, "the agent is not running")
                    .with_data(json!({"reason": "agent_not_running"}));
                self.direct(conn, frame::error(id, &e));
            }
            return;
        }
        // A client that acts on a session it does not view starts viewing it
        // (from now on, without a replay).
        if let Some(sid) = &session {
            let viewing = self.conns.get(&conn).and_then(|c| c.view.as_deref());
            if viewing.is_none() && self.sessions.get(sid).is_some() {
                let head = self.sessions.get(sid).map_or(0, |s| s.ring.head());
                self.switch_view(conn, Some(sid.clone()), head, None, None);
            }
        }
        match method {
            "session/load" => {
                if let Some(sid) = &session {
                    // Not held: the agent's replay fills a new ring.
                    self.sessions.ensure(sid, now);
                    self.switch_view(conn, Some(sid.clone()), 0, None, None);
                    self.evict();
                }
            }
            "session/prompt" => {
                if let Some(sid) = &session {
                    self.prompt_started(sid, client, env, now);
                }
            }
            "initialize" if self.initialize.is_none() => {
                self.initialize = env.params.map(ToOwned::to_owned);
            }
            "$/cancel_request" => return self.cancel_request(conn, env),
            _ => {}
        }
        match env.id {
            Some(id) if env.kind() == Some(Kind::Request) => {
                let (mine, all) = self.ids.in_flight(conn);
                if mine >= MAX_IN_FLIGHT_PER_CLIENT || all >= MAX_IN_FLIGHT_TO_AGENT {
                    let e = ErrorObject::new(
                        RESOURCE_EXHAUSTED,
                        "too many requests waiting for the agent's answers",
                    )
                    .with_data(json!({
                        "reason": "max_in_flight",
                        "per_client": MAX_IN_FLIGHT_PER_CLIENT,
                        "total": MAX_IN_FLIGHT_TO_AGENT,
                    }));
                    self.direct(conn, frame::error(id, &e));
                    return;
                }
                let relay_id = self.ids.outbound(Some(conn), id, method, session);
                self.send_agent(frame::with_id(env, &raw(relay_id.to_string())));
            }
            _ => self.send_agent(Bytes::copy_from_slice(bytes)),
        }
    }

    /// `$/cancel_request` names the client's id: the agent knows the relay's.
    fn cancel_request(&mut self, conn: ConnId, env: &Envelope<'_>) {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: &'a RawValue,
        }
        let Some(p) = env
            .params
            .and_then(|p| serde_json::from_str::<P<'_>>(p.get()).ok())
        else {
            return;
        };
        if let Some(relay_id) = self.ids.relay_id_of(conn, p.request_id.get()) {
            self.send_agent(frame::notification(
                "$/cancel_request",
                &json!({ "requestId": relay_id }),
            ));
        }
    }

    fn prompt_started(&mut self, sid: &str, client: &str, env: &Envelope<'_>, now: Instant) {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow, default)]
            prompt: Vec<&'a RawValue>,
        }
        self.sessions.ensure(sid, now);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.prompts += 1;
        s.driver = Some(client.to_owned());
        s.last_active = now;
        let ring = s.ring.clone();
        let first_prompt = s.prompts == 1;
        let blocks = env
            .params
            .and_then(|p| serde_json::from_str::<P<'_>>(p.get()).ok())
            .map(|p| p.prompt)
            .unwrap_or_default();
        for block in blocks {
            // What one device typed, shown on every device.
            let update = frame::notification(
                "session/update",
                &json!({
                    "sessionId": sid,
                    "update": {"sessionUpdate": "user_message_chunk", "content": block},
                    "_meta": {"capwireRelay": {"clientId": client}},
                }),
            );
            ring.push(&update);
        }
        if first_prompt {
            ring.push(&frame::notification(
                "_relay/turn",
                &json!({"sessionId": sid, "busy": true, "clientId": client}),
            ));
        }
    }

    fn not_controller(&mut self, conn: ConnId, env: &Envelope<'_>) {
        let state = self.lease.state();
        let message =
            "not_controller: another device holds the controller lease; take control first";
        let data = json!({"reason": "not_controller", "status": "permission_denied", "holder": state.holder, "epoch": state.epoch});
        match env.id {
            Some(id) if env.kind() == Some(Kind::Request) => {
                let e = ErrorObject::new(lease::NOT_CONTROLLER_CODE, message).with_data(data);
                self.direct(conn, frame::error(id, &e));
            }
            // A notification has no answer: say so in a notification.
            _ => self.direct(
                conn,
                frame::notification(
                    "_relay/refused",
                    &json!({"method": env.method(), "reason": "not_controller", "holder": state.holder, "epoch": state.epoch}),
                ),
            ),
        }
    }

    // ---- the relay's own methods -----------------------------------------

    fn relay_method(&mut self, conn: ConnId, client: &str, env: &Envelope<'_>) {
        let id = env.id.filter(|_| env.kind() == Some(Kind::Request));
        match env.method() {
            "_relay/attach" => {
                let params: Attach = match env.params.map(|p| serde_json::from_str(p.get())) {
                    None => Attach::default(),
                    Some(Ok(p)) => p,
                    Some(Err(e)) => return self.bad_params(conn, id, &e.to_string()),
                };
                self.attach(conn, id, params);
            }
            "_relay/take_control" => {
                let epoch = self.lease.take(client);
                tracing::info!(client, epoch, "take_control");
                self.broadcast_control();
                self.route_open_requests();
                if let Some(id) = id {
                    self.direct(conn, frame::result(id, &self.lease.state()));
                }
            }
            "_relay/release_control" => {
                let released = self.lease.release(client);
                if released {
                    self.broadcast_control();
                    self.route_open_requests();
                }
                if let Some(id) = id {
                    self.direct(conn, frame::result(id, &json!({"released": released})));
                }
            }
            "_relay/list_sessions" => {
                let viewers = self.viewers();
                let pending = self.sessions_with_requests();
                let mut list: Vec<_> = self
                    .sessions
                    .iter()
                    .map(|s| {
                        json!({
                            "sessionId": s.id,
                            "headSeq": s.ring.head(),
                            "busy": s.busy(),
                            "viewers": viewers.get(&s.id).copied().unwrap_or(0),
                            "pendingRequests": pending.get(&s.id).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                list.sort_by(|a, b| a["sessionId"].as_str().cmp(&b["sessionId"].as_str()));
                if let Some(id) = id {
                    self.direct(conn, frame::result(id, &json!({ "sessions": list })));
                }
            }
            other => {
                if let Some(id) = id {
                    let e =
                        ErrorObject::new(METHOD_NOT_FOUND, format!("unknown relay method {other}"));
                    self.direct(conn, frame::error(id, &e));
                }
            }
        }
    }

    fn bad_params(&mut self, conn: ConnId, id: Option<&RawValue>, why: &str) {
        if let Some(id) = id {
            let e = ErrorObject::new(capwire::dialect::jsonrpc::INVALID_PARAMS, why.to_owned());
            self.direct(conn, frame::error(id, &e));
        }
    }

    // ---- the agent --------------------------------------------------------

    pub(crate) fn agent_started(&mut self, now: Instant) {
        self.agent_running = true;
        self.agent_starts += 1;
        if self.agent_starts > 1 {
            // The new process knows nothing: initialize it as the first
            // client did (its sessions are gone; clients make new ones), and
            // announce it once it is ready for them.
            match self.initialize.clone() {
                Some(params) => {
                    let id = self.ids.outbound(None, &frame::null(), REINITIALIZE, None);
                    self.send_agent(frame::request(
                        &raw(id.to_string()),
                        "initialize",
                        Some(&params),
                    ));
                }
                None => self.announce_restart(),
            }
        }
        let _ = now;
    }

    fn announce_restart(&mut self) {
        self.broadcast(&frame::notification(
            "_relay/agent_started",
            &json!({"starts": self.agent_starts}),
        ));
    }

    pub(crate) fn agent_exited(&mut self, exit: AgentExit, now: Instant) {
        self.agent_running = false;
        let (outbound, inbound) = self.ids.agent_gone();
        for o in outbound {
            if let Some(conn) = o.conn {
                let e = ErrorObject::new(UNAVAILABLE, "the agent exited before answering")
                    .with_data(
                        json!({"reason": "agent_exited", "code": exit.code, "signal": exit.signal}),
                    );
                self.direct(conn, frame::error(&o.client_id, &e));
            }
        }
        if !inbound.is_empty() {
            tracing::info!(
                requests = inbound.len(),
                "agent requests dropped with the agent"
            );
        }
        for s in self.sessions.iter_mut() {
            if s.prompts > 0 {
                s.prompts = 0;
                s.ring.push(&frame::notification(
                    "_relay/turn",
                    &json!({"sessionId": s.id, "busy": false, "stopReason": null, "reason": "agent_exited"}),
                ));
            }
            s.last_active = now;
        }
        self.broadcast(&frame::notification(
            "_relay/agent_exited",
            &json!({"code": exit.code, "signal": exit.signal, "restarting": exit.restarting}),
        ));
    }

    pub(crate) fn agent_frame(&mut self, bytes: &[u8], now: Instant) {
        let Some(env) = Envelope::parse(bytes) else {
            tracing::warn!(
                frame = %String::from_utf8_lossy(&bytes[..bytes.len().min(200)]),
                "the agent sent something that is not one JSON-RPC message; dropped"
            );
            return;
        };
        match env.kind() {
            Some(Kind::Response) => self.agent_answer(&env, now),
            Some(Kind::Request) => self.agent_request(&env, now),
            _ => self.agent_notification(&env, bytes, now),
        }
    }

    fn agent_answer(&mut self, env: &Envelope<'_>, now: Instant) {
        let Some(out) = env.id_text().and_then(|id| self.ids.answered_by_agent(id)) else {
            tracing::warn!(id = ?env.id_text(), "the agent answered a request nobody sent");
            return;
        };
        match out.method.as_str() {
            REINITIALIZE => {
                if env.error.is_some() {
                    tracing::warn!("the restarted agent refused the replayed initialize");
                }
                self.announce_restart();
            }
            "session/prompt" => {
                if let Some(s) = out
                    .session
                    .as_deref()
                    .and_then(|s| self.sessions.get_mut(s))
                {
                    s.prompts = s.prompts.saturating_sub(1);
                    s.last_active = now;
                    if s.prompts == 0 {
                        let stop = env.result.and_then(|r| {
                            serde_json::from_str::<serde_json::Value>(r.get())
                                .ok()
                                .and_then(|v| v.get("stopReason").cloned())
                        });
                        let turn = frame::notification(
                            "_relay/turn",
                            &json!({"sessionId": s.id, "busy": false, "stopReason": stop}),
                        );
                        // The answer itself goes to the asker only, so the
                        // ring says the turn ended before it is answered.
                        s.ring.push(&turn);
                    }
                }
            }
            "session/new" => {
                #[derive(Deserialize)]
                struct R {
                    #[serde(rename = "sessionId")]
                    session_id: String,
                }
                let sid = env
                    .result
                    .and_then(|r| serde_json::from_str::<R>(r.get()).ok())
                    .map(|r| r.session_id);
                if let Some(sid) = sid {
                    self.sessions.ensure(&sid, now);
                    if let Some(conn) = out.conn {
                        self.switch_view(conn, Some(sid), 0, None, None);
                    }
                    self.evict();
                }
            }
            _ => {}
        }
        if let Some(conn) = out.conn {
            self.direct(conn, frame::with_id(env, &out.client_id));
        }
    }

    fn agent_notification(&mut self, env: &Envelope<'_>, bytes: &[u8], now: Instant) {
        match env.session_id() {
            Some(sid) => {
                if self.sessions.ensure(&sid, now) {
                    tracing::debug!(session = %sid, "a session the relay had not seen");
                    self.evict();
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.last_active = now;
                    s.ring.push(bytes);
                }
            }
            None => self.broadcast(bytes),
        }
    }

    // ---- output helpers ---------------------------------------------------

    fn send_agent(&mut self, bytes: Bytes) {
        self.out.push(Output::Agent(bytes));
    }

    /// A frame for `conn` alone, in its place after the ring frames sent so far.
    fn direct(&mut self, conn: ConnId, bytes: Bytes) {
        let after = self
            .conns
            .get(&conn)
            .and_then(|c| c.view.as_deref())
            .and_then(|s| self.sessions.get(s))
            .map_or(0, |s| s.ring.head());
        self.out
            .push(Output::Deliver(conn, Delivery::Frame { bytes, after }));
    }

    /// Into every session's ring, and to every client that views none.
    fn broadcast(&mut self, bytes: &[u8]) {
        for s in self.sessions.iter() {
            s.ring.push(bytes);
        }
        let unviewed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.view.is_none())
            .map(|(id, _)| *id)
            .collect();
        for conn in unviewed {
            self.direct(conn, Bytes::copy_from_slice(bytes));
        }
    }

    fn broadcast_control(&mut self) {
        let state = self.lease.state();
        self.broadcast(&frame::notification("_relay/control", &state));
    }

    fn viewers(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for c in self.conns.values() {
            if let Some(v) = &c.view {
                *n.entry(v.clone()).or_insert(0) += 1;
            }
        }
        n
    }

    fn sessions_with_requests(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for r in self.ids.open_inbound() {
            if let Some(s) = &r.session {
                *n.entry(s.clone()).or_insert(0) += 1;
            }
        }
        n
    }

    fn evict(&mut self) {
        let viewed: HashSet<String> = self.viewers().into_keys().collect();
        let owed: HashSet<String> = self.sessions_with_requests().into_keys().collect();
        for sid in self.sessions.evict(&viewed, &owed) {
            tracing::warn!(session = %sid, cap = self.config.max_sessions, "evicted the oldest idle, unviewed session (over the cap on live sessions)");
            self.last_view.retain(|_, s| *s != sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::new(RouterConfig {
            ring: RingLimits {
                frames: 64,
                bytes: 1 << 20,
            },
            max_sessions: 4,
            lease: false,
            hold_timeout: Duration::from_secs(60),
            epoch: "t".into(),
        });
        r.agent_started(Instant::now());
        r.take_output();
        r
    }

    fn request(r: &mut Router, conn: ConnId, id: usize) {
        let frame = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"x/y","params":{{}}}}"#);
        r.client_frame(conn, frame.as_bytes(), Instant::now());
    }

    /// Counts what went to the agent, and the client frames that are errors
    /// with `code`.
    fn outcome(r: &mut Router, code: i64) -> (usize, usize) {
        let mut sent = 0;
        let mut refused = 0;
        for out in r.take_output() {
            match out {
                Output::Agent(_) => sent += 1,
                Output::Deliver(_, Delivery::Frame { bytes, .. }) => {
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    if v["error"]["code"] == code {
                        refused += 1;
                    }
                }
                Output::Deliver(..) => {}
            }
        }
        (sent, refused)
    }

    #[test]
    fn a_client_that_floods_the_agent_is_bounded() {
        let mut r = router();
        r.connected(1);
        r.connected(2);
        r.take_output();
        for id in 0..MAX_IN_FLIGHT_PER_CLIENT + 10 {
            request(&mut r, 1, id);
        }
        assert_eq!(
            outcome(&mut r, RESOURCE_EXHAUSTED),
            (MAX_IN_FLIGHT_PER_CLIENT, 10)
        );
        // Another client is not held back by the first one's requests.
        request(&mut r, 2, 0);
        assert_eq!(outcome(&mut r, RESOURCE_EXHAUSTED), (1, 0));
        // An answer frees a place.
        r.agent_frame(br#"{"jsonrpc":"2.0","id":1,"result":null}"#, Instant::now());
        r.take_output();
        request(&mut r, 1, 9999);
        assert_eq!(outcome(&mut r, RESOURCE_EXHAUSTED), (1, 0));
        // A client gone leaves its requests counted in the total only.
        r.disconnected(1, Instant::now());
        r.connected(3);
        r.take_output();
        request(&mut r, 3, 0);
        assert_eq!(outcome(&mut r, RESOURCE_EXHAUSTED), (1, 0));
        assert_eq!(r.ids.in_flight(3), (1, MAX_IN_FLIGHT_PER_CLIENT + 2));
    }

    #[test]
    fn all_clients_together_are_bounded_too() {
        let mut r = router();
        let clients = MAX_IN_FLIGHT_TO_AGENT / MAX_IN_FLIGHT_PER_CLIENT + 2;
        let mut totals = (0, 0);
        for conn in 1..=clients as ConnId {
            r.connected(conn);
            r.take_output();
            for id in 0..MAX_IN_FLIGHT_PER_CLIENT {
                request(&mut r, conn, id);
            }
            let (sent, refused) = outcome(&mut r, RESOURCE_EXHAUSTED);
            totals = (totals.0 + sent, totals.1 + refused);
        }
        let asked = clients * MAX_IN_FLIGHT_PER_CLIENT;
        assert_eq!(
            totals,
            (MAX_IN_FLIGHT_TO_AGENT, asked - MAX_IN_FLIGHT_TO_AGENT)
        );
    }
}
