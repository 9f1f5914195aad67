//! The undispatched inbox: messages nobody could take, parked durably
//! until an operator dispatches them to an endpoint or drops them.

use std::sync::Arc;

use capwire::{Code, Status};

use super::{closed, now_ms, status, store_failed, unknown, Broker, Routed, Sent, State};
use crate::events::{BrokerEvent, InboxAction};
use crate::queue::Queued;
use crate::routing::Unroutable;
use crate::state::EndpointState;
use crate::store::{encode, EndpointId, Envelope, InboxEntry, Seq, Write};

impl Broker {
    pub(super) fn inbox_entry(
        &self,
        state: &mut State,
        why: Unroutable,
        hint: Option<EndpointId>,
        envelope: &Envelope,
    ) -> InboxEntry {
        let id = state.next_inbox_id;
        state.next_inbox_id += 1;
        InboxEntry {
            id,
            reason: why.as_str().into(),
            target_hint: hint,
            envelope: envelope.clone(),
            arrived_at_ms: now_ms(),
        }
    }

    /// Parks a message in the inbox, durably.
    pub(super) async fn park(
        &self,
        why: Unroutable,
        hint: Option<EndpointId>,
        envelope: &Envelope,
    ) -> Result<Sent, Status> {
        let (id, commit) = {
            let mut state = self.lock();
            let max = self.inner.limits.max_inbox;
            if state.inbox.len() >= max {
                tracing::warn!(reason = why.as_str(), "undispatched inbox full");
                return Err(status(
                    Code::ResourceExhausted,
                    "inbox_full",
                    format!(
                        "the message cannot be routed ({}) and the undispatched inbox is full \
                         ({max} messages)",
                        why.as_str()
                    ),
                ));
            }
            let entry = self.inbox_entry(&mut state, why, hint, envelope);
            let id = entry.id;
            state.inbox.insert(id, entry.clone());
            (id, self.inner.store.commit(vec![Write::InboxAdd(entry)]))
        };
        if let Err(e) = commit.await {
            self.lock().inbox.remove(&id);
            return Err(store_failed(e));
        }
        tracing::info!(inbox_id = id, reason = why.as_str(), "message undispatched");
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Added,
            inbox_id: id,
            reason: Some(why.as_str().into()),
            endpoint_id: hint,
        });
        Ok(Sent {
            correlation_id: envelope.correlation_id.clone(),
            routed: Routed::Inbox {
                inbox_id: id,
                reason: why.as_str().into(),
            },
        })
    }

    /// The undispatched inbox, oldest first.
    pub fn inbox(&self) -> Vec<InboxEntry> {
        self.lock().inbox.values().cloned().collect()
    }

    /// Moves an inbox entry to an endpoint's queue (atomically).
    pub async fn dispatch(&self, inbox_id: u64, to: EndpointId) -> Result<Seq, Status> {
        self.refuse_if_closing()?;
        let (seq, commit) = {
            let mut state = self.lock();
            let limits = self.inner.limits.clone();
            let mut envelope = state
                .inbox
                .get(&inbox_id)
                .ok_or_else(|| {
                    status(
                        Code::NotFound,
                        "unknown_inbox_entry",
                        format!("no inbox entry {inbox_id}"),
                    )
                })?
                .envelope
                .clone();
            envelope
                .metadata
                .insert("dispatched_from".into(), inbox_id.into());
            let bytes = encode(&envelope).map_err(store_failed)?;
            let e = state.endpoints.get_mut(&to).ok_or_else(|| unknown(to))?;
            if e.state == EndpointState::Closed {
                return Err(closed(to));
            }
            if e.queue.len() >= limits.max_queue_messages
                || e.queue.bytes + bytes.len() > limits.max_queue_bytes
            {
                return Err(status(
                    Code::ResourceExhausted,
                    "queue_full",
                    format!("endpoint {to}'s queue is full"),
                ));
            }
            let seq = e.queue.next_seq.max(1);
            e.queue.push(Queued {
                seq,
                envelope: Arc::new(envelope),
                bytes: bytes.len(),
                committed: false,
                deliveries: 0,
                in_flight: false,
            });
            state.inbox.remove(&inbox_id);
            let commit = self.inner.store.commit(vec![
                Write::InboxRemove(inbox_id),
                Write::Append {
                    endpoint: to,
                    seq,
                    bytes,
                },
            ]);
            (seq, commit)
        };
        let committed = commit.await;
        let mut state = self.lock();
        if let Some(e) = state.endpoints.get_mut(&to) {
            match &committed {
                Ok(()) => {
                    if let Some(item) = e.queue.get_mut(seq) {
                        item.committed = true;
                    }
                    e.wake.notify_one();
                }
                Err(_) => {
                    e.queue.remove(seq);
                }
            }
        }
        drop(state);
        committed.map_err(store_failed)?;
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Dispatched,
            inbox_id,
            reason: None,
            endpoint_id: Some(to),
        });
        Ok(seq)
    }

    /// Drops an inbox entry for good.
    pub async fn drop_inbox(&self, inbox_id: u64) -> Result<(), Status> {
        self.refuse_if_closing()?;
        let commit = {
            let mut state = self.lock();
            if state.inbox.remove(&inbox_id).is_none() {
                return Err(status(
                    Code::NotFound,
                    "unknown_inbox_entry",
                    format!("no inbox entry {inbox_id}"),
                ));
            }
            self.inner.store.commit(vec![Write::InboxRemove(inbox_id)])
        };
        commit.await.map_err(store_failed)?;
        self.emit(BrokerEvent::Inbox {
            action: InboxAction::Dropped,
            inbox_id,
            reason: None,
            endpoint_id: None,
        });
        Ok(())
    }
}
