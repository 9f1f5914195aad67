//! `capwire call` and `capwire schema`: connect to a peer within one time
//! limit, ask for its schemas, call a method (with a pipelined path,
//! callbacks, sinks and sources) and print what comes back.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use capwire::transport::{self, Address, TransportConfig};
use capwire::{Registry, Session, SessionConfig, Status, Value};

use crate::phases::{self, Phases};
use crate::{call_args, exit, signatures, Usage};

/// The served name a `call` goes to.
pub(crate) struct Target<'a> {
    pub(crate) address: &'a str,
    pub(crate) name: &'a str,
    pub(crate) version: Option<&'a str>,
}

/// What a `call` asks: the method (none: list the methods), its JSON
/// arguments, calls pipelined on its result, and whether the last one is a
/// stream.
pub(crate) struct Request<'a> {
    pub(crate) method: Option<&'a str>,
    pub(crate) args: &'a str,
    pub(crate) steps: Vec<call_args::Step>,
    pub(crate) stream: bool,
}

/// `capwire call`: bootstraps `name` at `address` and calls `method` (none:
/// lists the methods).
pub(crate) async fn call(
    target: Target<'_>,
    request: Request<'_>,
    timeout_ms: u64,
    transport: TransportConfig,
) -> anyhow::Result<ExitCode> {
    let Target {
        address,
        name,
        version,
    } = target;
    let Request {
        method,
        args,
        steps,
        stream,
    } = request;
    // A typo in a pipelined step is on another interface: no suggestions
    // from this one's methods then.
    let pipelined = !steps.is_empty();
    let mut args: serde_json::Value = serde_json::from_str(args)
        .map_err(|e| Usage(format!("arguments are not JSON: {args} ({e})")))?;
    let phases = Phases::new(Duration::from_millis(timeout_ms), address);
    let session = connect(&phases, address, transport).await?;
    // The interface's schema: to list its methods, to turn named arguments
    // into positional ones, and to suggest a method for a typo.
    let interface = interface_of(&session, &phases, name);
    let Some(method) = method else {
        let listing = interface.await;
        phases.run("closing", session.close()).await.ok();
        return match listing {
            Some(interface) => {
                out!("{}", interface.listing());
                Ok(ExitCode::SUCCESS)
            }
            None => Err(Usage(format!(
                "`{name}` at {address} lists no methods (it is not served, or has no schema): \
                 name a method"
            ))
            .into()),
        };
    };
    let interface = if args.is_object() {
        interface.await
    } else {
        None
    };
    if let Some(interface) = &interface {
        if let Some(list) = interface.positional(method, &args).map_err(Usage)? {
            args = list;
        }
    }
    let outcome = async {
        let cap = phases
            .run("bootstrapping at", session.bootstrap(name, version))
            .await??;
        // Capabilities asked for in the arguments, and the pipelined path:
        // every call but the last is on a result not yet arrived.
        let call_args::Prepared { value, mut sinks } = call_args::prepare(args)?;
        let options = capwire::CallOptions::timeout(phases.call_deadline());
        let (mut target, mut last, mut value) = (cap, method.to_owned(), value);
        for step in steps {
            let promise = target.call_with(&last, value, options.clone());
            target = match step.path.is_empty() {
                true => promise.cap(),
                false => promise.get(step.path),
            };
            let prepared = call_args::prepare(step.args)?;
            sinks.extend(prepared.sinks);
            (last, value) = (step.method, prepared.value);
        }
        // What the server writes to sinks is printed as it comes.
        let mut printing = tokio::spawn(call_args::print_sinks(sinks));
        let stop_printing = printing.abort_handle();
        let _stop_printing = AbortOnDrop(stop_printing);
        // The call carries what is left as its deadline, so the server
        // stops working on it when this side stops waiting.
        if !stream {
            let call = target.call_with(&last, value.clone(), options);
            match phases.run("waiting for the call at", call).await? {
                // A stream method called plainly: call it as a stream.
                Err(s) if s.message.contains("is a stream method") => {}
                Err(s) => return Err(s.into()),
                Ok(result) => {
                    let ended = phases.run("waiting for the sinks to end at", &mut printing);
                    ended
                        .await?
                        .map_err(|e| anyhow::anyhow!("printing the sinks: {e}"))??;
                    return Ok::<_, anyhow::Error>(Some(result));
                }
            }
        }
        let options = capwire::StreamOptions::default().timeout(phases.call_deadline());
        let items = target.call_stream_with(&last, value, options);
        phases.run("streaming from", print_items(items)).await??;
        Ok(None)
    }
    .await;
    // An unknown method: the nearest names the interface has.
    let suggestion = match &outcome {
        Err(e)
            if !pipelined
                && e.downcast_ref::<Status>()
                    .is_some_and(|s| s.code == capwire::Code::Unimplemented) =>
        {
            let interface = match interface {
                Some(i) => Some(i),
                None => interface_of(&session, &phases, name).await,
            };
            interface.map(|i| {
                let near = i.nearest(method);
                let mut text = String::new();
                if !near.is_empty() {
                    text.push_str(&format!("did you mean `{}`?\n", near.join("`, `")));
                }
                text.push_str(&i.listing());
                text
            })
        }
        _ => None,
    };
    phases.run("closing", session.close()).await.ok();
    let outcome = match outcome {
        Ok(value) => Ok(value),
        Err(e) => match e.downcast::<Status>() {
            Ok(status) => Err(status),
            Err(e) => return Err(e),
        },
    };
    match outcome {
        // A stream: its items were printed as they came.
        Ok(None) => Ok(ExitCode::SUCCESS),
        Ok(Some(value)) => {
            outln!("{}", serde_json::to_string_pretty(&value.to_json()?)?);
            if !value.caps().is_empty() {
                eprintln!("capwire: the result holds {} capabilities (`{{\"$cap\": n}}`), released on exit", value.caps().len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            eprintln!("capwire: {status}");
            if let Some(details) = &status.details {
                eprintln!("details: {details:?}");
            }
            if let Some(suggestion) = suggestion {
                eprint!("{suggestion}");
            }
            Ok(ExitCode::from(
                if status.code == capwire::Code::Unavailable {
                    exit::UNREACHABLE
                } else {
                    exit::REMOTE
                },
            ))
        }
    }
}

/// Aborts a task when dropped: the sink printer, once the call it serves
/// has failed or been printed.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `capwire schema ADDRESS [--ts]`: asks the peer's runtime capability for
/// the interfaces it serves.
pub(crate) async fn schema(
    address: &str,
    ts: bool,
    timeout_ms: u64,
    transport: TransportConfig,
) -> anyhow::Result<ExitCode> {
    let phases = Phases::new(Duration::from_millis(timeout_ms), address);
    let session = connect(&phases, address, transport).await?;
    let schemas = list_schemas(&session, &phases)
        .await?
        .map_err(|s| anyhow::anyhow!("the peer did not list its schemas: {s}"))?;
    phases.run("closing", session.close()).await.ok();
    if ts {
        out!("{}", capwire::typescript::declarations(&schemas));
    } else {
        outln!("{}", serde_json::to_string_pretty(&schemas)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a stream's items, one JSON line each, as they come; taking each
/// item from the stream is what gives credit back to the server.
async fn print_items(mut items: capwire::ItemStream) -> Result<(), Status> {
    use futures_util::StreamExt;
    while let Some(item) = items.next().await {
        let json = item?.to_json()?;
        outln!("{json}");
    }
    Ok(())
}

/// Connects to `address` within the command's time, as a session.
async fn connect(
    phases: &Phases,
    address: &str,
    mut transport_config: TransportConfig,
) -> anyhow::Result<Session> {
    let addr: Address = address.parse()?;
    let token = bearer_token();
    transport_config.bearer = token.clone();
    let t = phases
        .run(
            "connecting to",
            transport::connect(&addr, &transport_config),
        )
        .await?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut config = SessionConfig::default();
    config.token = token;
    Ok(Session::new(t, Registry::new(), config))
}

/// The bearer token `call` and `schema` present: `CAPWIRE_TOKEN` (an
/// environment variable keeps it out of the shell history and `ps`).
pub(crate) fn bearer_token() -> Option<String> {
    std::env::var("CAPWIRE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// The peer's served interfaces (its runtime capability's `schemas`).
async fn list_schemas(
    session: &Session,
    phases: &Phases,
) -> Result<Result<serde_json::Value, Status>, phases::TimedOut> {
    let listed = session.runtime().call_with(
        "schemas",
        Value::null(),
        capwire::CallOptions::timeout(phases.call_deadline()),
    );
    let listed = phases.run("asking for the schemas at", listed).await?;
    Ok(listed.and_then(|v| v.decode()))
}

/// The interface served as `name`, if the peer lists one.
async fn interface_of(
    session: &Session,
    phases: &Phases,
    name: &str,
) -> Option<signatures::Interface> {
    let schemas = list_schemas(session, phases).await.ok()?.ok()?;
    signatures::Interface::find(&schemas, name)
}
