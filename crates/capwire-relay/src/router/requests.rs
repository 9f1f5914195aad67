//! The agent's requests to clients (`session/request_permission`, file and
//! terminal requests): each goes to one client — the lease holder, or the
//! client driving its session — moves when that changes (hand-over), and is
//! answered by the relay itself when nobody could be asked for the hold
//! timeout.

use std::time::Instant;

use capwire::dialect::jsonrpc::{ErrorObject, INVALID_REQUEST};
use serde::Deserialize;
use serde_json::json;

use super::{Router, UNAVAILABLE};
use crate::frame::{self, raw, Envelope};
use crate::ids::{ConnId, Inbound};

impl Router {
    pub(super) fn agent_request(&mut self, env: &Envelope<'_>, now: Instant) {
        #[derive(Deserialize)]
        struct P {
            #[serde(rename = "toolCall")]
            tool_call: Option<T>,
        }
        #[derive(Deserialize)]
        struct T {
            #[serde(rename = "toolCallId")]
            tool_call_id: Option<serde_json::Value>,
        }
        let Some(agent_id) = env.id else { return };
        let session = env.session_id();
        let tool_call_id = env
            .params
            .and_then(|p| serde_json::from_str::<P>(p.get()).ok())
            .and_then(|p| p.tool_call)
            .and_then(|t| t.tool_call_id);
        let fresh = self.ids.inbound(Inbound {
            agent_id: agent_id.to_owned(),
            method: env.method().to_owned(),
            params: env.params.map(ToOwned::to_owned),
            session,
            tool_call_id,
            assigned: None,
            held_since: Some(now),
            arrival: 0,
        });
        if !fresh {
            let e = ErrorObject::new(INVALID_REQUEST, "a request with this id is already open");
            self.send_agent(frame::error(agent_id, &e));
            return;
        }
        self.route_open_requests();
    }

    /// Answers the agent's requests nobody could be asked for the hold timeout.
    pub(crate) fn timeout(&mut self, now: Instant) {
        let Some(deadline) = now.checked_sub(self.config.hold_timeout) else {
            return;
        };
        for agent_id in self.ids.held_before(deadline) {
            let Some(r) = self.ids.settle(&agent_id) else {
                continue;
            };
            tracing::info!(method = %r.method, "no client answered in time; the relay answers");
            let answer = if r.method == "session/request_permission" {
                frame::result(&r.agent_id, &json!({"outcome": {"outcome": "cancelled"}}))
            } else {
                let e = ErrorObject::new(UNAVAILABLE, "no client could answer in time")
                    .with_data(json!({"reason": "no_client"}));
                frame::error(&r.agent_id, &e)
            };
            self.send_agent(answer);
        }
    }

    /// The connection that must answer the agent's requests of `session`.
    fn target(&self, session: Option<&str>) -> Option<ConnId> {
        let live = |client: &str| self.clients.get(client).copied();
        if self.lease.enabled() {
            if let Some(holder) = self.lease.holder() {
                return live(holder);
            }
        }
        let s = session.and_then(|s| self.sessions.get(s))?;
        if let Some(conn) = s.driver.as_deref().and_then(live) {
            return Some(conn);
        }
        self.conns
            .iter()
            .filter(|(_, c)| c.view.as_deref() == Some(s.id.as_str()))
            .map(|(id, _)| *id)
            .min()
    }

    /// Sends every open agent request whose target changed (nobody asked,
    /// or not the lease holder) to its target.
    pub(super) fn route_open_requests(&mut self) {
        let moves: Vec<(String, ConnId)> = self
            .ids
            .open_inbound()
            .into_iter()
            .filter_map(|r| {
                let target = self.target(r.session.as_deref())?;
                let asked = r.assigned.map(|(c, _)| c);
                let stale = match asked {
                    None => true,
                    Some(c) => self.lease.enabled() && c != target,
                };
                stale.then(|| (r.agent_id.get().to_owned(), target))
            })
            .collect();
        for (agent_id, conn) in moves {
            let Some(client_id) = self.ids.ask(&agent_id, conn) else {
                continue;
            };
            let Some(r) = self.ids.inbound_request(&agent_id) else {
                continue;
            };
            let bytes = frame::request(&raw(client_id.to_string()), &r.method, r.params.as_deref());
            self.direct(conn, bytes);
        }
    }
}
