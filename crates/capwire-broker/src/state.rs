//! The endpoint state machine, as a pure function: no clock, no I/O.
//!
//! ```text
//!            connection closed, pid alive
//!   active ───────────────────────────────▶ reconnecting
//!     ▲  ◀───────────── reattach ──────────────┘   │
//!     │                                            │ grace expired,
//!     │ connection closed, pid gone;               │ unregister, pid gone
//!     │ unregister; pid gone                       ▼
//!     └──────────────────────────────────────▶ closed
//! ```
//!
//! The broker feeds every event through [`transition`] and carries out the
//! [`Effect`]s it returns; an event that makes no sense in the current state
//! comes back as [`Transition::Ignored`] and is logged, never acted on.

use serde::{Deserialize, Serialize};

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Registered, its plugin connected: messages are delivered at once.
    Active,
    /// Its connection closed while its process lives: messages are held
    /// (durably) until it reattaches or the grace period ends.
    Reconnecting,
    /// Gone for good; its held messages move to the undispatched inbox.
    Closed,
}

impl EndpointState {
    /// Every state, for exhaustive tests.
    pub const ALL: [EndpointState; 3] = [
        EndpointState::Active,
        EndpointState::Reconnecting,
        EndpointState::Closed,
    ];

    /// The state's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Active => "active",
            EndpointState::Reconnecting => "reconnecting",
            EndpointState::Closed => "closed",
        }
    }
}

/// What can happen to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum EndpointEvent {
    /// The connection delivering its messages ended; `pid_alive` says
    /// whether its registered process still runs.
    ConnectionClosed {
        /// The registered pid is still alive.
        pid_alive: bool,
    },
    /// Its plugin came back (the pid matched).
    Reattach,
    /// The grace period of a reconnecting endpoint ran out.
    GraceExpired,
    /// The plugin (or an operator) unregistered it.
    Unregister,
    /// Its registered process no longer exists.
    PidGone,
}

impl EndpointEvent {
    /// Every event, for exhaustive tests.
    pub const ALL: [EndpointEvent; 6] = [
        EndpointEvent::ConnectionClosed { pid_alive: true },
        EndpointEvent::ConnectionClosed { pid_alive: false },
        EndpointEvent::Reattach,
        EndpointEvent::GraceExpired,
        EndpointEvent::Unregister,
        EndpointEvent::PidGone,
    ];
}

/// What the broker must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Arm the endpoint's grace timer.
    StartGraceTimer,
    /// Disarm it.
    CancelGraceTimer,
    /// End the delivery stream of the connection the endpoint had (a
    /// takeover by a reattaching plugin, or a close).
    DetachReceiver,
    /// Move the endpoint's held messages to the undispatched inbox and
    /// forget its reply correlations.
    ReleaseQueue,
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The event applies: the new state and the effects to carry out, in order.
    To(EndpointState, Vec<Effect>),
    /// The event means nothing in this state; nothing changes.
    Ignored,
}

/// The state machine itself.
pub fn transition(state: EndpointState, event: EndpointEvent) -> Transition {
    use EndpointEvent as E;
    use EndpointState as S;
    match (state, event) {
        (S::Active, E::ConnectionClosed { pid_alive: true }) => {
            Transition::To(S::Reconnecting, vec![Effect::StartGraceTimer])
        }
        (S::Active, E::ConnectionClosed { pid_alive: false } | E::PidGone | E::Unregister) => {
            Transition::To(
                S::Closed,
                vec![Effect::DetachReceiver, Effect::ReleaseQueue],
            )
        }
        // A plugin whose old connection the broker has not yet seen close
        // takes its endpoint over: the old delivery stream ends, unacked
        // messages are redelivered on the new one.
        (S::Active, E::Reattach) => Transition::To(S::Active, vec![Effect::DetachReceiver]),
        (S::Reconnecting, E::Reattach) => Transition::To(S::Active, vec![Effect::CancelGraceTimer]),
        (S::Reconnecting, E::GraceExpired | E::Unregister | E::PidGone) => Transition::To(
            S::Closed,
            vec![Effect::CancelGraceTimer, Effect::ReleaseQueue],
        ),
        (S::Active, E::GraceExpired) | (S::Reconnecting, E::ConnectionClosed { .. }) => {
            Transition::Ignored
        }
        (S::Closed, _) => Transition::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndpointEvent as E;
    use EndpointState as S;

    /// An expected outcome: the next state and its effects, or ignored.
    type Expected = Option<(S, Vec<Effect>)>;

    /// Every (state, event) pair, with the expected outcome: the table is
    /// the specification, and the test fails if a pair is missing from it.
    #[test]
    fn every_state_and_event() {
        use Effect::*;
        let ignored: Expected = None;
        let table: Vec<(S, E, Expected)> = vec![
            (
                S::Active,
                E::ConnectionClosed { pid_alive: true },
                Some((S::Reconnecting, vec![StartGraceTimer])),
            ),
            (
                S::Active,
                E::ConnectionClosed { pid_alive: false },
                Some((S::Closed, vec![DetachReceiver, ReleaseQueue])),
            ),
            (
                S::Active,
                E::Reattach,
                Some((S::Active, vec![DetachReceiver])),
            ),
            (S::Active, E::GraceExpired, ignored.clone()),
            (
                S::Active,
                E::Unregister,
                Some((S::Closed, vec![DetachReceiver, ReleaseQueue])),
            ),
            (
                S::Active,
                E::PidGone,
                Some((S::Closed, vec![DetachReceiver, ReleaseQueue])),
            ),
            (
                S::Reconnecting,
                E::ConnectionClosed { pid_alive: true },
                ignored.clone(),
            ),
            (
                S::Reconnecting,
                E::ConnectionClosed { pid_alive: false },
                ignored.clone(),
            ),
            (
                S::Reconnecting,
                E::Reattach,
                Some((S::Active, vec![CancelGraceTimer])),
            ),
            (
                S::Reconnecting,
                E::GraceExpired,
                Some((S::Closed, vec![CancelGraceTimer, ReleaseQueue])),
            ),
            (
                S::Reconnecting,
                E::Unregister,
                Some((S::Closed, vec![CancelGraceTimer, ReleaseQueue])),
            ),
            (
                S::Reconnecting,
                E::PidGone,
                Some((S::Closed, vec![CancelGraceTimer, ReleaseQueue])),
            ),
            (
                S::Closed,
                E::ConnectionClosed { pid_alive: true },
                ignored.clone(),
            ),
            (
                S::Closed,
                E::ConnectionClosed { pid_alive: false },
                ignored.clone(),
            ),
            (S::Closed, E::Reattach, ignored.clone()),
            (S::Closed, E::GraceExpired, ignored.clone()),
            (S::Closed, E::Unregister, ignored.clone()),
            (S::Closed, E::PidGone, ignored),
        ];
        assert_eq!(table.len(), S::ALL.len() * E::ALL.len(), "one row per pair");
        for state in S::ALL {
            for event in E::ALL {
                let rows: Vec<_> = table
                    .iter()
                    .filter(|(s, e, _)| *s == state && *e == event)
                    .collect();
                assert_eq!(rows.len(), 1, "({state:?}, {event:?}) is in the table once");
                let expected = match &rows[0].2 {
                    Some((next, effects)) => Transition::To(*next, effects.clone()),
                    None => Transition::Ignored,
                };
                assert_eq!(transition(state, event), expected, "({state:?}, {event:?})");
            }
        }
    }

    /// Closed is final, and only reattach leads back to active.
    #[test]
    fn closed_is_final_and_only_reattach_reactivates() {
        for event in E::ALL {
            assert_eq!(transition(S::Closed, event), Transition::Ignored);
            if let Transition::To(S::Active, _) = transition(S::Reconnecting, event) {
                assert_eq!(event, E::Reattach);
            }
        }
    }
}
