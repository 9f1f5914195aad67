//! Byte-stream transports: TCP, Unix sockets, stdio and child processes.

use std::path::Path;
use std::process::Stdio;

use bytes::{Bytes, BytesMut};
use capwire_proto::FrameDecoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

use super::{
    spawn_stream_writer, FrameReceiver, ReceiverInner, Transport, TransportConfig, TransportError,
};
use crate::attestation::{Attestation, TransportKind, UnixPeer};

/// The most the read buffer grows by at once.
const READ_CHUNK: usize = 16 * 1024;

/// What an empty read buffer starts with: an idle connection holds no more.
const READ_START: usize = 1024;

pub(super) struct StreamReader {
    io: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    /// How much to reserve next: doubles while reads fill the buffer,
    /// halves (down to [`READ_START`]) when one does not.
    chunk: usize,
    decoder: FrameDecoder,
    /// A spawned child lives as long as its reader (killed when dropped).
    _child: Option<Child>,
}

impl StreamReader {
    pub(super) async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
                self.buf.reserve(self.chunk);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buf)?);
            }
            self.chunk = if n == room {
                (self.chunk * 2).min(READ_CHUNK)
            } else {
                (self.chunk / 2).max(READ_START)
            };
        }
    }
}

/// Makes a transport from any pair of byte-stream halves.
pub fn stream_transport<R, W>(
    read: R,
    write: W,
    attestation: Attestation,
    config: &TransportConfig,
) -> Transport
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    with_child(read, write, None, attestation, config)
}

fn with_child<R, W>(
    read: R,
    write: W,
    child: Option<Child>,
    attestation: Attestation,
    config: &TransportConfig,
) -> Transport
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let sender = spawn_stream_writer(write, config);
    let reader = StreamReader {
        io: Box::new(read),
        buf: BytesMut::new(),
        chunk: READ_START,
        decoder: FrameDecoder::new(config.framing, config.max_frame_bytes),
        _child: child,
    };
    Transport {
        receiver: FrameReceiver::new(ReceiverInner::Stream(Box::new(reader)), sender.clone()),
        sender,
        attestation,
    }
}

pub(super) fn tcp_transport(stream: TcpStream, config: &TransportConfig) -> Transport {
    // Frames are already coalesced by the writer; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let mut att = Attestation::new(TransportKind::Tcp);
    att.peer_addr = stream.peer_addr().ok().map(|a| a.to_string());
    let (r, w) = stream.into_split();
    stream_transport(r, w, att, config)
}

pub(super) fn unix_transport(stream: UnixStream, config: &TransportConfig) -> Transport {
    let mut att = Attestation::new(TransportKind::Unix);
    att.peer_addr = stream
        .peer_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
    att.unix = stream.peer_cred().ok().map(|c| UnixPeer {
        uid: c.uid(),
        gid: c.gid(),
        pid: c.pid(),
    });
    let (r, w) = stream.into_split();
    stream_transport(r, w, att, config)
}

pub(super) async fn connect_tcp(
    authority: &str,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|source| TransportError::Connect {
            addr: format!("tcp://{authority}"),
            source,
        })?;
    Ok(tcp_transport(stream, config))
}

pub(super) async fn connect_tls(
    authority: &str,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|source| TransportError::Connect {
            addr: format!("tls://{authority}"),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut att = Attestation::new(TransportKind::Tcp);
    att.peer_addr = tcp.peer_addr().ok().map(|a| a.to_string());
    let stream = super::tls::connect(tcp, authority, config.tls_client.as_ref(), &mut att).await?;
    let (r, w) = tokio::io::split(stream);
    Ok(stream_transport(r, w, att, config))
}

pub(super) async fn connect_unix(
    path: &Path,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| TransportError::Connect {
            addr: format!("unix://{}", path.display()),
            source,
        })?;
    Ok(unix_transport(stream, config))
}

/// This process's own stdin (frames in) and stdout (frames out).
///
/// Nothing else may write to stdout while the transport is in use: logs go
/// to stderr.
pub fn stdio(config: &TransportConfig) -> Transport {
    stream_transport(
        tokio::io::stdin(),
        tokio::io::stdout(),
        Attestation::new(TransportKind::Stdio),
        config,
    )
}

/// Spawns `program args…` and talks to it over its stdin/stdout; its stderr
/// is inherited. The child is killed when the transport's receiver is dropped.
pub fn spawn_child(
    program: &str,
    args: &[String],
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| TransportError::Connect {
            addr: format!("exec:{program}"),
            source,
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(TransportError::Unsupported(
            "child process has no piped stdio".into(),
        ));
    };
    let mut att = Attestation::new(TransportKind::Process);
    let mut line = vec![program.to_owned()];
    line.extend(args.iter().cloned());
    att.peer_addr = Some(line.join(" "));
    Ok(with_child(stdout, stdin, Some(child), att, config))
}
