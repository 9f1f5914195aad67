//! The policy hook that decides each bootstrap.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use capwire_proto::{Code, Reason, Status};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::attestation::Attestation;

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the peer bootstrap the name.
    Allow,
    /// Refuse, with a message for the peer.
    Deny(String),
}

/// What a policy is asked about.
#[derive(Debug, Clone)]
pub struct BootstrapRequest {
    /// What the transport knows about the peer.
    pub attestation: Arc<Attestation>,
    /// The name asked for.
    pub name: String,
    /// The version asked for, if any.
    pub version: Option<String>,
}

/// Decides whether a peer may bootstrap a name. A policy that fails (returns
/// `Err`) or panics denies with `internal`; it never allows.
pub trait Policy: Send + Sync + 'static {
    /// Decides one request.
    fn decide(&self, request: BootstrapRequest) -> BoxFuture<'static, Result<Decision, String>>;
}

/// A policy from a synchronous closure.
pub fn policy_fn<F>(f: F) -> Arc<dyn Policy>
where
    F: Fn(&BootstrapRequest) -> Result<Decision, String> + Send + Sync + 'static,
{
    struct FnPolicy<F>(F);
    impl<F> Policy for FnPolicy<F>
    where
        F: Fn(&BootstrapRequest) -> Result<Decision, String> + Send + Sync + 'static,
    {
        fn decide(
            &self,
            request: BootstrapRequest,
        ) -> BoxFuture<'static, Result<Decision, String>> {
            let d = (self.0)(&request);
            async move { d }.boxed()
        }
    }
    Arc::new(FnPolicy(f))
}

/// Runs `policy`, turning errors and panics into `internal` denials.
pub(crate) async fn check(policy: &dyn Policy, request: BootstrapRequest) -> Result<(), Status> {
    let name = request.name.clone();
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| policy.decide(request))) {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    match outcome {
        Ok(Ok(Decision::Allow)) => Ok(()),
        Ok(Ok(Decision::Deny(message))) => {
            Err(Status::new(Code::PermissionDenied, message).with_reason(Reason::UNAUTHORIZED))
        }
        Ok(Err(error)) => {
            tracing::error!(%name, %error, "bootstrap policy failed; denying");
            Err(Status::new(Code::Internal, "the bootstrap policy failed"))
        }
        Err(_) => {
            tracing::error!(%name, "bootstrap policy panicked; denying");
            Err(Status::new(Code::Internal, "the bootstrap policy failed"))
        }
    }
}
