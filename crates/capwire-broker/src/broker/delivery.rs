//! Delivery: an endpoint's queue handed to its receiver in order, on a
//! credit window, with each delivery counted durably before it goes out;
//! acks remove messages from the store.

use std::collections::VecDeque;
use std::time::Instant;

use capwire::{Code, Status};
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{closed, now_ms, status, store_failed, unknown, Broker};
use crate::state::EndpointState;
use crate::store::{CorrelationRecord, EndpointId, Envelope, Seq, Write};

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Delivery {
    /// Acknowledge it by this.
    pub seq: Seq,
    /// The message.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// True if it may have been delivered before (and not acknowledged).
    pub redelivered: bool,
    /// How often it has been handed out, this time included.
    pub delivery_count: u32,
}

/// The outcome of an ack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Acked {
    /// Messages removed.
    pub acked: u64,
    /// Seqs that were not out on this endpoint's receiver (unknown, already
    /// acknowledged, or not delivered yet): nothing happened to them.
    pub ignored: Vec<Seq>,
}

impl Broker {
    /// Starts delivering an active endpoint's messages: oldest
    /// unacknowledged first, then new ones as they are committed, with at
    /// most `window` delivered and unacknowledged. The stream ends when the
    /// endpoint closes or another connection takes it over. When it ends
    /// otherwise (its connection closed, or its caller cancelled it) and no
    /// open connection holds the endpoint, the endpoint becomes
    /// reconnecting.
    pub fn receive(
        &self,
        id: EndpointId,
        window: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Delivery, Status>>, Status> {
        let limits = &self.inner.limits;
        let window = window.unwrap_or(limits.default_window);
        if window == 0 || window > limits.max_window {
            return Err(status(
                Code::InvalidArgument,
                "bad_window",
                format!("`window` must be from 1 to {}", limits.max_window),
            ));
        }
        let generation = {
            let mut state = self.lock();
            let generation = state.next_receiver;
            state.next_receiver += 1;
            let e = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
            match e.state {
                EndpointState::Active => {}
                EndpointState::Reconnecting => {
                    return Err(status(
                        Code::FailedPrecondition,
                        "endpoint_reconnecting",
                        format!("endpoint {id} is reconnecting: reattach first"),
                    ))
                }
                EndpointState::Closed => return Err(closed(id)),
            }
            if e.receiver.is_some() {
                return Err(status(
                    Code::AlreadyExists,
                    "receiver_attached",
                    format!(
                        "endpoint {id} is already receiving on another connection \
                         (reattach takes it over)"
                    ),
                ));
            }
            e.receiver = Some(generation);
            e.last_seen = Instant::now();
            e.queue.reset_in_flight();
            generation
        };
        let receiver = Receiver {
            broker: self.clone(),
            endpoint: id,
            generation,
            window: window as usize,
            ready: VecDeque::new(),
        };
        Ok(Box::pin(futures_util::stream::unfold(
            receiver,
            |mut r| async move {
                let item = r.next().await?;
                Some((item, r))
            },
        )))
    }

    /// Acknowledges delivered messages: they leave the store.
    pub async fn ack(&self, id: EndpointId, seqs: &[Seq]) -> Result<Acked, Status> {
        let (valid, ignored, commit) = {
            let mut state = self.lock();
            let e = state.endpoints.get_mut(&id).ok_or_else(|| unknown(id))?;
            e.last_seen = Instant::now();
            let (valid, ignored): (Vec<Seq>, Vec<Seq>) = seqs
                .iter()
                .partition(|s| e.queue.get(**s).is_some_and(|q| q.in_flight));
            if valid.is_empty() {
                return Ok(Acked { acked: 0, ignored });
            }
            let commit = self.inner.store.commit(vec![Write::Ack {
                endpoint: id,
                seqs: valid.clone(),
            }]);
            (valid, ignored, commit)
        };
        commit.await.map_err(store_failed)?;
        let mut state = self.lock();
        let mut acked = 0;
        if let Some(e) = state.endpoints.get_mut(&id) {
            for seq in &valid {
                acked += u64::from(e.queue.remove(*seq).is_some());
            }
            e.wake.notify_one();
        }
        Ok(Acked { acked, ignored })
    }
}

/// One endpoint's delivery stream.
struct Receiver {
    broker: Broker,
    endpoint: EndpointId,
    generation: u64,
    window: usize,
    /// Durably counted, not yet yielded.
    ready: VecDeque<Delivery>,
}

impl Receiver {
    async fn next(&mut self) -> Option<Result<Delivery, Status>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            let (wake, batch) = {
                let mut state = self.broker.lock();
                let e = state.endpoints.get_mut(&self.endpoint)?;
                if e.receiver != Some(self.generation) {
                    return None;
                }
                let room = self.window.saturating_sub(e.queue.in_flight());
                let mut batch = Vec::new();
                if room > 0 {
                    for item in e.queue.next_batch(room) {
                        item.in_flight = true;
                        item.deliveries = item.deliveries.saturating_add(1);
                        batch.push(Delivery {
                            seq: item.seq,
                            envelope: (*item.envelope).clone(),
                            redelivered: item.deliveries > 1,
                            delivery_count: item.deliveries,
                        });
                    }
                }
                if batch.is_empty() {
                    (Some(e.wake.clone()), None)
                } else {
                    // Reply routing: the receiver may answer these, also
                    // after a restart (written with the delivery count).
                    let (now, now_ms) = (Instant::now(), now_ms());
                    let expires_at_ms =
                        now_ms.saturating_add(state.correlations.ttl().as_millis() as u64);
                    let mut records = Vec::new();
                    let mut evicted = Vec::new();
                    for d in &batch {
                        if let Some(from) = d.envelope.from {
                            evicted.extend(state.correlations.record(
                                self.endpoint,
                                &d.envelope.correlation_id,
                                from,
                                now,
                            ));
                            records.push(CorrelationRecord {
                                correlation_id: d.envelope.correlation_id.clone(),
                                origin: from,
                                expires_at_ms,
                            });
                        }
                    }
                    let seqs = batch.iter().map(|d| d.seq).collect();
                    let mut writes = vec![Write::Delivered {
                        endpoint: self.endpoint,
                        seqs,
                    }];
                    if !records.is_empty() {
                        writes.push(Write::PutCorrelations {
                            receiver: self.endpoint,
                            records,
                        });
                    }
                    if !evicted.is_empty() {
                        writes.push(Write::ForgetCorrelations {
                            receiver: self.endpoint,
                            correlation_ids: evicted,
                        });
                    }
                    let commit = self.broker.inner.store.commit(writes);
                    (None, Some((batch, commit)))
                }
            };
            match (wake, batch) {
                (_, Some((batch, commit))) => {
                    // The count is durable before the message goes out, so
                    // a redelivery after a crash is flagged as one.
                    if let Err(e) = commit.await {
                        return Some(Err(store_failed(e)));
                    }
                    self.ready.extend(batch);
                }
                (Some(wake), None) => {
                    let notified = wake.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after arming, so a wake-up between the check
                    // above and here is not lost.
                    let ready = {
                        let state = self.broker.lock();
                        let e = state.endpoints.get(&self.endpoint)?;
                        e.receiver != Some(self.generation)
                            || (self.window > e.queue.in_flight() && e.queue.has_deliverable())
                    };
                    if !ready {
                        notified.await;
                    }
                }
                (None, None) => return None,
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let (broker, id, generation) = (self.broker.clone(), self.endpoint, self.generation);
        broker.receiver_dropped(id, generation);
    }
}
