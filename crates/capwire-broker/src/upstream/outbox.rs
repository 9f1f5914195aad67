//! What waits to go upstream while the link is down: a bounded queue that
//! keeps order and, when full, drops the oldest message, counting (and
//! logging) every drop by kind.

use std::collections::VecDeque;

use super::Outbound;

/// Messages waiting for the link, oldest first.
#[derive(Debug)]
pub(crate) struct Outbox {
    items: VecDeque<Outbound>,
    capacity: usize,
    dropped: Dropped,
}

/// Messages dropped because the outbox was full, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Dropped {
    /// Endpoint state reports.
    pub states: u64,
    /// Control acks.
    pub acks: u64,
    /// Presence changes.
    pub presence: u64,
}

impl Dropped {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.states + self.acks + self.presence
    }
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: Dropped::default(),
        }
    }

    /// Queues `message`; if the outbox is full, the oldest message goes.
    pub(crate) fn push(&mut self, message: Outbound) {
        if self.items.len() >= self.capacity {
            if let Some(old) = self.items.pop_front() {
                match &old {
                    Outbound::State(_) => self.dropped.states += 1,
                    Outbound::ControlAck(_) => self.dropped.acks += 1,
                    Outbound::Presence(_) => self.dropped.presence += 1,
                }
                tracing::warn!(
                    dropped = ?old,
                    total_dropped = self.dropped.total(),
                    capacity = self.capacity,
                    "upstream outbox full: the oldest message is dropped"
                );
            }
        }
        self.items.push_back(message);
    }

    /// The oldest message, still queued.
    pub(crate) fn front(&self) -> Option<&Outbound> {
        self.items.front()
    }

    /// Removes the oldest message (it went).
    pub(crate) fn pop(&mut self) -> Option<Outbound> {
        self.items.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn dropped(&self) -> Dropped {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EndpointState;
    use crate::upstream::{AckStatus, ControlAck, StateReport};

    fn state(id: u64) -> Outbound {
        Outbound::State(StateReport {
            endpoint_id: id,
            state: EndpointState::Active,
            cause: "register".into(),
            at_ms: id,
        })
    }

    #[test]
    fn keeps_order_and_drops_the_oldest_when_full() {
        let mut outbox = Outbox::new(3);
        outbox.push(state(1));
        outbox.push(Outbound::ControlAck(ControlAck {
            idempotency_key: "k".into(),
            status: AckStatus::Applied,
            detail: None,
        }));
        outbox.push(state(3));
        outbox.push(state(4));
        outbox.push(state(5));
        assert_eq!(outbox.len(), 3);
        assert_eq!(
            outbox.dropped(),
            Dropped {
                states: 1,
                acks: 1,
                presence: 0
            }
        );
        let mut left = Vec::new();
        while let Some(m) = outbox.pop() {
            if let Outbound::State(s) = m {
                left.push(s.endpoint_id);
            }
        }
        assert_eq!(left, [3, 4, 5]);
        assert!(outbox.front().is_none());
    }
}
