//! jsonrpsee 0.26: JSON-RPC 2.0 over WebSocket (TCP only: it has no Unix
//! socket transport). Streams are subscriptions; the chain is three awaited
//! calls.

use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::server::{RpcModule, Server, ServerHandle};
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};

use crate::measure::{self, Sample};
use crate::net::{Endpoint, Net};
use crate::work::{payload, Opts, Work, DEPTH};

/// Starts a server on 127.0.0.1; its endpoint and handle (the server stops
/// when the handle is stopped).
pub async fn server() -> anyhow::Result<(Endpoint, ServerHandle)> {
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_connections(20_000)
        .build();
    let server = Server::builder()
        .set_config(config)
        .build("127.0.0.1:0")
        .await?;
    let addr = server.local_addr()?;
    let mut module = RpcModule::new(());
    module.register_method("echo", |params, _, _| params.one::<String>())?;
    module.register_method("stage", |_, _, _| 1u64)?;
    module.register_method("next", |params, _, _| params.one::<u64>().map(|id| id + 1))?;
    module.register_method("value", |_, _, _| payload())?;
    module.register_subscription(
        "items",
        "item",
        "stop_items",
        |params, pending, _, _| async move {
            let (n, size): (u64, usize) = params.parse()?;
            let sink = pending.accept().await?;
            let item = serde_json::value::to_raw_value(&"x".repeat(size))?;
            for _ in 0..n {
                sink.send(item.clone()).await?;
            }
            Ok(())
        },
    )?;
    let handle = server.start(module);
    Ok((Endpoint::Tcp(addr), handle))
}

/// A client of the server at `ep`.
pub async fn client(ep: &Endpoint) -> anyhow::Result<WsClient> {
    let Endpoint::Tcp(addr) = ep else {
        anyhow::bail!("jsonrpsee runs over TCP only")
    };
    Ok(WsClientBuilder::default()
        .max_concurrent_requests(1024)
        .max_buffer_capacity_per_subscription(4096)
        .build(format!("ws://{addr}"))
        .await?)
}

/// Runs `work` (over TCP; `None` for Unix sockets).
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    if net != Net::Tcp {
        return Ok(None);
    }
    let (ep, handle) = server().await?;
    let ep = work.endpoint(net, ep).await?;
    let client = client(&ep).await?;
    let arg = payload();
    let sample = match work {
        Work::Unary | Work::UnaryDelayed => {
            measure::sequential(opts.budget, || async {
                let _: String = client.request("echo", rpc_params![arg.clone()]).await?;
                Ok(())
            })
            .await?
        }
        Work::InFlight => {
            measure::in_flight(DEPTH, opts.budget, || async {
                let _: String = client.request("echo", rpc_params![arg.clone()]).await?;
                Ok(())
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => {
            measure::sequential(opts.budget, || async {
                let a: u64 = client.request("stage", rpc_params![]).await?;
                let b: u64 = client.request("next", rpc_params![a]).await?;
                let _: String = client.request("value", rpc_params![b]).await?;
                Ok(())
            })
            .await?
        }
        Work::Stream(size) => {
            let n = opts.items(size);
            measure::stream(async {
                let mut sub = client
                    .subscribe::<String, _>("items", rpc_params![n, size], "stop_items")
                    .await?;
                let (mut count, mut bytes) = (0u64, 0u64);
                while count < n {
                    match futures_util::StreamExt::next(&mut sub).await {
                        Some(item) => {
                            bytes += item?.len() as u64;
                            count += 1;
                        }
                        None => break,
                    }
                }
                Ok((count, bytes))
            })
            .await?
        }
    };
    drop(client);
    let _ = handle.stop();
    Ok(Some(sample))
}
