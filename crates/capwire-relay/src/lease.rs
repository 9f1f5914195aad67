//! The controller lease (opt-in): while it is on, one client — the holder —
//! drives (prompts, cancels, answers permissions, changes mode or model,
//! edits files, uses terminals) and the others watch. Any authenticated
//! client may take control; each hand-over bumps the lease epoch, which
//! every client is told.
//!
//! The lease coordinates one user's devices. It is not a security boundary:
//! the client id is what the client says it is, and every client already
//! holds the pairing token that lets it take control.

use serde::Serialize;

/// JSON-RPC error code of `not_controller` (capwire's `permission_denied`).
pub(crate) const NOT_CONTROLLER_CODE: i64 = -32001;

/// The lease as clients see it (in `welcome` and `_relay/control`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseState {
    /// Whether the lease is on (`--lease`).
    pub enabled: bool,
    /// The client id of the holder, if any.
    pub holder: Option<String>,
    /// Bumped by every hand-over.
    pub epoch: u64,
}

/// What the lease says about a privileged command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead.
    Allowed,
    /// Go ahead: the sender just became the holder (nobody held it).
    Claimed,
    /// Refuse with `not_controller`.
    NotController,
}

#[derive(Debug)]
pub(crate) struct Lease {
    enabled: bool,
    holder: Option<String>,
    epoch: u64,
}

/// Methods only the holder may call while the lease is on. Answers to the
/// agent's requests are gated by routing: only the holder is asked.
pub(crate) fn is_privileged(method: &str) -> bool {
    matches!(
        method,
        "session/prompt"
            | "session/cancel"
            | "session/set_mode"
            | "session/set_model"
            | "session/set_config_option"
    ) || method.starts_with("_relay/fs/write")
        || method.starts_with("_relay/terminal/")
}

impl Lease {
    pub(crate) fn new(enabled: bool) -> Lease {
        Lease {
            enabled,
            holder: None,
            epoch: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    pub(crate) fn state(&self) -> LeaseState {
        LeaseState {
            enabled: self.enabled,
            holder: self.holder.clone(),
            epoch: self.epoch,
        }
    }

    /// May `client` send a privileged command? The first one to try while
    /// nobody holds the lease claims it.
    pub(crate) fn check(&mut self, client: &str) -> Verdict {
        if !self.enabled {
            return Verdict::Allowed;
        }
        match &self.holder {
            Some(h) if h == client => Verdict::Allowed,
            Some(_) => Verdict::NotController,
            None => {
                self.holder = Some(client.to_owned());
                self.epoch += 1;
                Verdict::Claimed
            }
        }
    }

    /// `client` takes control; returns the new epoch. Taking it again is a
    /// hand-over too (the epoch still moves, so every device re-reads it).
    pub(crate) fn take(&mut self, client: &str) -> u64 {
        self.holder = Some(client.to_owned());
        self.epoch += 1;
        self.epoch
    }

    /// The holder lets go (only the holder can).
    pub(crate) fn release(&mut self, client: &str) -> bool {
        if self.holder.as_deref() == Some(client) {
            self.holder = None;
            self.epoch += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_everyone_drives() {
        let mut l = Lease::new(false);
        assert_eq!(l.check("a"), Verdict::Allowed);
        assert_eq!(l.check("b"), Verdict::Allowed);
        assert_eq!(l.holder(), None);
    }

    #[test]
    fn first_driver_claims_then_only_the_holder_drives_until_taken() {
        let mut l = Lease::new(true);
        assert_eq!(l.check("a"), Verdict::Claimed);
        assert_eq!(l.state().epoch, 1);
        assert_eq!(l.check("a"), Verdict::Allowed);
        assert_eq!(l.check("b"), Verdict::NotController);
        assert_eq!(l.take("b"), 2);
        assert_eq!(l.check("a"), Verdict::NotController);
        assert_eq!(l.check("b"), Verdict::Allowed);
        assert!(!l.release("a"));
        assert!(l.release("b"));
        assert_eq!(
            l.state(),
            LeaseState {
                enabled: true,
                holder: None,
                epoch: 3
            }
        );
        assert_eq!(l.check("a"), Verdict::Claimed);
    }

    #[test]
    fn privileged_methods() {
        for m in [
            "session/prompt",
            "session/cancel",
            "session/set_mode",
            "_relay/fs/write",
        ] {
            assert!(is_privileged(m), "{m}");
        }
        for m in [
            "initialize",
            "session/new",
            "session/load",
            "session/list",
            "_relay/attach",
        ] {
            assert!(!is_privileged(m), "{m}");
        }
    }
}
