//! Spawn requests as the broker exposes them (the drivers, the rate limit
//! and the token correlation live in [`crate::spawn`]).

use std::sync::Arc;
use std::time::Instant;

use capwire::Status;

use super::Broker;
use crate::events::BrokerEvent;

impl Broker {
    /// Adds (or replaces) the spawn driver of its runtime kind.
    pub fn add_spawn_driver(&self, driver: Arc<dyn crate::spawn::SpawnDriver>) {
        self.inner.spawner.add_driver(driver);
    }

    /// Sets how spawn requests are bounded.
    pub fn set_spawn_limits(&self, limits: crate::spawn::SpawnLimits) {
        self.inner.spawner.set_limits(limits);
    }

    /// Starts a plugin of `kind` through its driver; the plugin completes
    /// the request by registering with the returned token.
    pub fn request_spawn(
        &self,
        kind: &str,
        prompt: Option<&str>,
    ) -> Result<crate::spawn::SpawnStarted, Status> {
        self.refuse_if_closing()?;
        self.inner
            .spawner
            .request(self, kind, prompt, Instant::now())
    }

    /// Spawn requests waiting for their plugin to register.
    pub fn pending_spawns(&self) -> usize {
        self.inner.spawner.pending()
    }

    pub(crate) fn emit_event(&self, event: BrokerEvent) {
        self.emit(event);
    }
}
