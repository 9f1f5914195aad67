//! The agent: a child process speaking JSON-RPC on stdin/stdout, one message
//! per line (its stderr goes to the log). The supervisor starts it, reads
//! its frames, reports its exit, and — when asked to — starts it again after
//! a backoff that grows while it keeps crashing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use capwire::attestation::{Attestation, TransportKind};
use capwire::proto::Framing;
use capwire::transport::{stream_transport, FrameSender, TransportConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::router::AgentExit;

/// How to start the agent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory (the relay's when unset).
    pub cwd: Option<PathBuf>,
}

impl AgentCommand {
    /// `program args…`.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> AgentCommand {
        AgentCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
        }
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> AgentCommand {
        self.cwd = Some(cwd.into());
        self
    }

    fn line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the supervisor reports.
#[derive(Debug)]
pub(crate) enum AgentEvent {
    Started(FrameSender),
    Frame(Bytes),
    Exited(AgentExit),
    /// It could not be started at all (and will not be retried).
    Failed(String),
}

/// Runs the agent until it exits for good (or `events` is closed).
pub(crate) async fn supervise(
    command: AgentCommand,
    restart: bool,
    max_line_bytes: usize,
    events: mpsc::Sender<AgentEvent>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut starts = 0u64;
    loop {
        starts += 1;
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &command.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot start the agent `{}`: {e}", command.line());
                tracing::error!("{why}");
                let _ = events.send(AgentEvent::Failed(why)).await;
                return;
            }
        };
        let pid = child.id();
        tracing::info!(pid, agent = %command.line(), starts, "agent started");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = events
                .send(AgentEvent::Failed("the agent has no piped stdio".into()))
                .await;
            return;
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "capwire_relay::agent", pid, "{line}");
            }
        });
        let config = TransportConfig::default()
            .framing(Framing::Ndjson)
            .max_frame_bytes(max_line_bytes);
        let mut att = Attestation::new(TransportKind::Process);
        att.peer_addr = Some(command.line());
        let transport = stream_transport(stdout, stdin, att, &config);
        let started = std::time::Instant::now();
        if events
            .send(AgentEvent::Started(transport.sender.clone()))
            .await
            .is_err()
        {
            return;
        }
        let mut receiver = transport.receiver;
        loop {
            match receiver.recv().await {
                Ok(Some(frame)) => {
                    if events.send(AgentEvent::Frame(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A line over the limit, or a broken pipe: the stream is
                    // unusable, so the agent is stopped.
                    tracing::error!(error = %e, "reading the agent failed; stopping it");
                    let _ = child.start_kill();
                    break;
                }
            }
        }
        drop(transport.sender);
        let status = child.wait().await;
        let (code, signal) = match &status {
            Ok(s) => (s.code(), exit_signal(s)),
            Err(_) => (None, None),
        };
        let restarting = restart;
        tracing::warn!(pid, ?code, ?signal, restarting, "agent exited");
        if events
            .send(AgentEvent::Exited(AgentExit {
                code,
                signal,
                restarting,
            }))
            .await
            .is_err()
            || !restart
        {
            return;
        }
        // A process that ran a while gets a quick restart; one that keeps
        // crashing at start waits longer each time (up to 10 s).
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(unix)]
fn exit_signal(s: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    s.signal()
}

#[cfg(not(unix))]
fn exit_signal(_: &std::process::ExitStatus) -> Option<i32> {
    None
}
