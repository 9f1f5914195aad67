//! The runtime side of typed interfaces ([`interface`](crate::interface)).
//!
//! The macro turns a trait into a client type, a server adapter and a schema;
//! this module holds what they share: typed promises and streams, typed sinks,
//! and how a capability inside a typed value is written (`{"$cap": n}`, with
//! the capability in the value's table).

use std::cell::RefCell;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use capwire_proto::Status;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::capability::{CallOptions, Capability};
use crate::object::CallContext;
use crate::promise::{MethodName, Promise};
use crate::session::Session;
use crate::stream::{ItemStream, SinkReceiver, SinkWriter, StreamOptions};
use crate::value::Value;

/// What the macro generates for an interface's server adapter.
pub trait Interface {
    /// The name it is served under (the `name` attribute).
    const NAME: &'static str;
    /// Its version (the `version` attribute).
    const VERSION: &'static str;
}

/// A typed capability handle: the client type the macro generates.
pub trait Client: Clone + Send + Sync + Sized + 'static {
    /// The Rust name of the interface.
    const INTERFACE: &'static str;

    /// Wraps an untyped capability (no check: a wrong one fails on call).
    fn from_cap(cap: Capability) -> Self;

    /// The untyped capability.
    fn cap(&self) -> &Capability;

    /// The interface's methods as JSON Schema, adding shared definitions to
    /// `generator`.
    fn describe(generator: &mut schemars::SchemaGenerator) -> serde_json::Value;
}

/// A type that can be a parameter, result or stream item of a typed method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a capwire call",
    label = "a parameter, result or item of a capwire method",
    note = "values are serialized: derive `serde::Serialize`, `serde::Deserialize` and `schemars::JsonSchema` for it"
)]
pub trait Wire: Serialize + DeserializeOwned + schemars::JsonSchema + Send + 'static {}

impl<T> Wire for T where T: Serialize + DeserializeOwned + schemars::JsonSchema + Send + 'static {}

/// The items a typed stream method returns.
pub type ItemsOf<T> = BoxStream<'static, Result<T, Status>>;

tokio::task_local! {
    static CONTEXT: CallContext;
}

/// The call a typed handler is answering: its deadline, cancellation and
/// what the transport knows about the caller. `None` outside a handler.
pub fn context() -> Option<CallContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

thread_local! {
    /// Capabilities met while serializing values (see [`Captures`]).
    static OUTGOING: RefCell<Captures> = const {
        RefCell::new(Captures {
            mark: None,
            caps: Vec::new(),
        })
    };
    /// The capability table of the value being deserialized.
    static INCOMING: RefCell<Option<Vec<Capability>>> = const { RefCell::new(None) };
}

/// True if no table is set up in `slot` (the common case: not nested).
fn unset(slot: &'static std::thread::LocalKey<RefCell<Option<Vec<Capability>>>>) -> bool {
    slot.with(|s| s.borrow().is_none())
}

/// Restores a thread-local slot when dropped (also on panic).
struct Restore<'a> {
    slot: &'static std::thread::LocalKey<RefCell<Option<Vec<Capability>>>>,
    old: Option<Vec<Capability>>,
    _not_send: PhantomData<&'a ()>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let old = self.old.take();
        self.slot.with(|s| *s.borrow_mut() = old);
    }
}

fn swap_in(
    slot: &'static std::thread::LocalKey<RefCell<Option<Vec<Capability>>>>,
    caps: Vec<Capability>,
) -> Restore<'static> {
    let old = slot.with(|s| s.borrow_mut().replace(caps));
    Restore {
        slot,
        old,
        _not_send: PhantomData,
    }
}

/// The capabilities met while serializing values, innermost capture last
/// (captures nest when a `Serialize` impl encodes a value of its own).
struct Captures {
    /// Where the innermost capture's capabilities start in `caps`; `None`
    /// outside any capture.
    mark: Option<usize>,
    caps: Vec<Capability>,
}

/// One capture: ends it (the outer mark back, its capabilities taken) when
/// finished, or drops what it left if the encoder panicked.
struct Capture {
    mark: usize,
    outer: Option<usize>,
    done: bool,
}

impl Capture {
    fn start() -> Capture {
        let (mark, outer) = OUTGOING.with(|c| {
            let mut c = c.borrow_mut();
            let mark = c.caps.len();
            (mark, c.mark.replace(mark))
        });
        Capture {
            mark,
            outer,
            done: false,
        }
    }

    fn finish(mut self) -> Vec<Capability> {
        self.done = true;
        OUTGOING.with(|c| {
            let mut c = c.borrow_mut();
            c.mark = self.outer;
            if c.caps.len() > self.mark {
                c.caps.split_off(self.mark)
            } else {
                Vec::new()
            }
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.done {
            OUTGOING.with(|c| {
                let mut c = c.borrow_mut();
                c.mark = self.outer;
                c.caps.truncate(self.mark);
            });
        }
    }
}

/// Runs `encode` collecting the capabilities it meets: what [`Value::new`]
/// and [`Value::encode`] use, so handles inside any value become
/// placeholders. One pass; a value with no handle costs two thread-local
/// accesses and allocates nothing.
pub(crate) fn capturing<R>(encode: impl FnOnce() -> R) -> (R, Vec<Capability>) {
    let capture = Capture::start();
    let out = encode();
    (out, capture.finish())
}

/// Runs `decode` with `caps` as the table placeholders refer to: what
/// [`Value::decode`] uses, so handles inside any type decode. A value with
/// no capabilities is decoded with no table (a handle in the type then
/// fails, as it should: there is nothing for it to refer to).
pub(crate) fn resolving<R>(caps: &[Capability], decode: impl FnOnce() -> R) -> R {
    if caps.is_empty() && unset(&INCOMING) {
        return decode();
    }
    let _restore = swap_in(&INCOMING, caps.to_vec());
    decode()
}

impl Value {
    /// The same as [`Value::new`] (kept for the code the interface macro
    /// generates, and for readers who want to say "typed").
    pub fn from_typed<T: Serialize + ?Sized>(v: &T) -> Result<Value, Status> {
        Value::new(v)
    }

    /// The same as [`Value::decode`].
    pub fn to_typed<T: DeserializeOwned>(&self) -> Result<T, Status> {
        self.decode()
    }
}

/// The schema document of a served interface: its name, version and methods,
/// with the definitions they share.
#[doc(hidden)]
pub fn interface_schema<C: Client>(name: &str, version: &str) -> serde_json::Value {
    let mut generator = schemars::SchemaGenerator::default();
    let methods = C::describe(&mut generator);
    serde_json::json!({
        "name": name,
        "version": version,
        "interface": C::INTERFACE,
        "methods": methods,
        "$defs": generator.definitions().clone(),
    })
}

/// A typed call's result, before it arrives. Await it for the value; if the
/// result is a typed capability, call its methods right away (through
/// `Deref`) to pipeline on it.
#[must_use = "a promise does nothing until it is awaited or pipelined on"]
pub struct TypedPromise<T> {
    promise: Result<Promise, Status>,
    pipelined: OnceLock<T>,
}

// `pipelined` is never pinned: the promise only ever moves its parts.
impl<T> Unpin for TypedPromise<T> {}

impl<T> TypedPromise<T> {
    /// Calls `method` on `cap` with already encoded arguments.
    #[doc(hidden)]
    pub fn call(
        cap: &Capability,
        method: &'static str,
        args: Result<Value, Status>,
        options: CallOptions,
    ) -> TypedPromise<T> {
        TypedPromise {
            promise: args.map(|args| cap.call_named(MethodName::Static(method), args, options)),
            pipelined: OnceLock::new(),
        }
    }

    /// The untyped promise (an error if the arguments could not be encoded).
    pub fn into_untyped(self) -> Result<Promise, Status> {
        self.promise
    }
}

impl<T: Client> TypedPromise<T> {
    /// The capability this call will return, usable before it arrives.
    pub fn pipeline(&self) -> &T {
        self.pipelined.get_or_init(|| match &self.promise {
            Ok(p) => T::from_cap(p.cap()),
            Err(status) => T::from_cap(Capability::error(status.clone())),
        })
    }
}

impl<T: Client> Deref for TypedPromise<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.pipeline()
    }
}

impl<T: DeserializeOwned> Future for TypedPromise<T> {
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.promise {
            Ok(p) => p.poll_unpin(cx).map(|r| r.and_then(|v| v.to_typed())),
            Err(status) => Poll::Ready(Err(status.clone())),
        }
    }
}

/// The items of a typed stream call, decoded as they arrive.
pub struct TypedStream<T> {
    items: Result<ItemStream, Option<Status>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> TypedStream<T> {
    /// Calls stream method `method` on `cap`.
    #[doc(hidden)]
    pub fn call(
        cap: &Capability,
        method: &'static str,
        args: Result<Value, Status>,
        options: StreamOptions,
    ) -> TypedStream<T> {
        TypedStream {
            items: args
                .map(|args| cap.call_stream_named(MethodName::Static(method), args, options))
                .map_err(Some),
            _t: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Stream for TypedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.items {
            Ok(items) => items
                .poll_next_unpin(cx)
                .map(|item| item.map(|r| r.and_then(|v| v.to_typed()))),
            Err(status) => Poll::Ready(status.take().map(Err)),
        }
    }
}

/// A typed sink: a capability items of type `T` are written to. Pass it as
/// an argument or return it; write to it with [`Sink::writer`].
pub struct Sink<T> {
    cap: Capability,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> Sink<T> {
    /// A writer with the default window of 32 unacknowledged writes.
    pub fn writer(&self) -> TypedSinkWriter<T> {
        TypedSinkWriter {
            inner: SinkWriter::new(self.cap.clone()),
            _t: PhantomData,
        }
    }

    /// The untyped capability.
    pub fn cap(&self) -> &Capability {
        &self.cap
    }
}

/// Makes a typed sink and the stream of what is written to it (see [`crate::sink`]).
pub fn sink<T: DeserializeOwned>(window: usize) -> (Sink<T>, TypedSinkReceiver<T>) {
    let (cap, rx) = crate::stream::sink(window);
    (
        Sink {
            cap,
            _t: PhantomData,
        },
        TypedSinkReceiver {
            rx,
            _t: PhantomData,
        },
    )
}

/// Writes typed items to a [`Sink`], keeping at most its window unacknowledged.
pub struct TypedSinkWriter<T> {
    inner: SinkWriter,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> TypedSinkWriter<T> {
    /// Writes one item, waiting while the window is full.
    pub async fn send(&mut self, item: &T) -> Result<(), Status> {
        self.inner.send(Value::from_typed(item)?).await
    }

    /// Waits for every write to be acknowledged, then ends the sink.
    pub async fn end(self) -> Result<(), Status> {
        self.inner.end().await
    }

    /// Ends the sink with an error.
    pub async fn abort(self, status: Status) -> Result<(), Status> {
        self.inner.abort(status).await
    }
}

/// The items written to a typed sink, in order.
pub struct TypedSinkReceiver<T> {
    rx: SinkReceiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for TypedSinkReceiver<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_next_unpin(cx)
            .map(|item| item.map(|r| r.and_then(|v| v.to_typed())))
    }
}

/// A typed source: a stream of `T` inside a value (see [`crate::source`]).
/// Make one with [`Source::new`] and pass it as an argument or return it;
/// the holder reads it once with [`Source::read`]. A capnweb peer sees it as
/// a `ReadableStream`, and a `ReadableStream` it sends arrives as one.
pub struct Source<T> {
    cap: Capability,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + Send + 'static> Source<T> {
    /// A source of `items`.
    pub fn new(items: ItemsOf<T>) -> Source<T> {
        Source {
            cap: crate::stream::source(support::encode_items(items)),
            _t: PhantomData,
        }
    }
}

impl<T> Source<T> {
    /// Reads the items (once: a second read fails `failed_precondition`).
    pub fn read(&self) -> TypedStream<T> {
        TypedStream::call(
            &self.cap,
            "read",
            Ok(Value::null()),
            StreamOptions::default(),
        )
    }

    /// The untyped capability.
    pub fn cap(&self) -> &Capability {
        &self.cap
    }
}

/// The impls a typed capability wrapper (`Sink<T>`, `Source<T>`) shares:
/// cloning, `Debug`, travelling as a `{"$cap": n}` placeholder, and a JSON
/// Schema that names its item type under `marker`.
macro_rules! cap_wrapper {
    ($ty:ident, $prefix:literal, $marker:literal) => {
        impl<T> Clone for $ty<T> {
            fn clone(&self) -> Self {
                $ty {
                    cap: self.cap.clone(),
                    _t: PhantomData,
                }
            }
        }

        impl<T> std::fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.cap)
            }
        }

        impl<T> Serialize for $ty<T> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                support::serialize_cap(&self.cap, serializer)
            }
        }

        impl<'de, T> Deserialize<'de> for $ty<T> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                support::deserialize_cap(deserializer).map(|cap| $ty {
                    cap,
                    _t: PhantomData,
                })
            }
        }

        impl<T: schemars::JsonSchema> schemars::JsonSchema for $ty<T> {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                format!(concat!($prefix, "{}"), T::schema_name()).into()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let item = generator.subschema_for::<T>();
                schemars::json_schema!({
                    "type": "object",
                    "properties": { "$cap": { "type": "integer", "minimum": 0 } },
                    "required": ["$cap"],
                    "additionalProperties": false,
                    $marker: item,
                })
            }
        }
    };
}

cap_wrapper!(Sink, "Sink_of_", "x-capwire-sink");
cap_wrapper!(Source, "Source_of_", "x-capwire-source");

/// Bootstraps a typed interface from a session, at its declared version.
#[doc(hidden)]
pub async fn bootstrap<C: Client>(
    session: &Session,
    name: &str,
    version: &str,
) -> Result<C, Status> {
    session
        .bootstrap(name, Some(version))
        .await
        .map(C::from_cap)
}

/// A local object as an untyped capability, for the typed client's
/// `from_impl`.
#[doc(hidden)]
pub fn local<O: crate::Object>(object: O) -> Capability {
    Capability::from_arc(Arc::new(object))
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for TypedStreamCollect<T> {
    type Output = Result<Vec<T>, Status>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        async move {
            let mut out = Vec::new();
            let mut items = self.0;
            while let Some(item) = items.next().await {
                out.push(item?);
            }
            Ok(out)
        }
        .boxed()
    }
}

/// All the items of a typed stream, or its error: `stream.collect_all().await`.
pub struct TypedStreamCollect<T>(TypedStream<T>);

impl<T: DeserializeOwned + Send + 'static> TypedStream<T> {
    /// Collects every item, stopping at the first error.
    pub fn collect_all(self) -> TypedStreamCollect<T> {
        TypedStreamCollect(self)
    }
}

/// What the code `#[capwire::interface]` generates calls: public only
/// through `capwire::__private`, not part of the API.
pub(crate) mod support {
    use std::future::Future;

    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ItemsOf, Wire, CONTEXT, INCOMING, OUTGOING};
    use crate::capability::Capability;
    use crate::object::CallContext;
    use crate::value::Value;
    use futures_util::StreamExt;

    /// Checked by the macro for every parameter, result and item type.
    pub fn assert_wire<T: Wire>() {}

    /// Runs a typed handler's future with its [`super::context`].
    pub fn with_context<F: Future + Send + 'static>(
        ctx: CallContext,
        fut: F,
    ) -> impl Future<Output = F::Output> + Send + 'static
    where
        F::Output: Send,
    {
        CONTEXT.scope(ctx, fut)
    }

    /// Serializes a capability as a placeholder of the value being encoded
    /// ([`Value::from_typed`]). For the `Serialize` impls of client types.
    pub fn serialize_cap<S: Serializer>(
        cap: &Capability,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let n = OUTGOING.with(|c| {
            let mut c = c.borrow_mut();
            let mark = c.mark?;
            c.caps.push(cap.clone());
            Some(c.caps.len() - 1 - mark)
        });
        match n {
            Some(n) => {
                #[derive(Serialize)]
                struct Placeholder {
                    #[serde(rename = "$cap")]
                    n: usize,
                }
                Placeholder { n }.serialize(serializer)
            }
            None => Err(S::Error::custom(
                "a capability can only be encoded inside a capwire value (Value::new)",
            )),
        }
    }

    /// Deserializes a placeholder of the value being decoded
    /// ([`Value::to_typed`]) as its capability.
    pub fn deserialize_cap<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Capability, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Placeholder {
            #[serde(rename = "$cap")]
            n: usize,
        }
        let Placeholder { n } = Placeholder::deserialize(deserializer)?;
        let cap = INCOMING.with(|s| s.borrow().as_ref().map(|caps| caps.get(n).cloned()));
        match cap {
            Some(Some(cap)) => Ok(cap),
            Some(None) => Err(D::Error::custom(format_args!(
                "placeholder {n} has no capability in the value's table"
            ))),
            None => Err(D::Error::custom(format_args!(
                "placeholder {n} has no capability to refer to: the value carries none \
                 (or it is not decoded by Value::decode)"
            ))),
        }
    }

    /// The JSON Schema of a capability of interface `interface`, with its methods.
    pub fn cap_schema(interface: &str, methods: serde_json::Value) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": { "$cap": { "type": "integer", "minimum": 0 } },
            "required": ["$cap"],
            "additionalProperties": false,
            "x-capwire-interface": interface,
            "x-capwire-methods": methods,
        })
    }

    /// The error for arguments that do not decode as a method's
    /// parameters: the method, its parameters, and what was wrong, in JSON
    /// terms.
    pub fn bad_arguments(
        method: &str,
        params: &[&str],
        status: capwire_proto::Status,
    ) -> capwire_proto::Status {
        let what = status
            .message
            .replace("a tuple of size", "an array of length")
            .replace("invalid length", "wrong number of arguments:");
        capwire_proto::Status::new(
            capwire_proto::Code::InvalidArgument,
            format!(
                "`{method}` takes its arguments as a JSON array [{}]: {what}",
                params.join(", ")
            ),
        )
        .with_reason(capwire_proto::Reason::BAD_ARGUMENTS)
    }

    /// Turns a typed stream method's items into values.
    pub fn encode_items<T: Serialize + Send + 'static>(items: ItemsOf<T>) -> crate::Items {
        items
            .map(|item| item.and_then(|v| Value::from_typed(&v)))
            .boxed()
    }
}
