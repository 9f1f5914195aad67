//! Loopback endpoints (Unix socket or TCP), and a proxy that adds latency.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Which loopback transport a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// A Unix domain socket.
    Unix,
    /// TCP on 127.0.0.1.
    Tcp,
}

impl Net {
    /// The name used in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Net::Unix => "unix",
            Net::Tcp => "tcp",
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A socket path.
    Unix(PathBuf),
    /// An address on 127.0.0.1.
    Tcp(std::net::SocketAddr),
}

impl Endpoint {
    /// As a capwire address.
    pub fn capwire(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// A byte stream of either kind.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A listener of either kind.
pub enum Listener {
    /// Unix.
    Unix(UnixListener),
    /// TCP.
    Tcp(TcpListener),
}

/// A fresh socket path in the system's temporary directory.
pub fn socket_path(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "capwire-bench-{}-{tag}-{n}.sock",
        std::process::id()
    ))
}

impl Listener {
    /// Listens on a fresh loopback endpoint.
    pub async fn bind(net: Net, tag: &str) -> anyhow::Result<(Listener, Endpoint)> {
        Ok(match net {
            Net::Unix => {
                let path = socket_path(tag);
                let _ = std::fs::remove_file(&path);
                (
                    Listener::Unix(UnixListener::bind(&path)?),
                    Endpoint::Unix(path),
                )
            }
            Net::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").await?;
                let addr = l.local_addr()?;
                (Listener::Tcp(l), Endpoint::Tcp(addr))
            }
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> anyhow::Result<Box<dyn Io>> {
        Ok(match self {
            Listener::Unix(l) => Box::new(l.accept().await?.0),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        })
    }
}

/// Connects to `ep`.
pub async fn connect(ep: &Endpoint) -> anyhow::Result<Box<dyn Io>> {
    Ok(match ep {
        Endpoint::Unix(p) => Box::new(UnixStream::connect(p).await?),
        Endpoint::Tcp(a) => {
            let s = TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// A proxy in front of `target` that delivers every byte `delay` after it
/// arrived, in each direction (bandwidth is not limited).
pub async fn delay_proxy(net: Net, target: Endpoint, delay: Duration) -> anyhow::Result<Endpoint> {
    let (listener, ep) = Listener::bind(net, "delay").await?;
    tokio::spawn(async move {
        while let Ok(client) = listener.accept().await {
            let Ok(server) = connect(&target).await else {
                return;
            };
            let (cr, cw) = tokio::io::split(client);
            let (sr, sw) = tokio::io::split(server);
            tokio::spawn(pump(cr, sw, delay));
            tokio::spawn(pump(sr, cw, delay));
        }
    });
    Ok(ep)
}

async fn pump<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
