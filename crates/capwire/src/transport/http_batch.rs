//! HTTP on the WebSocket port: an upgrade becomes a WebSocket; a `POST`
//! with `Content-Type: application/json` is one JSON-RPC request or batch
//! (its response is the body, `204` when there is none); any other `POST`
//! is capnweb's HTTP batch — its body's lines are the messages of one short
//! session, and the response holds the session's messages, joined by `\n`.
//! Other methods get `405`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{
    FrameReceiver, FrameSender, Outgoing, ReceiverInner, Transport, TransportConfig, TransportError,
};
use crate::attestation::{Attestation, TransportKind};

/// Longest request head read before deciding.
const MAX_HEAD: usize = 16 * 1024;

/// A request's head, as far as the decision needs it.
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) upgrade: bool,
    pub(super) content_length: Option<usize>,
    pub(super) chunked: bool,
    pub(super) origin: Option<String>,
    /// `Content-Type: application/json` (any parameters).
    pub(super) json: bool,
}

/// Reads the request head. Returns it and everything read so far (the head
/// and any body bytes after it), which a WebSocket handshake reads again.
pub(super) async fn read_head(tcp: &mut TcpStream) -> Result<(Head, Bytes), TransportError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if !buf.is_empty() && !could_be_http(&buf) {
            refuse_raw_capwire(tcp, &buf).await;
            return Err(TransportError::Unsupported(
                "a raw capwire/1 client on the WebSocket port (told to use tcp://)".into(),
            ));
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = parse(&buf[..end])?;
            return Ok((head, buf.freeze()));
        }
        if buf.len() >= MAX_HEAD {
            return Err(TransportError::Unsupported(
                "HTTP request head too large".into(),
            ));
        }
        let n = tcp.read_buf(&mut buf).await.map_err(TransportError::Io)?;
        if n == 0 {
            return Err(TransportError::Unsupported(
                "connection closed inside an HTTP request head".into(),
            ));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(head: &[u8]) -> Result<Head, TransportError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| TransportError::Unsupported("HTTP request head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let mut head = Head {
        method,
        path,
        upgrade: false,
        content_length: None,
        chunked: false,
        origin: None,
        json: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => head.upgrade = value.eq_ignore_ascii_case("websocket"),
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "origin" => head.origin = Some(value.to_owned()),
            "content-type" => {
                let media = value.split(';').next().unwrap_or_default().trim();
                head.json = media.eq_ignore_ascii_case("application/json");
            }
            _ => {}
        }
    }
    Ok(head)
}

/// A stream that first yields bytes already read from it.
pub(super) struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl Prefixed {
    pub(super) fn new(prefix: Bytes, inner: TcpStream) -> Prefixed {
        Prefixed { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn respond(
    tcp: &mut TcpStream,
    status: &str,
    extra: &str,
    body: &[u8],
) -> std::io::Result<()> {
    respond_typed(tcp, status, "text/plain;charset=UTF-8", extra, body).await
}

async fn respond_typed(
    tcp: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    tcp.shutdown().await
}

/// Answers a plain HTTP request. A `POST` with messages becomes a transport
/// for one batch session (`Some`); everything else is answered here.
pub(super) async fn serve(
    mut tcp: TcpStream,
    head: Head,
    read: Bytes,
    attestation: Attestation,
    config: &TransportConfig,
) -> Result<Option<Transport>, TransportError> {
    if head.method != "POST" {
        respond(
            &mut tcp,
            "405 Method Not Allowed",
            "Allow: POST\r\n",
            b"JSON-RPC requests and capnweb batches are POSTs\n",
        )
        .await
        .map_err(TransportError::Io)?;
        return Ok(None);
    }
    let Some(len) = head.content_length.filter(|_| !head.chunked) else {
        respond(
            &mut tcp,
            "411 Length Required",
            "",
            b"send a Content-Length\n",
        )
        .await
        .map_err(TransportError::Io)?;
        return Ok(None);
    };
    if len > config.max_frame_bytes {
        respond(
            &mut tcp,
            "413 Content Too Large",
            "",
            b"request body over the frame limit\n",
        )
        .await
        .map_err(TransportError::Io)?;
        return Ok(None);
    }
    let body_start = find(&read, b"\r\n\r\n").map_or(read.len(), |i| i + 4);
    let mut body = BytesMut::from(&read[body_start..]);
    while body.len() < len {
        let n = tcp.read_buf(&mut body).await.map_err(TransportError::Io)?;
        if n == 0 {
            return Err(TransportError::Unsupported(
                "connection closed inside an HTTP body".into(),
            ));
        }
    }
    body.truncate(len);
    if head.json {
        return Ok(Some(json_rpc(
            tcp,
            head,
            body.freeze(),
            attestation,
            config,
        )));
    }
    let lines: Vec<Bytes> = body
        .freeze()
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(Bytes::copy_from_slice)
        .collect();
    if lines.is_empty() {
        respond(&mut tcp, "200 OK", "", b"")
            .await
            .map_err(TransportError::Io)?;
        return Ok(None);
    }
    // The session reads the request's messages, then its input ends.
    let (in_tx, in_rx) = mpsc::channel(lines.len());
    for line in lines {
        let _ = in_tx.try_send(Outgoing::Frame(line));
    }
    drop(in_tx);
    // What it sends is the response, written when it closes the transport.
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(config.queue_frames.max(1));
    tokio::spawn(async move {
        let mut body = Vec::new();
        while let Some(out) = out_rx.recv().await {
            match out {
                Outgoing::Frame(frame) => {
                    if !body.is_empty() {
                        body.push(b'\n');
                    }
                    body.extend_from_slice(&frame);
                }
                Outgoing::Close(_) => break,
            }
        }
        if let Err(e) = respond(&mut tcp, "200 OK", "", &body).await {
            tracing::debug!(error = %e, "HTTP batch response not written");
        }
    });
    let sender = FrameSender::new(out_tx, config.max_frame_bytes);
    let mut attestation = attestation;
    attestation.transport = TransportKind::HttpBatch;
    attestation.path = Some(head.path);
    attestation.origin = head.origin;
    Ok(Some(Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(in_rx), sender.clone()),
        sender,
        attestation,
    }))
}

/// One JSON-RPC request or batch: the body is the transport's one frame;
/// what the session sends is the response (`204` when it sends nothing).
fn json_rpc(
    mut tcp: TcpStream,
    head: Head,
    body: Bytes,
    mut attestation: Attestation,
    config: &TransportConfig,
) -> Transport {
    let (in_tx, in_rx) = mpsc::channel(1);
    let _ = in_tx.try_send(Outgoing::Frame(body));
    drop(in_tx);
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(config.queue_frames.max(1));
    tokio::spawn(async move {
        let mut body = None;
        while let Some(out) = out_rx.recv().await {
            match out {
                // One request, one response: the first frame is the answer.
                Outgoing::Frame(frame) => {
                    body.get_or_insert(frame);
                }
                Outgoing::Close(_) => break,
            }
        }
        let written = match body {
            Some(body) => respond_typed(&mut tcp, "200 OK", "application/json", "", &body).await,
            None => respond_typed(&mut tcp, "204 No Content", "application/json", "", b"").await,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "JSON-RPC HTTP response not written");
        }
    });
    let sender = FrameSender::new(out_tx, config.max_frame_bytes);
    attestation.transport = TransportKind::HttpJsonRpc;
    attestation.path = Some(head.path);
    attestation.origin = head.origin;
    Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(in_rx), sender.clone()),
        sender,
        attestation,
    }
}

/// True while `start` can still be the start of an HTTP request: a method
/// token of capital letters, then a space.
fn could_be_http(start: &[u8]) -> bool {
    let token = start.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match start.get(token) {
        None => token == start.len() && token <= 16,
        Some(b' ') => token > 0,
        Some(_) => false,
    }
}

/// A raw capwire/1 client (length-prefixed frames) reached the WebSocket
/// port: answer it in its own protocol — a `hello`, then a `goaway` that
/// says where it should connect — so it reports that rather than a closed
/// connection.
async fn refuse_raw_capwire(tcp: &mut TcpStream, first: &[u8]) {
    use capwire_proto::{codec, framing, Code, Codec, Frame, Goaway, Hello, Reason, Status};
    use tokio::io::AsyncWriteExt;
    // The byte after the 4-byte length prefix tells the client's codec.
    let codec = match first.get(4) {
        Some(b'{' | b' ' | b'\n' | b'\t' | b'\r') => Codec::Json,
        _ => Codec::Msgpack,
    };
    let status = Status::new(
        Code::FailedPrecondition,
        "this port speaks WebSocket and HTTP: connect with its ws:// address; raw capwire/1 \
         clients (tcp://, unix://) need the server's raw capwire/1 port",
    )
    .with_reason(Reason::PROTOCOL_VIOLATION);
    let frames = [
        Frame::Hello(Hello::new()),
        Frame::Goaway(Goaway {
            status,
            grace_ms: 0,
        }),
    ];
    let mut out = BytesMut::new();
    for frame in &frames {
        if let Ok(bytes) = codec::encode(frame, codec) {
            let _ = framing::encode_frame(
                framing::Framing::LengthPrefixed,
                &bytes,
                usize::MAX,
                &mut out,
            );
        }
    }
    let _ = tcp.write_all(&out).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed() {
        let h = parse(b"POST /rpc HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\nOrigin: http://a")
            .unwrap();
        assert_eq!(
            (
                h.method.as_str(),
                h.path.as_str(),
                h.content_length,
                h.upgrade
            ),
            ("POST", "/rpc", Some(12), false)
        );
        assert_eq!(h.origin.as_deref(), Some("http://a"));
        let h = parse(b"GET / HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade").unwrap();
        assert!(h.upgrade);
        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.chunked);
    }

    #[test]
    fn raw_capwire_bytes_are_not_an_http_request() {
        assert!(super::could_be_http(b"GET / HTTP/1.1"));
        assert!(super::could_be_http(b"POS"));
        assert!(!super::could_be_http(&[0, 0, 0, 17, b'{']));
        assert!(!super::could_be_http(&[0, 0, 0, 9, 0x81]));
        assert!(!super::could_be_http(b"{\"hello\""));
    }
}
