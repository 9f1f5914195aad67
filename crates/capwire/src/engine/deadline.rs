//! Deadlines, in one place: the wire carries a relative `deadline_ms`
//! counted from receipt (protocol.md §5.3); in memory a deadline is an
//! [`Instant`]. Every conversion, the inheritance from a parent call and the
//! callee's grace are here, with checked arithmetic: a peer's `deadline_ms`
//! can be any `u64`, and none of them may panic.
//!
//! Everything but [`sleep_until`] takes the time from its caller, so the
//! rules are tested without a clock. Where a deadline may be absent, the
//! time comes as a closure, read only when there is a deadline: the clock
//! costs nothing on the calls (most of them) that have none.

use std::time::Duration;

use capwire_proto::{Code, Status};
use tokio::time::Instant;

/// A received call's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// No deadline (none sent, or one too far away to represent).
    None,
    /// `deadline_ms: 0`: expired on arrival; the call is not run.
    Expired,
    /// The instant the caller stops waiting.
    At(Instant),
}

impl Arrival {
    /// The deadline a received `deadline_ms` stands for, counted from `now`.
    pub(crate) fn from_wire(deadline_ms: Option<u64>, now: impl FnOnce() -> Instant) -> Arrival {
        match deadline_ms {
            None => Arrival::None,
            Some(0) => Arrival::Expired,
            Some(ms) => now()
                .checked_add(Duration::from_millis(ms))
                .map_or(Arrival::None, Arrival::At),
        }
    }

    /// The deadline, if the call is to run.
    pub(crate) fn instant(self) -> Option<Instant> {
        match self {
            Arrival::At(at) => Some(at),
            Arrival::None | Arrival::Expired => None,
        }
    }
}

/// The `deadline_ms` to send for `deadline`: what is left of it, at least
/// 1 ms (a deadline already passed fails locally; the peer never sees 0
/// from this side).
pub(crate) fn to_wire(deadline: Option<Instant>, now: impl FnOnce() -> Instant) -> Option<u64> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// A call's deadline: its own timeout, never past its parent's deadline.
pub(crate) fn inherit(
    timeout: Option<Duration>,
    parent: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let own = timeout.and_then(|t| now.checked_add(t));
    match (own, parent) {
        (Some(own), Some(parent)) => Some(own.min(parent)),
        (own, parent) => own.or(parent),
    }
}

/// When the callee stops a handler: its deadline plus `grace`, so that the
/// caller's own timeout fires first; never for an idempotent method.
pub(crate) fn stop_at(
    deadline: Option<Instant>,
    grace: Duration,
    idempotent: bool,
) -> Option<Instant> {
    if idempotent {
        return None;
    }
    deadline.and_then(|d| d.checked_add(grace))
}

/// True once `at` has passed.
pub(crate) fn passed(at: Option<Instant>, now: impl FnOnce() -> Instant) -> bool {
    at.is_some_and(|at| now() >= at)
}

/// What a caller hears of a handler stopped by its deadline.
pub(crate) fn ran_past(method: &str) -> Status {
    Status::new(
        Code::DeadlineExceeded,
        format!("`{method}` ran past its deadline"),
    )
}

/// What a caller hears of a call whose `deadline_ms` was 0.
pub(crate) fn expired_on_arrival(method: &str) -> Status {
    Status::new(
        Code::DeadlineExceeded,
        format!("`{method}` arrived with its deadline already passed (deadline_ms 0)"),
    )
}

/// Resolves at `deadline`, or never.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        // A fixed point; nothing here reads the clock again.
        Instant::now()
    }

    #[test]
    fn wire_deadlines_are_relative_to_receipt() {
        let t = now();
        assert_eq!(Arrival::from_wire(None, || t), Arrival::None);
        assert_eq!(Arrival::from_wire(Some(0), || t), Arrival::Expired);
        assert_eq!(
            Arrival::from_wire(Some(1500), || t),
            Arrival::At(t + Duration::from_millis(1500))
        );
        assert_eq!(Arrival::Expired.instant(), None);
    }

    #[test]
    fn a_huge_wire_deadline_does_not_panic() {
        let t = now();
        // u64::MAX ms is beyond what an Instant can hold on most platforms.
        let a = Arrival::from_wire(Some(u64::MAX), || t);
        assert!(matches!(a, Arrival::None | Arrival::At(_)));
        assert_eq!(stop_at(a.instant(), Duration::MAX, false), None);
    }

    #[test]
    fn sending_rounds_up_and_never_sends_zero() {
        let t = now();
        assert_eq!(to_wire(None, || t), None);
        assert_eq!(
            to_wire(Some(t + Duration::from_millis(250)), || t),
            Some(250)
        );
        assert_eq!(to_wire(Some(t + Duration::from_micros(10)), || t), Some(1));
        assert_eq!(to_wire(Some(t), || t + Duration::from_secs(1)), Some(1));
    }

    #[test]
    fn a_child_never_outlives_its_parent() {
        let t = now();
        let s = Duration::from_secs;
        assert_eq!(inherit(None, None, t), None);
        assert_eq!(inherit(Some(s(5)), None, t), Some(t + s(5)));
        assert_eq!(inherit(None, Some(t + s(2)), t), Some(t + s(2)));
        assert_eq!(inherit(Some(s(5)), Some(t + s(2)), t), Some(t + s(2)));
        assert_eq!(inherit(Some(s(1)), Some(t + s(2)), t), Some(t + s(1)));
    }

    #[test]
    fn the_callee_stops_after_the_grace_unless_idempotent() {
        let t = now();
        let g = Duration::from_millis(500);
        assert_eq!(stop_at(Some(t), g, false), Some(t + g));
        assert_eq!(stop_at(Some(t), g, true), None);
        assert_eq!(stop_at(None, g, false), None);
        assert!(passed(Some(t), || t));
        assert!(!passed(Some(t + g), || t));
        assert!(!passed(None, || t));
    }
}
