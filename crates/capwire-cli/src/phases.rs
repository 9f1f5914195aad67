//! One timeout for a whole command: connecting, bootstrapping and calling
//! share it, and running out says which phase was under way. A phase that
//! takes a while says so on stderr, so a silent peer is not a silent hang.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a phase may wait before the user is told it is waiting.
const PATIENCE: Duration = Duration::from_secs(2);

/// The deadline of one command.
pub(crate) struct Phases {
    total: Duration,
    until: Instant,
    address: String,
}

/// A phase ran out of the command's time.
#[derive(Debug, thiserror::Error)]
#[error("deadline_exceeded: timed out after {} ms while {phase} {address} (--timeout-ms sets the limit)", total.as_millis())]
pub(crate) struct TimedOut {
    total: Duration,
    phase: &'static str,
    address: String,
}

impl Phases {
    /// A command against `address` that may take `total`.
    pub(crate) fn new(total: Duration, address: &str) -> Phases {
        Phases {
            total,
            until: Instant::now() + total,
            address: address.to_owned(),
        }
    }

    /// What is left of the command's time.
    pub(crate) fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// The deadline to give a call: what is left, and a little more, so that
    /// the command's own timeout (which names the phase) fires first while
    /// the server still learns when to stop.
    pub(crate) fn call_deadline(&self) -> Duration {
        self.left() + Duration::from_millis(100)
    }

    /// Runs one phase (`"connecting to"`, `"bootstrapping demo at"`, …)
    /// within what is left of the command's time.
    pub(crate) async fn run<T>(
        &self,
        phase: &'static str,
        fut: impl Future<Output = T>,
    ) -> Result<T, TimedOut> {
        let timed_out = || TimedOut {
            total: self.total,
            phase,
            address: self.address.clone(),
        };
        tokio::pin!(fut);
        let patience = tokio::time::sleep(PATIENCE.min(self.left()));
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = patience => {}
        }
        if Instant::now() < self.until {
            eprintln!("capwire: still {phase} {}…", self.address);
        }
        tokio::time::timeout_at(self.until, fut)
            .await
            .map_err(|_| timed_out())
    }
}
