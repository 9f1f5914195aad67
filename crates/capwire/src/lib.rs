//! capwire: object-capability RPC over any transport.
//!
//! A [`Session`] runs one connection, either side. A server puts objects in a
//! [`Registry`] under a name and a version; a client bootstraps them and gets
//! a [`Capability`] it can call. Capabilities travel inside values in both
//! directions (returned objects, callbacks), calls cancel when their future is
//! dropped, deadlines and cancellation follow calls across hops, and
//! unserving an object revokes it everywhere.
//!
//! ```
//! use capwire::transport::{memory_pair, TransportConfig};
//! use capwire::{Capability, Code, Methods, Registry, Session, SessionConfig, Value};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The server side: an object with two methods, served as "calc" v1.
//! let calc = Methods::new("Calculator")
//!     .method("square", |args: Value, _ctx| async move {
//!         let (n,): (i64,) = args.decode()?;
//!         Value::new(&(n * n))
//!     })
//!     .method("apply", |args: Value, _ctx| async move {
//!         // Call the function capability the client passed in.
//!         let f = args.cap(0)?;
//!         f.call("call", Value::new(&(20,))?).await
//!     });
//! let registry = Registry::new();
//! let served = registry.serve("calc", "1", calc)?;
//!
//! // Any transport works; TCP, Unix, WebSocket and stdio look the same.
//! let (client_end, server_end) = memory_pair(&TransportConfig::default());
//! let _server = Session::new(server_end, registry, SessionConfig::default());
//! let client = Session::new(client_end, Registry::new(), SessionConfig::default());
//!
//! let calc = client.bootstrap("calc", Some("1")).await?;
//! let nine: i64 = calc.call("square", Value::new(&(3,))?).await?.decode()?;
//! assert_eq!(nine, 9);
//!
//! // A callback: a local object passed as an argument.
//! let add_one = Capability::local(Methods::new("AddOne").method("call", |args: Value, _ctx| async move {
//!     let (n,): (i64,) = args.decode()?;
//!     Value::new(&(n + 1))
//! }));
//! let r: i64 = calc.call("apply", Value::capability(add_one)).await?.decode()?;
//! assert_eq!(r, 21);
//!
//! // Unserving revokes the capability on every connection.
//! drop(served);
//! # for _ in 0..100 { tokio::task::yield_now().await; }
//! let err = calc.call("square", Value::new(&(2,))?).await.unwrap_err();
//! assert_eq!(err.code, Code::FailedPrecondition);
//! # Ok(())
//! # }
//! ```
//!
//! The [`transport`] module holds the transports and the address syntax;
//! [`proto`] (`capwire-proto`) is the wire protocol itself.

pub use capwire_proto as proto;

pub mod attestation;
pub mod events;
pub mod policy;
pub mod registry;
pub mod transport;

pub mod stream;
pub mod typed;
pub mod typescript;

mod capability;
mod object;
mod promise;
mod session;
mod value;

pub use capability::{CallOptions, Capability};
pub use capwire_proto::{Code, Reason, Status};
pub use events::{Event, Stats};
pub use object::{CallContext, Items, Methods, Object};
pub use promise::Promise;
pub use registry::{IfExists, Registry, ServeHandle};
pub use session::{Limits, Session, SessionConfig};
pub use stream::{sink, ItemStream, SinkReceiver, SinkWriter, StreamOptions};
pub use value::Value;

pub use capwire_macros::interface;
/// JSON Schema generation, as used by typed interfaces (`schemars`).
pub use schemars;

/// What the code `#[interface]` generates refers to.
#[doc(hidden)]
pub mod __private {
    pub use futures_util::future::BoxFuture;
    pub use serde;
    pub use serde_json;
}
