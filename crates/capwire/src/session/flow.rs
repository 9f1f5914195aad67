//! Credit-based flow control for stream answers (protocol.md §5.8).
//!
//! The caller of a stream grants credit: `call.stream` items up front, then
//! `credit` frames as it consumes. The callee sends an item only after
//! taking one unit of credit, so it never has more items unacknowledged than
//! the caller allowed, and a consumer that stops reading stops only its own
//! stream: the producer is not polled while there is no credit.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Largest allowance a stream can accumulate (credit saturates, §5.8).
const MAX_CREDIT: u64 = u32::MAX as u64;

/// The callee's side of one stream's credit.
pub(crate) struct Credit {
    available: AtomicU64,
    /// Credit granted after the initial window.
    granted: AtomicU64,
    sent: AtomicU64,
    notify: Notify,
}

impl Credit {
    pub(crate) fn new(initial: u32) -> Credit {
        Credit {
            available: AtomicU64::new(u64::from(initial)),
            granted: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    /// The caller allows `n` more items.
    pub(crate) fn grant(&self, n: u32) {
        if n == 0 {
            return;
        }
        let n = u64::from(n);
        // Counted as granted before it can be taken: `sent` never sees an
        // item sent on credit that `granted` does not include yet.
        self.granted.fetch_add(n, Ordering::AcqRel);
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_add(n).min(MAX_CREDIT))
            });
        self.notify.notify_one();
    }

    /// Takes one unit of credit if there is one.
    pub(crate) fn try_take(&self) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(1))
            .is_ok()
    }

    /// Waits for, and takes, one unit of credit.
    pub(crate) async fn acquire(&self) {
        loop {
            let granted = self.notify.notified();
            tokio::pin!(granted);
            granted.as_mut().enable();
            if self.try_take() {
                return;
            }
            granted.await;
        }
    }

    /// Records one item sent; returns how many items are now unacknowledged
    /// (sent, and not yet paid back by a `credit`).
    pub(crate) fn sent(&self) -> u64 {
        let sent = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        sent.saturating_sub(self.granted.load(Ordering::Acquire))
    }
}

/// The caller's side: how much credit to give back, and when. Credit goes
/// back in batches of half the window, so a stream costs one `credit` frame
/// per half window of items, and the callee is never starved while the
/// consumer keeps up.
pub(crate) fn grant_batch(window: u32) -> u32 {
    (window / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credit_is_taken_one_at_a_time_and_saturates() {
        let c = Credit::new(2);
        c.acquire().await;
        c.acquire().await;
        assert!(!c.try_take(), "the window is used up");
        c.grant(1);
        c.acquire().await;
        // Three sent, one credit back: two unacknowledged, within the window.
        c.sent();
        c.sent();
        assert_eq!(c.sent(), 2);
        c.grant(u32::MAX);
        c.grant(u32::MAX);
        assert_eq!(c.available.load(Ordering::Acquire), MAX_CREDIT);
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_grant() {
        let c = std::sync::Arc::new(Credit::new(0));
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.grant(1);
        waiter.await.expect("woken");
    }

    #[test]
    fn batches_are_half_the_window() {
        assert_eq!(grant_batch(32), 16);
        assert_eq!(grant_batch(1), 1);
        assert_eq!(grant_batch(0), 1);
    }
}
