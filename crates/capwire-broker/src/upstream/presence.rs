//! The broker's network presence, as a pure function: no clock, no I/O.
//!
//! ```text
//!            link up                 link down
//!  offline ──────────▶ online ─────────────────▶ grace
//!     ▲                  ▲ ◀──── link up ─────────┘ │
//!     │                  (nobody saw it go)         │ grace expired
//!     └─────────────────────────────────────────────┘
//! ```
//!
//! A link that drops and comes back within the grace period is not a
//! presence change: only `online` on the way up and `offline` when the
//! grace runs out are reported.

use serde::{Deserialize, Serialize};

/// Whether the broker is present on the network, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Reachable through its upstream.
    Online,
    /// Not reachable (the link has been down for longer than the grace).
    Offline,
}

/// Where the presence machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Reported offline (the start).
    Offline,
    /// Reported online; the link is up.
    Online,
    /// Still reported online, but the link is down and the grace timer runs.
    Grace,
}

impl PresenceState {
    /// Every state, for exhaustive tests.
    pub const ALL: [PresenceState; 3] = [
        PresenceState::Offline,
        PresenceState::Online,
        PresenceState::Grace,
    ];

    /// What is reported in this state.
    pub fn presence(self) -> Presence {
        match self {
            PresenceState::Offline => Presence::Offline,
            PresenceState::Online | PresenceState::Grace => Presence::Online,
        }
    }
}

/// What can happen to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceEvent {
    /// The upstream link came up.
    LinkUp,
    /// The upstream link went down.
    LinkDown,
    /// The grace period after a link went down ran out.
    GraceExpired,
}

impl PresenceEvent {
    /// Every event, for exhaustive tests.
    pub const ALL: [PresenceEvent; 3] = [
        PresenceEvent::LinkUp,
        PresenceEvent::LinkDown,
        PresenceEvent::GraceExpired,
    ];
}

/// What the connector must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceEffect {
    /// Arm the grace timer.
    StartGraceTimer,
    /// Disarm it.
    CancelGraceTimer,
    /// Report the new presence.
    Emit(Presence),
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceTransition {
    /// The new state and the effects to carry out, in order.
    To(PresenceState, Vec<PresenceEffect>),
    /// The event means nothing in this state.
    Ignored,
}

/// The presence machine itself.
pub fn transition(state: PresenceState, event: PresenceEvent) -> PresenceTransition {
    use PresenceEffect as F;
    use PresenceEvent as E;
    use PresenceState as S;
    match (state, event) {
        (S::Offline, E::LinkUp) => {
            PresenceTransition::To(S::Online, vec![F::Emit(Presence::Online)])
        }
        (S::Online, E::LinkDown) => PresenceTransition::To(S::Grace, vec![F::StartGraceTimer]),
        (S::Grace, E::LinkUp) => PresenceTransition::To(S::Online, vec![F::CancelGraceTimer]),
        (S::Grace, E::GraceExpired) => {
            PresenceTransition::To(S::Offline, vec![F::Emit(Presence::Offline)])
        }
        (S::Offline, E::LinkDown | E::GraceExpired)
        | (S::Online, E::LinkUp | E::GraceExpired)
        | (S::Grace, E::LinkDown) => PresenceTransition::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceEffect as F;
    use PresenceEvent as E;
    use PresenceState as S;

    /// A row: the state, the event, and the new state with its effects
    /// (`None`: ignored).
    type Row = (S, E, Option<(S, Vec<F>)>);

    #[test]
    fn every_state_and_event() {
        let table: [Row; 9] = [
            (
                S::Offline,
                E::LinkUp,
                Some((S::Online, vec![F::Emit(Presence::Online)])),
            ),
            (S::Offline, E::LinkDown, None),
            (S::Offline, E::GraceExpired, None),
            (S::Online, E::LinkUp, None),
            (
                S::Online,
                E::LinkDown,
                Some((S::Grace, vec![F::StartGraceTimer])),
            ),
            (S::Online, E::GraceExpired, None),
            (
                S::Grace,
                E::LinkUp,
                Some((S::Online, vec![F::CancelGraceTimer])),
            ),
            (S::Grace, E::LinkDown, None),
            (
                S::Grace,
                E::GraceExpired,
                Some((S::Offline, vec![F::Emit(Presence::Offline)])),
            ),
        ];
        // The table names every pair once.
        for s in S::ALL {
            for e in E::ALL {
                let rows = table
                    .iter()
                    .filter(|(ts, te, _)| *ts == s && *te == e)
                    .count();
                assert_eq!(rows, 1, "{s:?} × {e:?}");
            }
        }
        for (s, e, want) in table {
            let got = transition(s, e);
            match want {
                Some((to, effects)) => {
                    assert_eq!(got, PresenceTransition::To(to, effects), "{s:?} × {e:?}")
                }
                None => assert_eq!(got, PresenceTransition::Ignored, "{s:?} × {e:?}"),
            }
        }
    }

    #[test]
    fn a_short_outage_is_no_presence_change() {
        let mut state = S::Offline;
        let mut emitted = Vec::new();
        for e in [
            E::LinkUp,
            E::LinkDown,
            E::LinkUp,
            E::LinkDown,
            E::GraceExpired,
            E::LinkUp,
        ] {
            if let PresenceTransition::To(to, effects) = transition(state, e) {
                state = to;
                emitted.extend(effects.into_iter().filter_map(|f| match f {
                    F::Emit(p) => Some(p),
                    _ => None,
                }));
            }
        }
        assert_eq!(
            emitted,
            [Presence::Online, Presence::Offline, Presence::Online]
        );
        assert_eq!(state.presence(), Presence::Online);
    }
}
