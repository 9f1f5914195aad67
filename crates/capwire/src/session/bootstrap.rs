//! Capability 0: `bootstrap({name, version})` answered from the registry,
//! after the policy hook allows it.

use std::sync::Arc;

use capwire_proto::{Code, Reason, Status};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capability::{CapKind, Capability};
use crate::events::Event;
use crate::policy;
use crate::policy::BootstrapRequest;
use crate::value::Value;

use super::{deadline, supervise, Shared};

#[derive(Deserialize)]
pub(super) struct BootstrapArgs {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

impl Shared {
    pub(super) async fn run_bootstrap(
        self: &Arc<Self>,
        method: &str,
        args: Value,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> Option<Result<Value, Status>> {
        if method != "bootstrap" {
            return Some(Err(Status::new(
                Code::Unimplemented,
                format!("the bootstrap object has no method `{method}`"),
            )));
        }
        // The policy is application code: it is stopped like a handler.
        let stop_at = deadline::stop_at(deadline, self.config.deadline_grace, false);
        supervise(self.bootstrap(args), method, stop_at, &cancel).await
    }

    pub(super) async fn bootstrap(self: &Arc<Self>, args: Value) -> Result<Value, Status> {
        let BootstrapArgs { name, version } = args.decode()?;
        let result = async {
            let served = self
                .registry
                .lookup(&name)
                .ok_or_else(|| Status::new(Code::NotFound, format!("`{name}` is not served")))?;
            if let Some(v) = &version {
                if *v != served.version {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        format!("`{name}` is served at version {}, not {v}", served.version),
                    )
                    .with_reason(Reason::VERSION_MISMATCH));
                }
            }
            if let Some(policy) = &self.config.policy {
                let request = BootstrapRequest {
                    attestation: self.attestation.clone(),
                    name: name.clone(),
                    version: version.clone(),
                };
                policy::check(policy.as_ref(), request).await?;
            }
            Ok(served)
        }
        .await;
        self.emit(Event::Bootstrap {
            name: name.clone(),
            outcome: result.as_ref().map_or_else(|s| s.code, |_| Code::Ok),
        });
        let served = result?;
        // Exported with its registry generation, so unserving revokes it here too.
        Ok(Value::capability(Capability {
            kind: CapKind::Served {
                object: served.object,
                generation: served.generation,
            },
        }))
    }
}
