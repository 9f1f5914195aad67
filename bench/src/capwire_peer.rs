//! capwire, in either codec: a typed service served with `dialect::serve_forever`.

use capwire::proto::Codec;
use capwire::transport::{self, Listener, TransportConfig};
use capwire::typed::ItemsOf;
use capwire::{Registry, Session, SessionConfig, Status};
use futures_util::StreamExt;

use crate::measure::{self, Sample};
use crate::net::{self, Endpoint, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// The service every peer implements.
#[capwire::interface(name = "bench", version = "1.0")]
pub trait Bench {
    /// Returns its argument.
    async fn echo(&self, s: String) -> Result<String, Status>;
    /// The first stage of a chain.
    async fn stage(&self) -> Result<StageClient, Status>;
    /// `n` items of `size` bytes.
    #[capwire(stream)]
    async fn items(&self, n: u64, size: u64) -> Result<ItemsOf<String>, Status>;
}

/// One link of `a.b().c()`.
#[capwire::interface(version = "1.0")]
pub trait Stage {
    /// The next stage.
    async fn next(&self) -> Result<StageClient, Status>;
    /// The chain's value.
    async fn value(&self) -> Result<String, Status>;
}

struct BenchImpl;
struct StageImpl;

impl Bench for BenchImpl {
    async fn echo(&self, s: String) -> Result<String, Status> {
        Ok(s)
    }
    async fn stage(&self) -> Result<StageClient, Status> {
        Ok(StageClient::from_impl(StageImpl))
    }
    async fn items(&self, n: u64, size: u64) -> Result<ItemsOf<String>, Status> {
        let item = "x".repeat(size as usize);
        Ok(futures_util::stream::iter((0..n).map(move |_| Ok(item.clone()))).boxed())
    }
}

impl Stage for StageImpl {
    async fn next(&self) -> Result<StageClient, Status> {
        Ok(StageClient::from_impl(StageImpl))
    }
    async fn value(&self) -> Result<String, Status> {
        Ok(payload())
    }
}

fn config(codec: Codec) -> SessionConfig {
    let mut config = SessionConfig::default();
    config.codec = codec;
    config
}

/// Starts a server; its endpoint.
pub async fn server(net: Net, codec: Codec) -> anyhow::Result<Endpoint> {
    let registry = Registry::new();
    registry
        .serve_interface(BenchServer::new(BenchImpl))?
        .forget();
    let ep = match net {
        Net::Unix => Endpoint::Unix(net::socket_path("capwire")),
        Net::Tcp => Endpoint::Tcp("127.0.0.1:0".parse()?),
    };
    let listener = Listener::bind(&ep.capwire().parse()?, TransportConfig::default()).await?;
    let ep = match net {
        Net::Unix => ep,
        Net::Tcp => Endpoint::Tcp(
            listener
                .local_addr()
                .to_string()
                .trim_start_matches("tcp://")
                .parse()?,
        ),
    };
    let mut serve = capwire::dialect::ServeConfig::default();
    serve.session = config(codec);
    tokio::spawn(capwire::dialect::serve_forever(listener, registry, serve));
    Ok(ep)
}

/// A client session and the bootstrapped service.
pub async fn client(ep: &Endpoint, codec: Codec) -> anyhow::Result<(Session, BenchClient)> {
    let t = transport::connect(&ep.capwire().parse()?, &TransportConfig::default()).await?;
    let session = Session::new(t, Registry::new(), config(codec));
    let api = BenchClient::bootstrap(&session).await?;
    Ok((session, api))
}

/// Runs `work` against a fresh server.
pub async fn run(
    work: Work,
    net: Net,
    codec: Codec,
    opts: &Opts,
) -> anyhow::Result<Option<Sample>> {
    let ep = work.endpoint(net, server(net, codec).await?).await?;
    let (session, api) = client(&ep, codec).await?;
    let arg = payload();
    let sample = match work {
        Work::Unary | Work::UnaryDelayed => {
            measure::sequential(opts.budget, || async {
                api.echo(arg.clone()).await?;
                Ok(())
            })
            .await?
        }
        Work::InFlight => {
            measure::in_flight(DEPTH, opts.budget, || {
                let call = api.echo(arg.clone());
                async move {
                    call.await?;
                    Ok(())
                }
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || async {
                // One round trip: each call is pipelined on the one before.
                api.stage().next().value().await?;
                Ok(())
            })
            .await?
        }
        Work::Stream(size) => {
            let n = opts.items(size);
            let api = api.clone();
            measure::stream(async move {
                let mut items = api.items(n, size as u64);
                let (mut count, mut bytes) = (0u64, 0u64);
                while let Some(item) = items.next().await {
                    bytes += item?.len() as u64;
                    count += 1;
                }
                Ok((count, bytes))
            })
            .await?
        }
    };
    session.close().await;
    Ok(Some(sample))
}
