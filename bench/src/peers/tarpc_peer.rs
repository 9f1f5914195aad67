//! tarpc 0.37: bincode over a length-delimited stream (Unix socket or TCP),
//! a task per request (`for_each(spawn)`), as its examples serve. No
//! capabilities and no streams: the chain is three awaited calls.

use futures_util::{Future, StreamExt};
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::length_delimited::LengthDelimitedCodec;

use crate::measure::{self, Sample};
use crate::net::{self, Endpoint, Io, Listener, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// The service.
#[tarpc::service]
pub trait TarpcBench {
    /// Returns its argument.
    async fn echo(s: String) -> String;
    /// The first stage of a chain (an id: tarpc has no object references).
    async fn stage() -> u64;
    /// The next stage.
    async fn next(id: u64) -> u64;
    /// The chain's value.
    async fn value(id: u64) -> String;
}

#[derive(Clone)]
struct Service;

impl TarpcBench for Service {
    async fn echo(self, _: context::Context, s: String) -> String {
        s
    }
    async fn stage(self, _: context::Context) -> u64 {
        1
    }
    async fn next(self, _: context::Context, id: u64) -> u64 {
        id + 1
    }
    async fn value(self, _: context::Context, _id: u64) -> String {
        payload()
    }
}

async fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

fn framed(io: Box<dyn Io>) -> tarpc::tokio_util::codec::Framed<Box<dyn Io>, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder().new_framed(io)
}

/// Starts a server.
pub async fn server(net: Net) -> anyhow::Result<Endpoint> {
    let (listener, ep) = Listener::bind(net, "tarpc").await?;
    tokio::spawn(async move {
        while let Ok(io) = listener.accept().await {
            let transport = tarpc::serde_transport::new(framed(io), Bincode::default());
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(Service.serve())
                    .for_each(spawn),
            );
        }
    });
    Ok(ep)
}

/// A client.
pub async fn client(ep: &Endpoint) -> anyhow::Result<TarpcBenchClient> {
    let io = net::connect(ep).await?;
    let transport = tarpc::serde_transport::new(framed(io), Bincode::default());
    Ok(TarpcBenchClient::new(Default::default(), transport).spawn())
}

/// Runs `work`.
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    let ep = work.endpoint(net, server(net).await?).await?;
    let client = client(&ep).await?;
    let arg = payload();
    Ok(Some(match work {
        Work::Unary | Work::UnaryDelayed => {
            measure::sequential(opts.budget, || async {
                client.echo(context::current(), arg.clone()).await?;
                Ok(())
            })
            .await?
        }
        Work::InFlight => {
            measure::in_flight(DEPTH, opts.budget, || {
                let (client, arg) = (client.clone(), arg.clone());
                async move {
                    client.echo(context::current(), arg).await?;
                    Ok(())
                }
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || async {
                let a = client.stage(context::current()).await?;
                let b = client.next(context::current(), a).await?;
                client.value(context::current(), b).await?;
                Ok(())
            })
            .await?
        }
        Work::Stream(_) => return Ok(None),
    }))
}
