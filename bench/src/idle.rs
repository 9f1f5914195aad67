//! Idle connections: the server runs in a child process (this binary's
//! `serve-idle` command), so its resident memory is measured alone.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, Endpoint, Net};
use crate::report::IdleRow;

/// The server side, in the child: serve `peer` on a Unix socket, print the
/// endpoint, serve until killed.
pub async fn serve(peer: &str) -> anyhow::Result<()> {
    let ep = match peer {
        "floor" => crate::floor::server(Net::Unix).await?,
        "capwire" => crate::capwire_peer::server(Net::Unix, capwire::proto::Codec::Msgpack).await?,
        other => crate::peers::idle_server(other).await?,
    };
    match ep {
        Endpoint::Unix(path) => println!("unix {}", path.display()),
        Endpoint::Tcp(addr) => println!("tcp {addr}"),
    }
    std::future::pending::<()>().await;
    Ok(())
}

fn rss(child: &Child) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `n` idle connections to a child serving `peer`; the server's
/// resident-set growth per connection.
pub async fn measure(peer: &str, n: usize) -> anyhow::Result<IdleRow> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve-idle", peer])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let server = Server(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let ep = match line.trim().split_once(' ') {
        Some(("unix", path)) => Endpoint::Unix(path.into()),
        Some(("tcp", addr)) => Endpoint::Tcp(addr.parse()?),
        _ => anyhow::bail!("the {peer} server said {line:?}"),
    };
    // One connection first, so that lazily built state is not counted.
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    held.push(open(peer, &ep).await?);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss(&server.0)?;
    for _ in 0..n {
        held.push(open(peer, &ep).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(&server.0)?;
    drop(held);
    Ok(IdleRow {
        peer: peer.to_owned(),
        connections: n,
        per_connection: after.saturating_sub(before) as f64 / n as f64,
    })
}

/// One connection that has done one round trip, kept open by what it returns.
async fn open(peer: &str, ep: &Endpoint) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    Ok(match peer {
        "floor" => {
            let mut io = net::connect(ep).await?;
            let mut req = vec![0u8; 8];
            req[..4].copy_from_slice(&4u32.to_be_bytes());
            io.write_all(&req).await?;
            let mut back = [0u8; 8];
            io.read_exact(&mut back).await?;
            Box::new(io)
        }
        "capwire" => {
            let (session, api) =
                crate::capwire_peer::client(ep, capwire::proto::Codec::Msgpack).await?;
            api.echo("x".into()).await?;
            Box::new((session, api))
        }
        other => crate::peers::idle_client(other, ep).await?,
    })
}
