//! capnp-rpc 0.21: Cap'n Proto's two-party RPC over a Unix socket or TCP.
//! Its objects are `!Send`, so everything runs on a `LocalSet`. The chain is
//! pipelined (capnp-rpc has promise pipelining); the stream is the server
//! calling the client's `Sink` with 32 calls in flight.

use std::cell::Cell;
use std::rc::Rc;

use capnp::capability::Promise;
use capnp_rpc::{pry, rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::bench_capnp::{bench, sink, stage};
use crate::measure::{self, Sample};
use crate::net::{self, Endpoint, Io, Listener, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// Items the server's stream keeps unacknowledged.
const WINDOW: usize = 32;

struct BenchImpl;
struct StageImpl;

impl bench::Server for BenchImpl {
    fn echo(
        &mut self,
        params: bench::EchoParams,
        mut results: bench::EchoResults,
    ) -> Promise<(), capnp::Error> {
        let s = pry!(pry!(pry!(params.get()).get_s()).to_str());
        results.get().set_s(s);
        Promise::ok(())
    }

    fn stage(
        &mut self,
        _: bench::StageParams,
        mut results: bench::StageResults,
    ) -> Promise<(), capnp::Error> {
        results.get().set_stage(capnp_rpc::new_client(StageImpl));
        Promise::ok(())
    }

    fn items(
        &mut self,
        params: bench::ItemsParams,
        _: bench::ItemsResults,
    ) -> Promise<(), capnp::Error> {
        let p = pry!(params.get());
        let (n, size) = (p.get_n(), p.get_size() as usize);
        let sink: sink::Client = pry!(p.get_sink());
        let item = "x".repeat(size);
        Promise::from_future(async move {
            let mut in_flight = FuturesUnordered::new();
            for _ in 0..n {
                let mut req = sink.item_request();
                req.get().set_s(item.as_str());
                in_flight.push(req.send().promise);
                if in_flight.len() >= WINDOW {
                    if let Some(r) = in_flight.next().await {
                        r?;
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
            Ok(())
        })
    }
}

impl stage::Server for StageImpl {
    fn next(
        &mut self,
        _: stage::NextParams,
        mut results: stage::NextResults,
    ) -> Promise<(), capnp::Error> {
        results.get().set_stage(capnp_rpc::new_client(StageImpl));
        Promise::ok(())
    }

    fn value(
        &mut self,
        _: stage::ValueParams,
        mut results: stage::ValueResults,
    ) -> Promise<(), capnp::Error> {
        results.get().set_s(payload().as_str());
        Promise::ok(())
    }
}

/// Counts what the server streams into it.
struct Counter {
    items: Rc<Cell<u64>>,
    bytes: Rc<Cell<u64>>,
}

impl sink::Server for Counter {
    fn item(
        &mut self,
        params: sink::ItemParams,
        _: sink::ItemResults,
    ) -> Promise<(), capnp::Error> {
        let len = pry!(pry!(params.get()).get_s()).len() as u64;
        self.items.set(self.items.get() + 1);
        self.bytes.set(self.bytes.get() + len);
        Promise::ok(())
    }
}

fn rpc_system(
    io: Box<dyn Io>,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcSystem<Side> {
    let (r, w) = tokio::io::split(io);
    let network = twoparty::VatNetwork::new(r.compat(), w.compat_write(), side, Default::default());
    RpcSystem::new(Box::new(network), bootstrap)
}

/// Starts a server on the current `LocalSet`.
pub async fn server(net: Net) -> anyhow::Result<Endpoint> {
    let (listener, ep) = Listener::bind(net, "capnp").await?;
    let main: bench::Client = capnp_rpc::new_client(BenchImpl);
    tokio::task::spawn_local(async move {
        while let Ok(io) = listener.accept().await {
            let rpc = rpc_system(io, Side::Server, Some(main.clone().client));
            tokio::task::spawn_local(rpc);
        }
    });
    Ok(ep)
}

/// A client on the current `LocalSet`.
pub async fn client(ep: &Endpoint) -> anyhow::Result<bench::Client> {
    let io = net::connect(ep).await?;
    let mut rpc = rpc_system(io, Side::Client, None);
    let main: bench::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    Ok(main)
}

/// Runs `work` (on a `LocalSet` of its own).
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    let local = tokio::task::LocalSet::new();
    local.run_until(run_local(work, net, *opts)).await
}

async fn run_local(work: Work, net: Net, opts: Opts) -> anyhow::Result<Option<Sample>> {
    let ep = work.endpoint(net, server(net).await?).await?;
    let api = client(&ep).await?;
    let arg = payload();
    let echo = || {
        let mut req = api.echo_request();
        req.get().set_s(arg.as_str());
        let reply = req.send().promise;
        async move {
            reply.await?.get()?.get_s()?;
            Ok(())
        }
    };
    Ok(Some(match work {
        Work::Unary | Work::UnaryDelayed => measure::sequential(opts.budget, echo).await?,
        Work::InFlight => measure::in_flight(DEPTH, opts.budget, echo).await?,
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || {
                // Pipelined: each call goes on the promise of the one before.
                let first = api.stage_request().send().pipeline.get_stage();
                let second = first.next_request().send().pipeline.get_stage();
                let value = second.value_request().send().promise;
                async move {
                    value.await?.get()?.get_s()?;
                    Ok(())
                }
            })
            .await?
        }
        Work::Stream(size) => {
            let n = opts.items(size);
            let (items, bytes) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            let sink: sink::Client = capnp_rpc::new_client(Counter {
                items: items.clone(),
                bytes: bytes.clone(),
            });
            let mut req = api.items_request();
            req.get().set_n(n);
            req.get().set_size(size as u64);
            req.get().set_sink(sink);
            measure::stream(async move {
                req.send().promise.await?;
                Ok((items.get(), bytes.get()))
            })
            .await?
        }
    }))
}
