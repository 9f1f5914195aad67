//! tonic 0.14 (gRPC over HTTP/2, prost messages), over TCP and over a Unix
//! socket (hyper's connector). Streams are server-streaming RPCs; the chain
//! is three awaited calls.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::measure::{self, Sample};
use crate::net::{self, Endpoint, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// Code generated from `proto/bench.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("bench");
}

use pb::bench_client::BenchClient;
use pb::bench_server::{Bench, BenchServer};
use pb::{Empty, Id, ItemsReq, Msg};

struct Service;

type Items = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Bench for Service {
    async fn echo(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(req.into_inner()))
    }
    async fn stage(&self, _: Request<Empty>) -> Result<Response<Id>, Status> {
        Ok(Response::new(Id { id: 1 }))
    }
    async fn next(&self, req: Request<Id>) -> Result<Response<Id>, Status> {
        Ok(Response::new(Id {
            id: req.into_inner().id + 1,
        }))
    }
    async fn value(&self, _: Request<Id>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(Msg { s: payload() }))
    }
    type ItemsStream = Items;
    async fn items(&self, req: Request<ItemsReq>) -> Result<Response<Items>, Status> {
        let ItemsReq { n, size } = req.into_inner();
        let item = "x".repeat(size as usize);
        let items = futures_util::stream::iter((0..n).map(move |_| Ok(Msg { s: item.clone() })));
        Ok(Response::new(items.boxed()))
    }
}

/// Starts a server.
pub async fn server(net: Net) -> anyhow::Result<Endpoint> {
    let svc = BenchServer::new(Service);
    Ok(match net {
        Net::Tcp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                Server::builder()
                    .tcp_nodelay(true)
                    .add_service(svc)
                    .serve_with_incoming(incoming),
            );
            Endpoint::Tcp(addr)
        }
        Net::Unix => {
            let path = net::socket_path("tonic");
            let listener = tokio::net::UnixListener::bind(&path)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            tokio::spawn(
                Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming),
            );
            Endpoint::Unix(path)
        }
    })
}

/// A client.
pub async fn client(ep: &Endpoint) -> anyhow::Result<BenchClient<Channel>> {
    let channel = match ep {
        Endpoint::Tcp(addr) => {
            tonic::transport::Endpoint::try_from(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?
        }
        Endpoint::Unix(path) => {
            let path = path.clone();
            tonic::transport::Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await?
        }
    };
    Ok(BenchClient::new(channel))
}

/// Runs `work`.
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    let ep = work.endpoint(net, server(net).await?).await?;
    let client = client(&ep).await?;
    let arg = payload();
    Ok(Some(match work {
        Work::Unary | Work::UnaryDelayed => {
            measure::sequential(opts.budget, || {
                let mut c = client.clone();
                let s = arg.clone();
                async move {
                    c.echo(Msg { s }).await?;
                    Ok(())
                }
            })
            .await?
        }
        Work::InFlight => {
            measure::in_flight(DEPTH, opts.budget, || {
                let mut c = client.clone();
                let s = arg.clone();
                async move {
                    c.echo(Msg { s }).await?;
                    Ok(())
                }
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || {
                let mut c = client.clone();
                async move {
                    let a = c.stage(Empty {}).await?.into_inner();
                    let b = c.next(a).await?.into_inner();
                    c.value(b).await?;
                    Ok(())
                }
            })
            .await?
        }
        Work::Stream(size) => {
            let n = opts.items(size);
            let mut c = client.clone();
            measure::stream(async move {
                let mut items = c
                    .items(ItemsReq {
                        n,
                        size: size as u64,
                    })
                    .await?
                    .into_inner();
                let (mut count, mut bytes) = (0u64, 0u64);
                while let Some(item) = items.next().await {
                    bytes += item?.s.len() as u64;
                    count += 1;
                }
                Ok((count, bytes))
            })
            .await?
        }
    }))
}
