//! capwire: object-capability RPC over any transport.
//!
//! This crate holds the runtime side of capwire: the [`transport`]s that
//! carry capwire/1 frames (in-memory, TCP, Unix sockets, WebSocket, stdio and
//! child processes) and the [`attestation`] each transport establishes about
//! its peer. The wire protocol itself is [`proto`] (`capwire-proto`).
//!
//! ```
//! use capwire::transport::{self, Address, Listener, TransportConfig};
//! use capwire::proto::{codec, Codec, Frame, Ping};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = TransportConfig::default();
//! let mut listener = Listener::bind(&"tcp://127.0.0.1:0".parse()?, config.clone()).await?;
//! let addr: Address = listener.local_addr().clone();
//!
//! let client = transport::connect(&addr, &config).await?;
//! let mut server = listener.accept().await?;
//!
//! let ping = Frame::Ping(Ping { nonce: 7 });
//! client.sender.send(codec::encode(&ping, Codec::Msgpack)?.into()).await?;
//! let bytes = server.receiver.recv().await?.expect("a frame");
//! assert_eq!(codec::decode(&bytes)?.0, ping);
//! # Ok(())
//! # }
//! ```

pub use capwire_proto as proto;

pub mod attestation;
pub mod events;
pub mod policy;
pub mod registry;
pub mod transport;

mod capability;
mod object;
mod session;
mod value;

pub use capability::{CallOptions, Capability};
pub use capwire_proto::{Code, Reason, Status};
pub use events::{Event, Stats};
pub use object::{CallContext, Methods, Object};
pub use registry::{IfExists, Registry, ServeHandle};
pub use session::{Limits, Session, SessionConfig};
pub use value::Value;
