//! Sending: a message is checked, stamped (the broker's correlation id and
//! source), routed, and committed to its target's queue or to the inbox
//! before the send is acknowledged.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use capwire::{Code, Status};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{now_ms, status, store_failed, unknown, Broker, State};
use crate::events::{BrokerEvent, InboxAction};
use crate::queue::Queued;
use crate::routing::Unroutable;
use crate::state::EndpointState;
use crate::store::{encode, EndpointId, Envelope, Seq, StoreError, Write};

/// What a plugin sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outgoing {
    /// The target endpoint (or leave it out and set `in_reply_to`).
    #[serde(default)]
    pub to: Option<EndpointId>,
    /// Reply to the message that carried this correlation id: the reply
    /// goes to that message's sender.
    #[serde(default)]
    pub in_reply_to: Option<String>,
    /// The payload, any JSON.
    pub content: serde_json::Value,
    /// What the payload is; `text` when absent.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Free-form metadata. `correlation_id` and `target_endpoint_id` are
    /// the broker's and refused here; `source_endpoint_id`, if present,
    /// must be the sender's own id.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Where a sent message went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "routed", rename_all = "snake_case")]
pub enum Routed {
    /// Queued for an endpoint.
    Endpoint {
        /// The endpoint.
        endpoint_id: EndpointId,
        /// Its position in that endpoint's queue.
        seq: Seq,
    },
    /// Parked in the undispatched inbox.
    Inbox {
        /// The inbox entry.
        inbox_id: u64,
        /// Why.
        reason: String,
    },
}

/// The acknowledgement of a send: the message is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Sent {
    /// Issued by the broker; replies name it in `in_reply_to`.
    pub correlation_id: String,
    /// Where it went.
    #[serde(flatten)]
    pub routed: Routed,
}

impl Broker {
    fn new_correlation(&self) -> String {
        let n = self.inner.next_correlation.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.inner.correlation_prefix)
    }

    /// Sends from endpoint `from` (which must be active), or from an
    /// operator (`None`). The message is checked, stamped and routed at
    /// once; the future resolves once it is durable.
    pub fn send(
        &self,
        from: Option<EndpointId>,
        out: Outgoing,
    ) -> impl Future<Output = Result<Sent, Status>> + Send + 'static {
        // What waits for the commit is small (no envelope, no arguments), so
        // a send in flight holds little memory and needs no large allocation.
        let accepted = self.accept(from, out);
        let broker = self.clone();
        async move {
            match accepted? {
                Accepted::Queued(pending) => broker.committed(pending).await,
                Accepted::Unroutable(why, hint, envelope) => {
                    broker.park(why, hint, &envelope).await
                }
            }
        }
    }

    /// Checks, stamps and routes a message; a routable one is queued and its
    /// commit started.
    fn accept(&self, from: Option<EndpointId>, out: Outgoing) -> Result<Accepted, Status> {
        self.refuse_if_closing()?;
        let mut metadata = out.metadata.unwrap_or_default();
        if metadata.contains_key("correlation_id") {
            return Err(status(
                Code::InvalidArgument,
                "correlation_id_forbidden",
                "the broker alone issues correlation ids: leave `correlation_id` out of metadata",
            ));
        }
        if metadata.contains_key("target_endpoint_id") {
            return Err(status(
                Code::InvalidArgument,
                "target_endpoint_id_forbidden",
                "`target_endpoint_id` is not a send input: name the target in `to`",
            ));
        }
        if let Some(source) = metadata.get("source_endpoint_id") {
            if from.is_none() || source.as_u64() != from {
                return Err(status(
                    Code::PermissionDenied,
                    "source_endpoint_id_mismatch",
                    "`metadata.source_endpoint_id` must be the sender's own endpoint id",
                ));
            }
        }
        if let Some(from) = from {
            metadata.insert("source_endpoint_id".into(), from.into());
        }
        let envelope = Envelope {
            from,
            correlation_id: self.new_correlation(),
            in_reply_to: out.in_reply_to,
            content: out.content,
            content_type: out.content_type.unwrap_or_else(|| "text".into()),
            metadata,
            sent_at_ms: now_ms(),
        };
        let bytes = encode(&envelope).map_err(store_failed)?;
        let limits = &self.inner.limits;
        if bytes.len() > limits.max_message_bytes {
            return Err(status(
                Code::ResourceExhausted,
                "max_message_bytes",
                format!(
                    "the message is {} bytes encoded; the limit is {}",
                    bytes.len(),
                    limits.max_message_bytes
                ),
            ));
        }
        let envelope = Arc::new(envelope);
        let mut state = self.lock();
        if let Some(from) = from {
            match state.endpoints.get_mut(&from) {
                None => return Err(unknown(from)),
                Some(e) if e.state != EndpointState::Active => {
                    return Err(status(
                        Code::FailedPrecondition,
                        "endpoint_not_active",
                        format!(
                            "endpoint {from} is {}: only an active endpoint sends \
                             (reattach first)",
                            e.state.as_str()
                        ),
                    ))
                }
                Some(e) => e.last_seen = Instant::now(),
            }
        }
        let endpoint = match route(&state, from, out.to, envelope.in_reply_to.as_deref()) {
            Ok(endpoint) => endpoint,
            Err((why, hint)) => return Ok(Accepted::Unroutable(why, hint, envelope)),
        };
        let Some(e) = state.endpoints.get_mut(&endpoint) else {
            return Err(unknown(endpoint));
        };
        if e.queue.len() >= limits.max_queue_messages
            || e.queue.bytes + bytes.len() > limits.max_queue_bytes
        {
            return Err(status(
                Code::ResourceExhausted,
                "queue_full",
                format!(
                    "endpoint {endpoint}'s queue is full ({} messages, {} bytes; limits {} and {})",
                    e.queue.len(),
                    e.queue.bytes,
                    limits.max_queue_messages,
                    limits.max_queue_bytes
                ),
            ));
        }
        let seq = e.queue.next_seq.max(1);
        e.queue.push(Queued {
            seq,
            envelope: envelope.clone(),
            bytes: bytes.len(),
            committed: false,
            deliveries: 0,
            in_flight: false,
        });
        // Under the lock, so this queue's seqs reach the store in order.
        let commit = self.inner.store.commit(vec![Write::Append {
            endpoint,
            seq,
            bytes,
        }]);
        Ok(Accepted::Queued(Pending {
            endpoint,
            seq,
            envelope,
            commit,
        }))
    }

    /// Waits for a queued message's commit, then lets its receiver have it
    /// (or, if the endpoint closed meanwhile, moves it to the inbox).
    async fn committed(&self, pending: Pending) -> Result<Sent, Status> {
        let Pending {
            endpoint,
            seq,
            envelope,
            commit,
        } = pending;
        let committed = commit.await;
        let closed_meanwhile = {
            let mut state = self.lock();
            let Some(e) = state.endpoints.get_mut(&endpoint) else {
                return Err(unknown(endpoint));
            };
            if let Err(err) = committed {
                e.queue.remove(seq);
                return Err(store_failed(err));
            }
            if e.state != EndpointState::Closed {
                if let Some(item) = e.queue.get_mut(seq) {
                    item.committed = true;
                }
                e.wake.notify_one();
                None
            } else {
                // It closed while the message was being written: the inbox
                // takes it, in the same transaction that removes it.
                e.queue.remove(seq);
                let entry = self.inbox_entry(
                    &mut state,
                    Unroutable::EndpointClosed,
                    Some(endpoint),
                    &envelope,
                );
                let inbox_id = entry.id;
                state.inbox.insert(inbox_id, entry.clone());
                let commit = self.inner.store.commit(vec![
                    Write::Ack {
                        endpoint,
                        seqs: vec![seq],
                    },
                    Write::InboxAdd(entry),
                ]);
                Some((inbox_id, commit))
            }
        };
        let correlation_id = envelope.correlation_id.clone();
        if let Some((inbox_id, commit)) = closed_meanwhile {
            commit.await.map_err(store_failed)?;
            self.emit(BrokerEvent::Inbox {
                action: InboxAction::Added,
                inbox_id,
                reason: Some(Unroutable::EndpointClosed.as_str().into()),
                endpoint_id: Some(endpoint),
            });
            return Ok(Sent {
                correlation_id,
                routed: Routed::Inbox {
                    inbox_id,
                    reason: Unroutable::EndpointClosed.as_str().into(),
                },
            });
        }
        Ok(Sent {
            correlation_id,
            routed: Routed::Endpoint {
                endpoint_id: endpoint,
                seq,
            },
        })
    }
}

/// What [`Broker::accept`] made of a message.
enum Accepted {
    /// Queued for an endpoint; its commit is on its way.
    Queued(Pending),
    /// For the inbox.
    Unroutable(Unroutable, Option<EndpointId>, Arc<Envelope>),
}

/// A queued message whose commit is on its way.
struct Pending {
    endpoint: EndpointId,
    seq: Seq,
    envelope: Arc<Envelope>,
    commit: BoxFuture<'static, Result<(), StoreError>>,
}

/// Where a message goes, or why it cannot.
fn route(
    state: &State,
    from: Option<EndpointId>,
    to: Option<EndpointId>,
    in_reply_to: Option<&str>,
) -> Result<EndpointId, (Unroutable, Option<EndpointId>)> {
    let target = match (to, in_reply_to, from) {
        (Some(to), _, _) => to,
        (None, Some(correlation), Some(from)) => state
            .correlations
            .resolve(from, correlation, Instant::now())
            .ok_or((Unroutable::UnknownCorrelation, None))?,
        (None, Some(_), None) => return Err((Unroutable::UnknownCorrelation, None)),
        (None, None, _) => return Err((Unroutable::NoTarget, None)),
    };
    match state.endpoints.get(&target) {
        None => Err((Unroutable::UnknownEndpoint, Some(target))),
        Some(e) if e.state == EndpointState::Closed => {
            Err((Unroutable::EndpointClosed, Some(target)))
        }
        Some(_) => Ok(target),
    }
}
