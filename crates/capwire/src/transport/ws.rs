//! WebSocket transport: one frame per message; JSON frames travel as text
//! messages, binary frames as binary messages.

use std::pin::Pin;

use bytes::Bytes;
use capwire_proto::FramingError;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{
    CloseReason, FrameReceiver, FrameSender, Outgoing, ReceiverInner, Transport, TransportConfig,
    TransportError,
};
use crate::attestation::{Attestation, TransportKind};

type MessageStream = Pin<Box<dyn Stream<Item = Result<Message, WsError>> + Send>>;

pub(super) struct WsReader {
    stream: MessageStream,
}

impl WsReader {
    pub(super) async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.stream.next().await {
                None => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::from(t))),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f) if u16::from(f.code) != CloseReason::NORMAL => {
                            Err(TransportError::ClosedByPeer(CloseReason::new(
                                u16::from(f.code),
                                f.reason.as_str(),
                            )))
                        }
                        _ => Ok(None),
                    };
                }
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    return Err(FramingError::TooLarge {
                        len: size,
                        max: max_size,
                    }
                    .into())
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(None),
                Some(Err(WsError::Io(e))) => return Err(TransportError::Io(e)),
                Some(Err(e)) => return Err(TransportError::WebSocket(e.to_string())),
            }
        }
    }
}

pub(super) fn ws_config(config: &TransportConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
        // Our writer already batches; tungstenite should write on flush.
        .write_buffer_size(0)
}

/// Turns an established WebSocket into a transport.
pub(super) fn ws_transport<S>(
    ws: WebSocketStream<S>,
    attestation: Attestation,
    config: &TransportConfig,
) -> Transport
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(config.queue_frames.max(1));
    tokio::spawn(write_loop(sink, rx));
    let sender = FrameSender::new(tx, config.max_frame_bytes);
    let reader = WsReader {
        stream: Box::pin(stream) as MessageStream,
    };
    Transport {
        receiver: FrameReceiver::new(ReceiverInner::Ws(reader), sender.clone()),
        sender,
        attestation,
    }
}

/// A MessagePack frame (a map marker first) goes as binary; anything else
/// that is UTF-8 (JSON) goes as text.
fn to_message(frame: Bytes) -> Message {
    if matches!(frame.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Message::Binary(frame);
    }
    match Utf8Bytes::try_from(frame.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(frame),
    }
}

async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = None;
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Frame(frame) => {
                    if sink.feed(to_message(frame)).await.is_err() {
                        return;
                    }
                }
                Outgoing::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
        if let Some(reason) = close {
            let frame = CloseFrame {
                code: CloseCode::from(reason.code),
                reason: Utf8Bytes::from(reason.message.as_str()),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            let _ = sink.close().await;
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

pub(super) async fn connect(
    authority: &str,
    path: &str,
    tls: bool,
    config: &TransportConfig,
) -> Result<Transport, TransportError> {
    let url = format!("{}://{authority}{path}", if tls { "wss" } else { "ws" });
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|source| TransportError::Connect {
            addr: url.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut att = Attestation::new(TransportKind::WebSocket);
    att.peer_addr = tcp.peer_addr().ok().map(|a| a.to_string());
    att.path = Some(path.to_owned());
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| TransportError::WebSocket(format!("bad WebSocket URL {url}: {e}")))?;
    if let Some(token) = &config.bearer {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            TransportError::WebSocket("the bearer token is not a header value".into())
        })?;
        request.headers_mut().insert("authorization", value);
    }
    if tls {
        let stream =
            super::tls::connect(tcp, authority, config.tls_client.as_ref(), &mut att).await?;
        let ws = handshake(request, stream, &url, config).await?;
        Ok(ws_transport(ws, att, config))
    } else {
        let ws = handshake(request, tcp, &url, config).await?;
        Ok(ws_transport(ws, att, config))
    }
}

/// The WebSocket upgrade on an open connection.
async fn handshake<S>(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
    url: &str,
    config: &TransportConfig,
) -> Result<WebSocketStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config(config)))
            .await
            .map_err(|e| match e {
                WsError::Http(r) if r.status() == 401 => TransportError::WebSocket(format!(
                    "{url} refused the connection: unauthenticated (a bearer token is required, or the one given is wrong)"
                )),
                e => TransportError::WebSocket(format!("handshake with {url} failed: {e}")),
            })?;
    Ok(ws)
}
