//! capwire: object-capability RPC over any transport.
//!
//! A [`Session`] runs one connection, either side. A server puts objects in a
//! [`Registry`] under a name and a version; a client bootstraps them and gets
//! a capability it can call. Capabilities travel inside values in both
//! directions (returned objects, callbacks), calls on a result can be sent
//! before it arrives (promise pipelining), streams flow under credit, calls
//! cancel when their future is dropped, deadlines and cancellation follow
//! calls across hops, and unserving an object revokes it everywhere.
//!
//! # Tutorial
//!
//! ## 1. An interface, a server, a client
//!
//! Describe the interface as a trait. [`interface`] generates a typed client
//! (`CalcClient`), a server adapter (`CalcServer`) that serves any
//! implementation — so the compiler checks that every method has a handler —
//! and the interface's JSON Schema. Parameters and results are any
//! serde + schemars types; every method returns `Result<_, Status>`.
//!
//! ```
//! use capwire::transport::{memory_pair, TransportConfig};
//! use capwire::{Code, Registry, Session, SessionConfig, Status};
//!
//! #[capwire::interface(name = "calc", version = "1.0")]
//! pub trait Calc {
//!     /// `n * n`, or `invalid_argument` when it overflows.
//!     async fn square(&self, n: i64) -> Result<i64, Status>;
//! }
//!
//! struct MyCalc;
//!
//! impl Calc for MyCalc {
//!     async fn square(&self, n: i64) -> Result<i64, Status> {
//!         n.checked_mul(n).ok_or_else(|| Status::new(Code::InvalidArgument, "overflow"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new();
//! let _served = registry.serve_interface(CalcServer::new(MyCalc))?;
//!
//! // Any transport: memory here; TCP, Unix, WebSocket and stdio look the same
//! // (`transport::Listener::bind`, `transport::connect`).
//! let (client_end, server_end) = memory_pair(&TransportConfig::default());
//! let _server = Session::new(server_end, registry, SessionConfig::default());
//! let client = Session::new(client_end, Registry::new(), SessionConfig::default());
//!
//! let calc = CalcClient::bootstrap(&client).await?;
//! assert_eq!(calc.square(12).await?, 144);
//! assert_eq!(calc.square(i64::MAX).await.unwrap_err().code, Code::InvalidArgument);
//! # Ok(())
//! # }
//! ```
//!
//! ## 2. Capabilities, pipelining, callbacks
//!
//! A method may return a capability (another interface's client type), take
//! one as a parameter (a callback: an object in the caller's process), or
//! put them inside any value. A call's promise can be called *before it
//! resolves*: `calc.counter(5).increment(1)` sends both calls at once and
//! takes one round trip.
//!
//! ```
//! # use capwire::transport::{memory_pair, TransportConfig};
//! # use capwire::{Registry, Session, SessionConfig, Status};
//! use std::sync::atomic::{AtomicI64, Ordering};
//!
//! #[capwire::interface(version = "1.0")]
//! pub trait Counter {
//!     async fn increment(&self, by: i64) -> Result<i64, Status>;
//! }
//!
//! #[capwire::interface(name = "factory", version = "1.0")]
//! pub trait Factory {
//!     /// A new counter.
//!     async fn counter(&self, start: i64) -> Result<CounterClient, Status>;
//!     /// Calls the caller's counter back.
//!     async fn bump(&self, counter: CounterClient) -> Result<i64, Status>;
//! }
//!
//! struct Count(AtomicI64);
//! impl Counter for Count {
//!     async fn increment(&self, by: i64) -> Result<i64, Status> {
//!         Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
//!     }
//! }
//!
//! struct Shop;
//! impl Factory for Shop {
//!     async fn counter(&self, start: i64) -> Result<CounterClient, Status> {
//!         Ok(CounterClient::from_impl(Count(AtomicI64::new(start))))
//!     }
//!     async fn bump(&self, counter: CounterClient) -> Result<i64, Status> {
//!         counter.increment(1).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let registry = Registry::new();
//! # let _served = registry.serve_interface(FactoryServer::new(Shop))?;
//! # let (c, s) = memory_pair(&TransportConfig::default());
//! # let _server = Session::new(s, registry, SessionConfig::default());
//! # let client = Session::new(c, Registry::new(), SessionConfig::default());
//! let factory = FactoryClient::bootstrap(&client).await?;
//! // Pipelined: `increment` goes to the counter `counter(5)` will return.
//! assert_eq!(factory.counter(5).increment(1).await?, 6);
//! // A callback: our own counter, called by the server.
//! let mine = CounterClient::from_impl(Count(AtomicI64::new(41)));
//! assert_eq!(factory.bump(mine).await?, 42);
//! # Ok(())
//! # }
//! ```
//!
//! ## 3. Streams and sinks
//!
//! `#[capwire(stream)]` methods return a stream of items; the caller gets a
//! [`typed::TypedStream`] and grants credit as it reads (32 items by default),
//! so a slow reader slows only its own stream. The other way, a receiver
//! hands out a [`typed::Sink`] and the writer keeps at most its window of
//! writes unacknowledged.
//!
//! ```
//! # use capwire::transport::{memory_pair, TransportConfig};
//! # use capwire::{Registry, Session, SessionConfig, Status};
//! use capwire::typed::{sink, ItemsOf, Sink};
//! use futures_util::StreamExt;
//!
//! #[capwire::interface(name = "numbers", version = "1.0")]
//! pub trait Numbers {
//!     #[capwire(stream)]
//!     async fn upto(&self, n: u64) -> Result<ItemsOf<u64>, Status>;
//!     /// Writes the squares of `0..n` into the caller's sink.
//!     async fn squares(&self, n: u64, out: Sink<u64>) -> Result<(), Status>;
//! }
//!
//! struct Impl;
//! impl Numbers for Impl {
//!     async fn upto(&self, n: u64) -> Result<ItemsOf<u64>, Status> {
//!         Ok(futures_util::stream::iter((0..n).map(Ok)).boxed())
//!     }
//!     async fn squares(&self, n: u64, out: Sink<u64>) -> Result<(), Status> {
//!         let mut w = out.writer();
//!         for i in 0..n {
//!             w.send(&(i * i)).await?;
//!         }
//!         w.end().await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let registry = Registry::new();
//! # let _served = registry.serve_interface(NumbersServer::new(Impl))?;
//! # let (c, s) = memory_pair(&TransportConfig::default());
//! # let _server = Session::new(s, registry, SessionConfig::default());
//! # let client = Session::new(c, Registry::new(), SessionConfig::default());
//! let numbers = NumbersClient::bootstrap(&client).await?;
//! assert_eq!(numbers.upto(4).collect_all().await?, vec![0, 1, 2, 3]);
//!
//! let (out, received) = sink::<u64>(32);
//! numbers.squares(4, out).await?;
//! let got: Vec<u64> = received.map(|r| r.unwrap()).collect().await;
//! assert_eq!(got, vec![0, 1, 4, 9]);
//! # Ok(())
//! # }
//! ```
//!
//! ## 4. Errors, deadlines, cancellation, revocation
//!
//! Errors are [`Status`]es: a [`Code`], a message, an optional machine-readable
//! [`Reason`] and details. `#[capwire(timeout_ms = N)]` gives a method a
//! default deadline ([`CallOptions`] on the dynamic API); the callee stops a
//! handler past its deadline, and calls a handler makes inherit what is left
//! of it. Dropping a promise cancels its call at the callee, and the calls
//! that handler made, across hops. Dropping a [`ServeHandle`] revokes the
//! object on every connection. [`typed::context`] tells a handler about its
//! call (deadline, caller's attestation).
//!
//! ## 5. The dynamic API
//!
//! Underneath, every call is a method name and a [`Value`]; [`Methods`] builds
//! an object from closures, and [`Capability::call`] calls anything. The
//! typed layer is a thin skin over this; gateways and dialects use it
//! directly.
//!
//! ```
//! use capwire::transport::{memory_pair, TransportConfig};
//! use capwire::{Capability, Code, Methods, Registry, Session, SessionConfig, Value};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
//! let (client_end, server_end) = memory_pair(&TransportConfig::default());
//! let _server = Session::new(server_end, registry, SessionConfig::default());
//! let client = Session::new(client_end, Registry::new(), SessionConfig::default());
//!
//! let calc = client.bootstrap("calc", Some("1")).await?;
//! let nine: i64 = calc.call("square", Value::new(&(3,))?).await?.decode()?;
//! assert_eq!(nine, 9);
//!
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
//! [`proto`] (`capwire-proto`) is the wire protocol itself; `docs/` in the
//! repository has the protocol, the architecture and the benchmarks.

pub use capwire_proto as proto;

pub mod attestation;
pub mod auth;
pub mod dialect;
pub mod events;
pub mod policy;
pub mod registry;
pub mod transport;

pub mod stream;
pub mod typed;
pub mod typescript;

mod capability;
mod engine;
mod object;
mod promise;
mod session;
mod value;

pub use capability::{CallOptions, Capability};
pub use capwire_proto::{Code, Reason, Status};
pub use events::{Event, Stats};
pub mod metrics;
pub use object::{CallContext, Items, Methods, Object, PipelineAt, Pipelined};
pub use promise::Promise;
pub use registry::{IfExists, Registry, ServeHandle};
pub use session::{Limits, Session, SessionConfig};
pub use stream::{sink, source, ItemStream, SinkReceiver, SinkWriter, StreamOptions};
pub use value::Value;

pub use capwire_macros::interface;
/// JSON Schema generation, as used by typed interfaces (`schemars`).
pub use schemars;

/// What the code `#[interface]` generates refers to.
#[doc(hidden)]
pub mod __private {
    pub use crate::typed::support::{
        assert_wire, bad_arguments, cap_schema, deserialize_cap, encode_items, serialize_cap,
        with_context,
    };
    pub use futures_util::future::BoxFuture;
    pub use serde;
    pub use serde_json;
}
