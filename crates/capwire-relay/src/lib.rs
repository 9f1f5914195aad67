//! The capwire relay: one stdio JSON-RPC agent, many devices.
//!
//! An ACP agent (or any agent speaking JSON-RPC, one message per line, on
//! stdin/stdout) is tied to the one editor that spawned it. The relay spawns
//! it instead and serves it over WebSocket to every device that presents the
//! pairing token: a laptop, a phone and a browser tab attach to the same
//! agent, drop off, come back and see exactly what they missed.
//!
//! - **Replay** ([`welcome`]): every frame toward clients is stamped with
//!   its session's sequence number (`_seq`) and kept in a bounded ring; a
//!   client attaches with the last one it saw and receives the welcome, the
//!   gap, the agent's open requests, then live frames. A gap the ring no
//!   longer holds is an explicit reset.
//! - **Routing**: ids are rewritten per client both ways; the agent's
//!   requests go to one client (the lease holder, or the client driving the
//!   session) and wait for the next one if it leaves; a prompt typed on one
//!   device is shown on all of them.
//! - **Controller lease** ([`lease`], opt-in): one device drives, the
//!   others watch (`not_controller`), `_relay/take_control` hands over.
//! - **Sessions**: each has its own ring; a client views one at a time; a cap
//!   evicts the oldest idle, unviewed one.
//! - **A page** ([`page`]): `GET /` on the relay's port serves a browser
//!   client (token from the URL fragment, transcript with replay, prompts).
//!
//! The client-facing methods (`_relay/attach`, `_relay/take_control`, …) and
//! the wire contract are described in `docs/relay.md`.
//!
//! ```no_run
//! use capwire_relay::{AgentCommand, Relay, RelayConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = RelayConfig::new(AgentCommand::new("node", ["agent.mjs"]));
//! config.lease = true;
//! config.restart = true;
//! let relay = Relay::start(config).await?;
//! println!("attach to {}?token={}", relay.url(), relay.token());
//! relay.wait().await;
//! # Ok(()) }
//! ```

mod agent;
mod daemon;
mod delivery;
mod discovery;
mod frame;
mod ids;
pub mod lease;
pub mod page;
mod ring;
mod router;
mod session;
pub mod welcome;

pub use agent::AgentCommand;
pub use daemon::{Relay, RelayConfig, RelayError};
pub use discovery::Discovery;
pub use lease::LeaseState;
pub use welcome::{AgentState, Welcome};
