//! The `capwire` command-line tool.
//!
//! `capwire demo` runs a guided tour of a server and a client over a real
//! socket; `capwire demo serve` serves the demo service; `capwire call`
//! calls any served method; `capwire frames` decodes and encodes frames.

/// `println!` for the tool's output: when the reader went away (`capwire
/// demo | head -3`), the tool stops quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout_or_exit(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `print!` for the tool's output (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout_or_exit(::std::format_args!($($arg)*))
    };
}

mod broker_cmd;
mod call;
mod call_args;
mod demo;
mod demo_rpc;
mod frames;
mod jsonrpc_call;
mod metrics;
mod phases;
mod relay_cmd;
mod signatures;
mod tls;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use capwire::attestation::{Attestation, TransportKind};
use capwire::proto::{Codec, Framing};
use capwire::transport::{self, Address, TransportConfig};
use capwire::Status;

/// Exit codes scripts can rely on (the README lists them). 0 is success;
/// clap exits with 2 for a usage error.
mod exit {
    /// The command line is wrong (what clap reports, and arguments that
    /// are not JSON).
    pub(crate) const USAGE: u8 = 2;
    /// Something failed here: an input file, the output, an internal error.
    pub(crate) const LOCAL: u8 = 1;
    /// The peer could not be reached: connecting failed, a phase timed out,
    /// or the connection was lost.
    pub(crate) const UNREACHABLE: u8 = 3;
    /// The peer answered with an error status.
    pub(crate) const REMOTE: u8 = 4;
}

/// What `call` and `schema` allow for connecting, bootstrapping and calling
/// together, unless `--timeout-ms` says otherwise.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "capwire",
    version,
    about = "Object-capability RPC: tools for capwire peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A 30-second tour: calls, capabilities, callbacks, errors, cancellation,
    /// deadlines and revocation between a server and a client.
    Demo {
        /// Where the demo server listens.
        #[arg(long, default_value = "tcp://127.0.0.1:0")]
        listen: String,
        #[command(subcommand)]
        command: Option<DemoCommand>,
    },
    /// Call a method of a served capability and print the result as JSON.
    Call {
        /// Where the server is, e.g. tcp://127.0.0.1:7000.
        address: String,
        /// The served name to bootstrap.
        name: String,
        /// The method; without one, the served interface's methods are listed.
        method: Option<String>,
        /// The arguments: a JSON array in parameter order, or an object of
        /// arguments by parameter name. `{"$callback": R}` passes a callback
        /// (its calls are printed, each answered with R), `{"$sink": true}` a
        /// sink (what the server writes to it is printed), `{"$source":
        /// [ITEMS]}` a stream for the server to read.
        #[arg(default_value = "[]")]
        args: String,
        /// Calls on the result, pipelined (one round trip): `.METHOD [ARGS]`
        /// or `.FIELD.METHOD [ARGS]` for a capability inside the result,
        /// e.g. `makeCounter '[5]' .increment '[1]'`. The last result is printed.
        then: Vec<String>,
        /// Give up after this many milliseconds: connecting, bootstrapping
        /// and the call together.
        #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
        timeout_ms: u64,
        /// Require this version of the served name.
        #[arg(long)]
        version: Option<String>,
        /// Call a stream method: print each item as one JSON line as it
        /// comes (credit is given back as items are printed). A stream
        /// method called without it is retried as a stream.
        #[arg(long)]
        stream: bool,
        /// The protocol to speak: capwire/1, or JSON-RPC 2.0 (the request
        /// `NAME/METHOD`, to any JSON-RPC server).
        #[arg(long, value_enum, default_value_t = DialectArg::Native)]
        dialect: DialectArg,
        /// How frames are delimited on a byte stream (JSON-RPC over
        /// tcp://, unix:// or exec:).
        #[arg(long, value_enum, default_value_t = FramingArg::Length)]
        framing: FramingArg,
        #[command(flatten)]
        tls: tls::ClientTlsArgs,
    },
    /// Print the interfaces a peer serves, as JSON Schema or TypeScript.
    Schema {
        /// Where the server is, e.g. tcp://127.0.0.1:7000.
        address: String,
        /// Print TypeScript declarations instead of the JSON schemas.
        #[arg(long)]
        ts: bool,
        /// Give up after this many milliseconds: connecting and asking together.
        #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: tls::ClientTlsArgs,
    },
    /// Write a development CA and certificates signed by it, for TLS on
    /// your own machines: ca.pem, server.pem and server.key, and NAME.pem
    /// and NAME.key for each --client NAME (mutual TLS).
    Certs {
        /// The directory to write them in (created if missing).
        dir: PathBuf,
        /// A name the server is reached by (DNS name or IP address); repeat
        /// for several.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
        /// A client certificate with this identity; repeat for several.
        #[arg(long = "client")]
        clients: Vec<String>,
    },
    /// Decode and encode capwire/1 frames.
    #[command(subcommand)]
    Frames(FramesCommand),
    /// Run the broker daemon (plugins register endpoints; durable queues),
    /// or ask a running one: status, endpoints, inbox, send.
    Broker(broker_cmd::BrokerArgs),
    /// Serve one stdio JSON-RPC agent (ACP) to many WebSocket devices:
    /// replay by sequence, a controller lease, sessions.
    Relay(relay_cmd::RelayArgs),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Serve the demo service until interrupted.
    Serve {
        /// Where to listen; `stdio:` serves one peer on stdin/stdout.
        #[arg(long, default_value = "tcp://127.0.0.1:7000")]
        listen: String,
        /// How frames are delimited on a byte stream (stdio, TCP, Unix):
        /// `ndjson` or `content-length` for JSON-RPC peers that speak them.
        #[arg(long, value_enum, default_value_t = FramingArg::Length)]
        framing: FramingArg,
        /// Require this bearer token from every client (identity `client`);
        /// clients of `capwire call` pass it in `CAPWIRE_TOKEN`.
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        tls: tls::ServerTlsArgs,
        /// Record metrics and serve them for Prometheus at GET /metrics on
        /// the listener's HTTP port (ws:// or http://; unauthenticated).
        #[arg(long)]
        metrics: bool,
    },
}

#[derive(Subcommand)]
enum FramesCommand {
    /// Read frames (either codec, detected per frame) and print each as pretty JSON.
    Decode {
        /// File to read; stdin when absent.
        input: Option<PathBuf>,
        /// How frames are delimited in the input.
        #[arg(long, value_enum, default_value_t = FramingArg::Length)]
        framing: FramingArg,
        /// Largest frame accepted, in bytes.
        #[arg(long, default_value_t = capwire::proto::DEFAULT_MAX_FRAME_BYTES)]
        max_frame_bytes: usize,
    },
    /// Read one JSON frame per line from stdin and write them to stdout, encoded and framed.
    Encode {
        /// Codec of the frames written.
        #[arg(long, value_enum, default_value_t = CodecArg::Msgpack)]
        codec: CodecArg,
        /// How frames are delimited in the output.
        #[arg(long, value_enum, default_value_t = FramingArg::Length)]
        framing: FramingArg,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DialectArg {
    /// capwire/1.
    Native,
    /// JSON-RPC 2.0.
    Jsonrpc,
}

#[derive(Clone, Copy, ValueEnum)]
enum FramingArg {
    /// u32 big-endian length prefix.
    Length,
    /// One JSON frame per line.
    Ndjson,
    /// LSP-style `Content-Length` headers.
    ContentLength,
}

impl From<FramingArg> for Framing {
    fn from(f: FramingArg) -> Framing {
        match f {
            FramingArg::Length => Framing::LengthPrefixed,
            FramingArg::Ndjson => Framing::Ndjson,
            FramingArg::ContentLength => Framing::ContentLength,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CodecArg {
    /// JSON text.
    Json,
    /// MessagePack.
    Msgpack,
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Codec {
        match c {
            CodecArg::Json => Codec::Json,
            CodecArg::Msgpack => Codec::Msgpack,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capwire: {}", report(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { listen, command } => {
            match command {
                Some(DemoCommand::Serve {
                    listen,
                    framing,
                    token,
                    tls,
                    metrics,
                }) => {
                    let listen: Address = listen.parse()?;
                    let mut transport =
                        tls.apply(TransportConfig::default().framing(framing.into()))?;
                    if metrics {
                        transport = metrics::serve_on(&listen, transport)?;
                    }
                    demo::serve_forever(&listen, transport, token).await?
                }
                None => demo::tour(&listen.parse()?).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            address,
            name,
            method,
            args,
            then,
            timeout_ms,
            version,
            stream,
            dialect,
            framing,
            tls,
        } => {
            let transport = tls.apply(TransportConfig::default().framing(framing.into()))?;
            if dialect == DialectArg::Jsonrpc {
                let Some(method) = method else {
                    return Err(
                        Usage("JSON-RPC has no method listing: name a method".into()).into(),
                    );
                };
                let args: serde_json::Value = serde_json::from_str(&args)
                    .map_err(|e| Usage(format!("the arguments are not JSON: {e}")))?;
                jsonrpc_call::call(&address, &name, &method, args, timeout_ms, transport).await?;
                return Ok(ExitCode::SUCCESS);
            }
            // `makeCounter .increment`: the first call takes no arguments.
            let (args, then) = match args.starts_with('.') {
                true => ("[]".to_owned(), [vec![args], then].concat()),
                false => (args, then),
            };
            let steps = call_args::parse_path(&then)?;
            if method.is_none() && !steps.is_empty() {
                return Err(Usage("a pipelined path needs a first method".into()).into());
            }
            let target = call::Target {
                address: &address,
                name: &name,
                version: version.as_deref(),
            };
            let request = call::Request {
                method: method.as_deref(),
                args: &args,
                steps,
                stream,
            };
            call::call(target, request, timeout_ms, transport).await
        }
        Command::Schema {
            address,
            ts,
            timeout_ms,
            tls,
        } => {
            call::schema(
                &address,
                ts,
                timeout_ms,
                tls.apply(TransportConfig::default())?,
            )
            .await
        }
        Command::Certs {
            dir,
            hosts,
            clients,
        } => {
            tls::write_certs(&dir, &hosts, &clients)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Frames(FramesCommand::Decode {
            input,
            framing,
            max_frame_bytes,
        }) => {
            let config = TransportConfig::default()
                .framing(framing.into())
                .max_frame_bytes(max_frame_bytes);
            let t = match input {
                Some(path) => {
                    let file = tokio::fs::File::open(&path)
                        .await
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    let att = Attestation::new(TransportKind::Stdio)
                        .with_peer_addr(path.display().to_string());
                    transport::stream_transport(file, tokio::io::sink(), att, &config)
                }
                None => transport::stdio(&config),
            };
            frames::decode(t).await
        }
        Command::Frames(FramesCommand::Encode { codec, framing }) => {
            frames::encode(codec.into(), framing.into()).await
        }
        Command::Broker(args) => broker_cmd::run(args).await,
        Command::Relay(args) => relay_cmd::run(args).await,
    }
}

/// Writes the tool's output; a closed stdout (a pipe whose reader exited)
/// ends the process quietly, successfully, as `head` expects of its writer.
fn stdout_or_exit(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("capwire: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each said once: a cause whose text
/// the message before it already holds (an OS error that the error wrapping
/// it quotes, a context that repeats what it wraps) is not repeated.
fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if text.contains(&line) {
            line = text;
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A mistake in the command line that clap cannot see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// The exit code for an error that ended a command.
fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return exit::USAGE;
        }
        if cause.downcast_ref::<phases::TimedOut>().is_some() {
            return exit::UNREACHABLE;
        }
        if let Some(t) = cause.downcast_ref::<capwire::transport::TransportError>() {
            use capwire::transport::TransportError as E;
            if matches!(
                t,
                E::Connect { .. }
                    | E::Io(_)
                    | E::Tls(_)
                    | E::WebSocket(_)
                    | E::ClosedByPeer(_)
                    | E::Closed
            ) {
                return exit::UNREACHABLE;
            }
        }
        if let Some(status) = cause.downcast_ref::<Status>() {
            return if status.code == capwire::Code::Unavailable {
                exit::UNREACHABLE
            } else {
                exit::REMOTE
            };
        }
    }
    exit::LOCAL
}
