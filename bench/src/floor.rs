//! The floor: a raw length-prefixed echo over the same sockets, no RPC.
//!
//! A frame is a big-endian u32 length and that many bytes. A request's first
//! byte says what it is: `0` echo (the server answers with the same frame),
//! `1` stream (u32 count, u32 size: the server sends that many frames).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::Semaphore;

use crate::measure::{self, Sample};
use crate::net::{self, Endpoint, Io, Listener, Net};
use crate::work::{Opts, Work, DEPTH, UNARY_BYTES};

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let len = r.read_u32().await? as usize;
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    w.write_u32(body.len() as u32).await?;
    w.write_all(body).await
}

/// Serves the floor protocol on one connection.
async fn serve_conn(io: Box<dyn Io>) -> std::io::Result<()> {
    let (r, w) = tokio::io::split(io);
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut buf = Vec::new();
    loop {
        read_frame(&mut r, &mut buf).await?;
        match buf.first() {
            Some(1) if buf.len() >= 9 => {
                let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                let size = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
                let item = vec![b'x'; size];
                for _ in 0..n {
                    write_frame(&mut w, &item).await?;
                }
            }
            _ => write_frame(&mut w, &buf).await?,
        }
        // Answer everything read so far in one write.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

/// Starts a floor server.
pub async fn server(net: Net) -> anyhow::Result<Endpoint> {
    let (listener, ep) = Listener::bind(net, "floor").await?;
    tokio::spawn(async move {
        while let Ok(io) = listener.accept().await {
            tokio::spawn(serve_conn(io));
        }
    });
    Ok(ep)
}

fn echo_request() -> Vec<u8> {
    let mut req = vec![b'x'; UNARY_BYTES];
    req[0] = 0;
    req
}

/// Runs `work` against a fresh floor server.
pub async fn run(work: Work, net: Net, opts: &Opts) -> anyhow::Result<Option<Sample>> {
    let ep = server(net).await?;
    Ok(Some(match work {
        Work::Unary | Work::UnaryDelayed => {
            let ep = work.endpoint(net, ep).await?;
            let io = net::connect(&ep).await?;
            let (r, w) = tokio::io::split(io);
            let mut r = BufReader::new(r);
            let mut w = BufWriter::new(w);
            let req = echo_request();
            let mut buf = Vec::with_capacity(UNARY_BYTES);
            let mut seq = measure::Seq::new(opts.budget);
            while seq.more() {
                let t = std::time::Instant::now();
                write_frame(&mut w, &req).await?;
                w.flush().await?;
                read_frame(&mut r, &mut buf).await?;
                seq.record(t.elapsed());
            }
            seq.finish()
        }
        Work::InFlight => in_flight(&ep, opts).await?,
        Work::Stream(size) => {
            let io = net::connect(&ep).await?;
            let (r, w) = tokio::io::split(io);
            let mut r = BufReader::with_capacity(256 * 1024, r);
            let mut w = BufWriter::new(w);
            let n = opts.items(size);
            let mut req = vec![1u8];
            req.extend((n as u32).to_be_bytes());
            req.extend((size as u32).to_be_bytes());
            measure::stream(async move {
                write_frame(&mut w, &req).await?;
                w.flush().await?;
                let mut buf = Vec::with_capacity(size);
                let mut bytes = 0u64;
                for _ in 0..n {
                    read_frame(&mut r, &mut buf).await?;
                    bytes += buf.len() as u64;
                }
                Ok((n, bytes))
            })
            .await?
        }
        Work::Chain | Work::ChainDelayed => return Ok(None),
    }))
}

/// 64 requests in flight on one connection: a writer that sends while it
/// has room, a reader that counts answers and makes room.
async fn in_flight(ep: &Endpoint, opts: &Opts) -> anyhow::Result<Sample> {
    let io = net::connect(ep).await?;
    let (r, w) = tokio::io::split(io);
    let room = Arc::new(Semaphore::new(DEPTH));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (room, stop) = (room.clone(), stop.clone());
        tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(64 * 1024, w);
            let req = echo_request();
            while !stop.load(Ordering::Relaxed) {
                room.acquire().await?.forget();
                write_frame(&mut w, &req).await?;
                while let Ok(p) = room.try_acquire() {
                    p.forget();
                    write_frame(&mut w, &req).await?;
                }
                w.flush().await?;
            }
            anyhow::Ok(())
        })
    };
    let answered = Arc::new(AtomicU64::new(0));
    let reader = {
        let (room, answered) = (room.clone(), answered.clone());
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 * 1024, r);
            let mut buf = Vec::new();
            loop {
                if read_frame(&mut r, &mut buf).await.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::Relaxed);
                room.add_permits(1);
            }
        })
    };
    tokio::time::sleep(opts.budget / 10).await;
    let (n0, cpu0, t0) = (
        answered.load(Ordering::Relaxed),
        measure::cpu_time(),
        std::time::Instant::now(),
    );
    tokio::time::sleep(opts.budget).await;
    let ops = answered.load(Ordering::Relaxed) - n0;
    let sample = Sample {
        latencies: Vec::new(),
        ops,
        bytes: 0,
        elapsed: t0.elapsed(),
        cpu: measure::cpu_time().saturating_sub(cpu0),
    };
    stop.store(true, Ordering::Relaxed);
    room.add_permits(DEPTH);
    writer.abort();
    reader.abort();
    let _ = writer.await;
    let _ = reader.await.context("reader");
    Ok(sample)
}
