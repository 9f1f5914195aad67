//! What a client views: `_relay/attach` (the welcome, then the gap of the
//! session's ring), switching to another session (`session/new`,
//! `session/load`), and the welcome's facts (open permission requests, the
//! agent's state).

use bytes::Bytes;
use capwire::dialect::jsonrpc::ErrorObject;
use serde_json::json;
use serde_json::value::RawValue;

use super::{Output, Router, NOT_FOUND};
use crate::delivery::Delivery;
use crate::frame;
use crate::ids::ConnId;
use crate::welcome::{AgentState, Attach, Welcome};

impl Router {
    pub(super) fn attach(&mut self, conn: ConnId, id: Option<&RawValue>, p: Attach) {
        if let Some(new) = p.client_id.filter(|c| !c.is_empty() && c.len() <= 200) {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let old = std::mem::replace(&mut c.client_id, new.clone());
            if self.clients.get(&old) == Some(&conn) {
                self.clients.remove(&old);
            }
            self.clients.insert(new, conn);
        }
        let Some(client) = self.conns.get(&conn).map(|c| c.client_id.clone()) else {
            return;
        };
        let session = match p.session_id {
            Some(s) if self.sessions.get(&s).is_none() => {
                if let Some(id) = id {
                    let e = ErrorObject::new(NOT_FOUND, format!("no live session {s}"))
                        .with_data(json!({"reason": "unknown_session"}));
                    self.direct(conn, frame::error(id, &e));
                }
                return;
            }
            Some(s) => Some(s),
            None => self
                .last_view
                .get(&client)
                .filter(|s| self.sessions.get(s).is_some())
                .cloned()
                .or_else(|| self.sessions.most_recent().map(str::to_owned)),
        };
        self.switch_view(
            conn,
            session,
            p.last_seq.unwrap_or(0),
            p.epoch.as_deref(),
            id,
        );
        self.route_open_requests();
    }

    /// Points `conn` at `session`, replaying after `last_seq`: the welcome
    /// (as the answer to `reply_to`, or a `_relay/welcome` notification),
    /// then the gap; open requests and live frames follow.
    pub(super) fn switch_view(
        &mut self,
        conn: ConnId,
        session: Option<String>,
        last_seq: u64,
        epoch: Option<&str>,
        reply_to: Option<&RawValue>,
    ) {
        let Some(client) = self.conns.get(&conn).map(|c| c.client_id.clone()) else {
            return;
        };
        let welcome;
        match session.as_deref().and_then(|s| self.sessions.get(s)) {
            Some(s) => {
                let ring = s.ring.clone();
                let (replay, head, first, ring_epoch) = {
                    let r = ring.lock();
                    (
                        r.replay(last_seq, epoch),
                        r.head(),
                        r.first(),
                        r.epoch().to_owned(),
                    )
                };
                welcome = Welcome {
                    client_id: client.clone(),
                    session_id: Some(s.id.clone()),
                    epoch: Some(ring_epoch),
                    head_seq: head,
                    first_seq: first,
                    reset: replay.reset,
                    busy: s.busy(),
                    pending_permission_ids: self.permission_ids(&s.id),
                    lease: self.lease.state(),
                    agent: self.agent_state(),
                };
                let sid = s.id.clone();
                self.last_view.insert(client, sid.clone());
                self.out.push(Output::Deliver(
                    conn,
                    Delivery::View {
                        session: sid.clone(),
                        ring,
                        next: replay.from,
                    },
                ));
                let bytes = welcome_frame(&welcome, reply_to);
                // Nothing of the ring before the welcome.
                self.out.push(Output::Deliver(
                    conn,
                    Delivery::Frame {
                        bytes,
                        after: replay.from - 1,
                    },
                ));
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.view = Some(sid);
                }
            }
            None => {
                welcome = Welcome {
                    client_id: client,
                    session_id: None,
                    epoch: None,
                    head_seq: 0,
                    first_seq: 1,
                    reset: false,
                    busy: false,
                    pending_permission_ids: Vec::new(),
                    lease: self.lease.state(),
                    agent: self.agent_state(),
                };
                self.out.push(Output::Deliver(conn, Delivery::NoView));
                let bytes = welcome_frame(&welcome, reply_to);
                self.out
                    .push(Output::Deliver(conn, Delivery::Frame { bytes, after: 0 }));
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.view = None;
                }
            }
        }
    }

    pub(super) fn permission_ids(&self, session: &str) -> Vec<serde_json::Value> {
        self.ids
            .open_inbound()
            .into_iter()
            .filter(|r| r.session.as_deref() == Some(session))
            .filter_map(|r| r.tool_call_id.clone())
            .collect()
    }

    pub(super) fn agent_state(&self) -> AgentState {
        AgentState {
            running: self.agent_running,
            starts: self.agent_starts,
        }
    }
}

fn welcome_frame(welcome: &Welcome, reply_to: Option<&RawValue>) -> Bytes {
    match reply_to {
        Some(id) => frame::result(id, welcome),
        None => frame::notification("_relay/welcome", welcome),
    }
}
