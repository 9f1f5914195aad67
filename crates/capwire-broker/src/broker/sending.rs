//! Sending: a message is checked, stamped (the broker's correlation id and
//! source), routed, and committed to its target's queue or to the inbox
//! before the send is acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use capwire::{Code, Status};
use serde::{Deserialize, Serialize};

use super::{now_ms, status, store_failed, unknown, Broker, State};
use crate::events::{BrokerEvent, InboxAction};
use crate::queue::Queued;
use crate::routing::Unroutable;
use crate::state::EndpointState;
use crate::store::{encode, EndpointId, Envelope, Seq, Write};

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
    /// operator (`None`). Returns once the message is durable.
    pub async fn send(&self, from: Option<EndpointId>, out: Outgoing) -> Result<Sent, Status> {
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
        let correlation_id = self.new_correlation();
        let envelope = Envelope {
            from,
            correlation_id: correlation_id.clone(),
            in_reply_to: out.in_reply_to.clone(),
            content: out.content,
            content_type: out.content_type.unwrap_or_else(|| "text".into()),
            metadata,
            sent_at_ms: now_ms(),
        };
        let bytes = encode(&envelope).map_err(store_failed)?;
        let max = self.inner.limits.max_message_bytes;
        if bytes.len() > max {
            return Err(status(
                Code::ResourceExhausted,
                "max_message_bytes",
                format!(
                    "the message is {} bytes encoded; the limit is {max}",
                    bytes.len()
                ),
            ));
        }
        let target = {
            let state = self.lock();
            if let Some(from) = from {
                match state.endpoints.get(&from) {
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
                    Some(_) => {}
                }
            }
            route(&state, from, out.to, out.in_reply_to.as_deref())
        };
        let envelope = Arc::new(envelope);
        match target {
            Ok(endpoint) => self.enqueue(endpoint, envelope, bytes).await,
            Err((why, hint)) => self.park(why, hint, &envelope).await,
        }
    }

    /// Queues a message for `endpoint`, durably; falls back to the inbox if
    /// the endpoint closed meanwhile.
    async fn enqueue(
        &self,
        endpoint: EndpointId,
        envelope: Arc<Envelope>,
        bytes: Vec<u8>,
    ) -> Result<Sent, Status> {
        let correlation_id = envelope.correlation_id.clone();
        let reserved = {
            let mut state = self.lock();
            let limits = &self.inner.limits;
            let e = state
                .endpoints
                .get_mut(&endpoint)
                .ok_or_else(|| unknown(endpoint))?;
            if e.state == EndpointState::Closed {
                None
            } else {
                if e.queue.len() >= limits.max_queue_messages
                    || e.queue.bytes + bytes.len() > limits.max_queue_bytes
                {
                    return Err(status(
                        Code::ResourceExhausted,
                        "queue_full",
                        format!(
                        "endpoint {endpoint}'s queue is full ({} messages, {} bytes; limits {} \
                         and {})",
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
                let commit = self.inner.store.commit(vec![Write::Append {
                    endpoint,
                    seq,
                    bytes,
                }]);
                Some((seq, commit))
            }
        };
        let Some((seq, commit)) = reserved else {
            return self
                .park(Unroutable::EndpointClosed, Some(endpoint), &envelope)
                .await;
        };
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
