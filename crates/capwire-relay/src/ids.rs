//! Id rewriting, both ways. JSON-RPC ids are per connection and requests
//! flow both ways, while the agent sees one connection: the relay's.
//!
//! - A client's request goes to the agent under a fresh relay id; the
//!   agent's response comes back to that client under the client's own id.
//! - An agent's request is kept (by the agent's id) until it is answered;
//!   it is sent to one client at a time under a fresh client-facing id, and
//!   only that client's answer under that id reaches the agent. Sending it
//!   to another client (a hand-over) forgets the earlier id.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::value::RawValue;

/// A connection, numbered by the relay.
pub(crate) type ConnId = u64;

/// A request on its way to the agent.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// Who asked; `None` for the relay's own requests (or a client gone since).
    pub(crate) conn: Option<ConnId>,
    /// The client's id, to answer under.
    pub(crate) client_id: Box<RawValue>,
    pub(crate) method: String,
    pub(crate) session: Option<String>,
}

/// A request from the agent waiting for a client's answer.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) agent_id: Box<RawValue>,
    pub(crate) method: String,
    pub(crate) params: Option<Box<RawValue>>,
    pub(crate) session: Option<String>,
    /// `params.toolCall.toolCallId` of a permission request.
    pub(crate) tool_call_id: Option<serde_json::Value>,
    /// The client asked now, and the id it was asked under.
    pub(crate) assigned: Option<(ConnId, u64)>,
    /// Since when nobody has been asked (the hold timer), if nobody is.
    pub(crate) held_since: Option<Instant>,
    /// Arrival order (set by [`IdMap::inbound`]).
    pub(crate) arrival: u64,
}

#[derive(Debug, Default)]
pub(crate) struct IdMap {
    next_out: u64,
    outbound: HashMap<u64, Outbound>,
    /// (connection, the client's id as JSON text) → relay id.
    by_client: HashMap<(ConnId, String), u64>,
    next_in: u64,
    next_arrival: u64,
    /// Agent id as JSON text → the request.
    inbound: HashMap<String, Inbound>,
    /// (connection, client-facing id) → agent id text.
    asked: HashMap<(ConnId, u64), String>,
    /// Requests each live connection has in flight to the agent.
    per_conn: HashMap<ConnId, usize>,
}

impl IdMap {
    /// Records a request `conn` sends under `client_id`; returns the relay
    /// id the agent sees.
    pub(crate) fn outbound(
        &mut self,
        conn: Option<ConnId>,
        client_id: &RawValue,
        method: &str,
        session: Option<String>,
    ) -> u64 {
        self.next_out += 1;
        let id = self.next_out;
        if let Some(c) = conn {
            self.by_client.insert((c, client_id.get().to_owned()), id);
            *self.per_conn.entry(c).or_default() += 1;
        }
        self.outbound.insert(
            id,
            Outbound {
                conn,
                client_id: client_id.to_owned(),
                method: method.to_owned(),
                session,
            },
        );
        id
    }

    /// The agent answered relay id `id` (its JSON text).
    pub(crate) fn answered_by_agent(&mut self, id: &str) -> Option<Outbound> {
        let id: u64 = id.parse().ok()?;
        let out = self.outbound.remove(&id)?;
        if let Some(c) = out.conn {
            self.by_client.remove(&(c, out.client_id.get().to_owned()));
            if let Some(n) = self.per_conn.get_mut(&c) {
                *n = n.saturating_sub(1);
            }
        }
        Some(out)
    }

    /// Requests `conn` has in flight to the agent, and all requests in
    /// flight to the agent (of live clients, gone ones and the relay's).
    pub(crate) fn in_flight(&self, conn: ConnId) -> (usize, usize) {
        let mine = self.per_conn.get(&conn).copied().unwrap_or(0);
        (mine, self.outbound.len())
    }

    /// The relay id of `conn`'s request `client_id`, for `$/cancel_request`.
    pub(crate) fn relay_id_of(&self, conn: ConnId, client_id: &str) -> Option<u64> {
        self.by_client.get(&(conn, client_id.to_owned())).copied()
    }

    /// Records a request from the agent; false if one with its id is open.
    pub(crate) fn inbound(&mut self, mut request: Inbound) -> bool {
        let key = request.agent_id.get().to_owned();
        if self.inbound.contains_key(&key) {
            return false;
        }
        self.next_arrival += 1;
        request.arrival = self.next_arrival;
        self.inbound.insert(key, request);
        true
    }

    pub(crate) fn inbound_request(&self, agent_id: &str) -> Option<&Inbound> {
        self.inbound.get(agent_id)
    }

    /// Open requests from the agent, oldest first.
    pub(crate) fn open_inbound(&self) -> Vec<&Inbound> {
        let mut open: Vec<&Inbound> = self.inbound.values().collect();
        open.sort_by_key(|r| r.arrival);
        open
    }

    /// Asks `conn` the agent's request `agent_id`: the client-facing id to
    /// send it under (a previous client's id is forgotten).
    pub(crate) fn ask(&mut self, agent_id: &str, conn: ConnId) -> Option<u64> {
        self.next_in += 1;
        let client_id = self.next_in;
        let request = self.inbound.get_mut(agent_id)?;
        if let Some(prev) = request.assigned.take() {
            self.asked.remove(&prev);
        }
        request.assigned = Some((conn, client_id));
        request.held_since = None;
        self.asked.insert((conn, client_id), agent_id.to_owned());
        Some(client_id)
    }

    /// Nobody is asked `agent_id` any more (its client left).
    pub(crate) fn unask(&mut self, agent_id: &str, now: Instant) {
        if let Some(request) = self.inbound.get_mut(agent_id) {
            if let Some(prev) = request.assigned.take() {
                self.asked.remove(&prev);
            }
            request.held_since.get_or_insert(now);
        }
    }

    /// `conn` answered under client-facing id `id` (its JSON text): the
    /// request, if `conn` is the one asked.
    pub(crate) fn answered_by_client(&mut self, conn: ConnId, id: &str) -> Option<Inbound> {
        let id: u64 = id.parse().ok()?;
        let agent_id = self.asked.remove(&(conn, id))?;
        self.inbound.remove(&agent_id)
    }

    /// The agent's request `agent_id` is settled without a client.
    pub(crate) fn settle(&mut self, agent_id: &str) -> Option<Inbound> {
        let request = self.inbound.remove(agent_id)?;
        if let Some(prev) = request.assigned {
            self.asked.remove(&prev);
        }
        Some(request)
    }

    /// `conn` is gone: its requests' answers have nowhere to go, and the
    /// agent's requests it was asked are asked of nobody (the agent ids).
    pub(crate) fn conn_closed(&mut self, conn: ConnId, now: Instant) -> Vec<String> {
        self.by_client.retain(|(c, _), _| *c != conn);
        self.per_conn.remove(&conn);
        for out in self.outbound.values_mut() {
            if out.conn == Some(conn) {
                out.conn = None;
            }
        }
        let orphaned: Vec<String> = self
            .asked
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .map(|(_, a)| a.clone())
            .collect();
        for agent_id in &orphaned {
            self.unask(agent_id, now);
        }
        orphaned
    }

    /// The agent is gone: everything in flight, both ways.
    pub(crate) fn agent_gone(&mut self) -> (Vec<Outbound>, Vec<Inbound>) {
        self.by_client.clear();
        self.per_conn.clear();
        self.asked.clear();
        let out = self.outbound.drain().map(|(_, o)| o).collect();
        let inb = self.inbound.drain().map(|(_, i)| i).collect();
        (out, inb)
    }

    /// Requests of the agent nobody has been asked since before `deadline`.
    pub(crate) fn held_before(&self, deadline: Instant) -> Vec<String> {
        self.inbound
            .iter()
            .filter(|(_, r)| r.held_since.is_some_and(|t| t <= deadline))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// When the oldest held request started waiting.
    pub(crate) fn oldest_hold(&self) -> Option<Instant> {
        self.inbound.values().filter_map(|r| r.held_since).min()
    }

    #[cfg(test)]
    pub(crate) fn outbound_len(&self) -> usize {
        self.outbound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::raw;

    fn inbound(id: &str, now: Instant) -> Inbound {
        Inbound {
            agent_id: raw(id.into()),
            method: "session/request_permission".into(),
            params: None,
            session: Some("s".into()),
            tool_call_id: None,
            assigned: None,
            held_since: Some(now),
            arrival: 0,
        }
    }

    /// Two clients using the same id get distinct relay ids, and each
    /// answer goes back to its own client under its own id.
    #[test]
    fn client_ids_are_rewritten_per_client() {
        let mut m = IdMap::default();
        let a = m.outbound(Some(1), &raw("1".into()), "session/prompt", None);
        let b = m.outbound(Some(2), &raw("1".into()), "session/prompt", None);
        assert_ne!(a, b);
        assert_eq!(m.relay_id_of(1, "1"), Some(a));
        assert_eq!(m.relay_id_of(2, "1"), Some(b));
        let back = m.answered_by_agent(&b.to_string()).unwrap();
        assert_eq!((back.conn, back.client_id.get()), (Some(2), "1"));
        assert!(
            m.answered_by_agent(&b.to_string()).is_none(),
            "answered twice"
        );
        assert!(m.answered_by_agent("\"1\"").is_none());
        assert_eq!(m.relay_id_of(2, "1"), None);
        // A client that leaves: the answer is still matched, to nobody.
        m.conn_closed(1, Instant::now());
        let back = m.answered_by_agent(&a.to_string()).unwrap();
        assert_eq!(back.conn, None);
        assert_eq!(m.outbound_len(), 0);
    }

    /// An agent request is answered only by the client asked, under the id
    /// it was asked with; a hand-over voids the earlier client's id.
    #[test]
    fn agent_requests_are_answered_by_the_client_asked() {
        let now = Instant::now();
        let mut m = IdMap::default();
        assert!(m.inbound(inbound("\"p1\"", now)));
        assert!(!m.inbound(inbound("\"p1\"", now)), "duplicate agent id");
        let first = m.ask("\"p1\"", 1).unwrap();
        assert!(m.answered_by_client(2, &first.to_string()).is_none());
        // Client 1 leaves: nobody is asked, the hold timer runs.
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(m.conn_closed(1, later), vec!["\"p1\"".to_owned()]);
        assert_eq!(m.oldest_hold(), Some(later));
        let second = m.ask("\"p1\"", 2).unwrap();
        assert_ne!(first, second);
        assert_eq!(m.oldest_hold(), None);
        assert!(m.answered_by_client(1, &first.to_string()).is_none());
        assert!(m.answered_by_client(2, &first.to_string()).is_none());
        let req = m.answered_by_client(2, &second.to_string()).unwrap();
        assert_eq!(req.agent_id.get(), "\"p1\"");
        assert!(m.answered_by_client(2, &second.to_string()).is_none());
    }

    #[test]
    fn holds_expire_in_order_and_the_agent_going_clears_all() {
        let now = Instant::now();
        let mut m = IdMap::default();
        m.inbound(inbound("1", now));
        m.inbound(inbound("2", now + std::time::Duration::from_secs(5)));
        assert_eq!(m.held_before(now), vec!["1".to_owned()]);
        assert!(m.settle("1").is_some());
        m.outbound(Some(1), &raw("9".into()), "initialize", None);
        let (out, inb) = m.agent_gone();
        assert_eq!((out.len(), inb.len()), (1, 1));
        assert!(m.open_inbound().is_empty());
    }
}
