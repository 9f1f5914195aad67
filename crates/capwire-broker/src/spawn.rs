//! Spawn requests: start a plugin of some runtime kind and learn which
//! endpoint it became.
//!
//! A driver per runtime kind starts the process and hands it a spawn token
//! (`CAPWIRE_SPAWN_TOKEN` for [`CommandDriver`]); the plugin registers with
//! that token, which completes the request. Requests are rate limited, and
//! one whose plugin does not register in time is reported as timed out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capwire::{Code, Reason, Status};
use serde::{Deserialize, Serialize};

use crate::events::{BrokerEvent, SpawnOutcome};
use crate::store::EndpointId;
use crate::Broker;

/// Starts plugins of one runtime kind.
pub trait SpawnDriver: Send + Sync + 'static {
    /// The runtime kind it starts.
    fn kind(&self) -> &str;

    /// Starts one plugin that will register with `spawn_token`; returns its pid.
    fn spawn(&self, spawn_token: &str, prompt: Option<&str>) -> Result<u32, Status>;
}

/// A driver that runs a configured command, with `CAPWIRE_SPAWN_TOKEN`
/// (and `CAPWIRE_SPAWN_PROMPT` when given) in its environment. The process
/// is not waited for beyond reaping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandDriver {
    kind: String,
    program: String,
    args: Vec<String>,
}

impl CommandDriver {
    /// Runs `program args…` for spawn requests of `kind`.
    pub fn new(kind: impl Into<String>, program: impl Into<String>, args: Vec<String>) -> Self {
        CommandDriver {
            kind: kind.into(),
            program: program.into(),
            args,
        }
    }

    /// Parses `KIND=COMMAND` (the `--spawn` option): the command is split
    /// into words as a POSIX shell would (quotes, escapes), and run without
    /// a shell.
    ///
    /// ```
    /// use capwire_broker::spawn::CommandDriver;
    /// let d = CommandDriver::parse("python=python3 -m my_plugin --name 'a b'").unwrap();
    /// assert_eq!(d, CommandDriver::new("python", "python3", vec![
    ///     "-m".into(), "my_plugin".into(), "--name".into(), "a b".into(),
    /// ]));
    /// assert!(CommandDriver::parse("no-command").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<CommandDriver, String> {
        let (kind, command) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}`: expected KIND=COMMAND"))?;
        let kind = kind.trim();
        if kind.is_empty() {
            return Err(format!("`{spec}`: the runtime kind is empty"));
        }
        let mut words = shlex::split(command)
            .ok_or_else(|| format!("`{spec}`: unbalanced quotes in the command"))?
            .into_iter();
        let program = words
            .next()
            .ok_or_else(|| format!("`{spec}`: the command is empty"))?;
        Ok(CommandDriver::new(kind, program, words.collect()))
    }
}

impl SpawnDriver for CommandDriver {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn spawn(&self, spawn_token: &str, prompt: Option<&str>) -> Result<u32, Status> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env("CAPWIRE_SPAWN_TOKEN", spawn_token)
            .stdin(std::process::Stdio::null());
        if let Some(prompt) = prompt {
            command.env("CAPWIRE_SPAWN_PROMPT", prompt);
        }
        let mut child = command.spawn().map_err(|e| {
            Status::new(
                Code::FailedPrecondition,
                format!("cannot run `{}`: {e}", self.program),
            )
            .with_reason(Reason::new_static("spawn_failed"))
        })?;
        let pid = child.id().unwrap_or(0);
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }
}

/// How spawn requests are bounded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SpawnLimits {
    /// Requests allowed per `rate_window`. Default 5.
    pub max_per_window: usize,
    /// Default 60 s.
    pub rate_window: Duration,
    /// How long a spawned plugin has to register. Default 60 s.
    pub timeout: Duration,
}

impl Default for SpawnLimits {
    fn default() -> SpawnLimits {
        SpawnLimits {
            max_per_window: 5,
            rate_window: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }
    }
}

/// A spawn request that started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpawnStarted {
    /// The token the plugin registers with.
    pub spawn_token: String,
    /// The started process.
    pub pid: u32,
}

struct Pending {
    kind: String,
    deadline: Instant,
}

#[derive(Default)]
struct Inner {
    drivers: HashMap<String, Arc<dyn SpawnDriver>>,
    pending: HashMap<String, Pending>,
    recent: VecDeque<Instant>,
    limits: SpawnLimits,
    next: u64,
}

/// Drivers, the rate limiter and pending requests.
#[derive(Default)]
pub(crate) struct Spawner {
    inner: Mutex<Inner>,
}

impl Spawner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_driver(&self, driver: Arc<dyn SpawnDriver>) {
        self.lock().drivers.insert(driver.kind().to_owned(), driver);
    }

    pub(crate) fn set_limits(&self, limits: SpawnLimits) {
        self.lock().limits = limits;
    }

    pub(crate) fn request(
        &self,
        broker: &Broker,
        kind: &str,
        prompt: Option<&str>,
        now: Instant,
    ) -> Result<SpawnStarted, Status> {
        let (driver, token) = {
            let mut inner = self.lock();
            let window = inner.limits.rate_window;
            while inner
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                inner.recent.pop_front();
            }
            if inner.recent.len() >= inner.limits.max_per_window {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "at most {} spawn requests per {} s",
                        inner.limits.max_per_window,
                        window.as_secs()
                    ),
                )
                .with_reason(Reason::new_static("spawn_rate_limited")));
            }
            let driver = inner.drivers.get(kind).cloned().ok_or_else(|| {
                Status::new(
                    Code::Unimplemented,
                    format!("no spawn driver for runtime kind `{kind}`"),
                )
                .with_reason(Reason::new_static("runtime_kind_unsupported"))
            })?;
            inner.recent.push_back(now);
            inner.next += 1;
            let mut random = [0u8; 8];
            getrandom::getrandom(&mut random)
                .map_err(|e| Status::new(Code::Internal, format!("no randomness: {e}")))?;
            let token = format!("spawn-{:016x}-{}", u64::from_le_bytes(random), inner.next);
            let deadline = now + inner.limits.timeout;
            inner.pending.insert(
                token.clone(),
                Pending {
                    kind: kind.to_owned(),
                    deadline,
                },
            );
            (driver, token)
        };
        let pid = match driver.spawn(&token, prompt) {
            Ok(pid) => pid,
            Err(e) => {
                self.lock().pending.remove(&token);
                return Err(e);
            }
        };
        tracing::info!(spawn_token = %token, kind, pid, "spawn request started");
        broker.emit_event(BrokerEvent::Spawn {
            spawn_token: token.clone(),
            runtime_kind: kind.to_owned(),
            outcome: SpawnOutcome::Started { pid },
        });
        Ok(SpawnStarted {
            spawn_token: token,
            pid,
        })
    }

    /// A plugin registered with `token`: true if it completed a request.
    pub(crate) fn complete(&self, token: &str, endpoint_id: EndpointId, broker: &Broker) -> bool {
        let Some(pending) = self.lock().pending.remove(token) else {
            tracing::warn!(
                spawn_token = token,
                "registration with an unknown spawn token"
            );
            return false;
        };
        broker.emit_event(BrokerEvent::Spawn {
            spawn_token: token.to_owned(),
            runtime_kind: pending.kind,
            outcome: SpawnOutcome::Completed { endpoint_id },
        });
        true
    }

    /// Reports and forgets requests whose plugin did not register in time.
    pub(crate) fn expire(&self, broker: &Broker) {
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut inner = self.lock();
            let tokens: Vec<_> = inner
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(t, _)| t.clone())
                .collect();
            tokens
                .into_iter()
                .filter_map(|t| inner.pending.remove(&t).map(|p| (t, p)))
                .collect()
        };
        for (token, pending) in expired {
            tracing::warn!(spawn_token = %token, kind = %pending.kind, "spawn request timed out");
            broker.emit_event(BrokerEvent::Spawn {
                spawn_token: token,
                runtime_kind: pending.kind,
                outcome: SpawnOutcome::TimedOut,
            });
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}
