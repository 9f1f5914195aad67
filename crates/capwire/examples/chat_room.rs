//! Callbacks and streams: clients join a room with a listener capability of
//! their own; the room calls every listener for each message, and streams
//! the history to whoever asks.
//!
//! `cargo run -p capwire --example chat_room`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capwire::transport::{self, Address, Listener as SocketListener, TransportConfig};
use capwire::typed::ItemsOf;
use capwire::{Registry, Session, SessionConfig, Status};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// Who said it.
    pub from: String,
    /// What they said.
    pub text: String,
}

/// The room.
#[capwire::interface(name = "room", version = "1.0")]
pub trait Room {
    /// Joins as `name`; `listener` is called for every message from now on.
    async fn join(&self, name: String, listener: ListenerClient) -> Result<MemberClient, Status>;
    /// Every message so far, as a stream.
    #[capwire(stream)]
    async fn history(&self) -> Result<ItemsOf<Message>, Status>;
}

/// What a member can do.
#[capwire::interface(version = "1.0")]
pub trait Member {
    /// Says something to everyone in the room.
    async fn say(&self, text: String) -> Result<(), Status>;
}

/// Implemented by each client: receives messages.
#[capwire::interface(version = "1.0")]
pub trait Listener {
    /// A message was said.
    async fn message(&self, message: Message) -> Result<(), Status>;
}

#[derive(Default)]
struct Hall {
    listeners: Mutex<Vec<ListenerClient>>,
    history: Mutex<Vec<Message>>,
}

struct Seat {
    name: String,
    hall: Arc<Hall>,
}

#[derive(Clone, Default)]
struct RoomImpl(Arc<Hall>);

impl Room for RoomImpl {
    async fn join(&self, name: String, listener: ListenerClient) -> Result<MemberClient, Status> {
        self.0.listeners.lock().unwrap().push(listener);
        Ok(MemberClient::from_impl(Seat {
            name,
            hall: self.0.clone(),
        }))
    }
    async fn history(&self) -> Result<ItemsOf<Message>, Status> {
        let past = self.0.history.lock().unwrap().clone();
        Ok(futures_util::stream::iter(past.into_iter().map(Ok)).boxed())
    }
}

impl Member for Seat {
    async fn say(&self, text: String) -> Result<(), Status> {
        let message = Message {
            from: self.name.clone(),
            text,
        };
        self.hall.history.lock().unwrap().push(message.clone());
        let listeners = self.hall.listeners.lock().unwrap().clone();
        // Every listener is a capability in some client: call them all.
        let calls = listeners.iter().map(|l| l.message(message.clone()));
        for r in futures_util::future::join_all(calls).await {
            if let Err(e) = r {
                eprintln!("a listener is gone: {e}");
            }
        }
        Ok(())
    }
}

/// A client's listener: forwards what it hears to a channel.
struct Ears(String, mpsc::UnboundedSender<(String, Message)>);

impl Listener for Ears {
    async fn message(&self, message: Message) -> Result<(), Status> {
        let _ = self.1.send((self.0.clone(), message));
        Ok(())
    }
}

async fn connect(addr: &Address) -> Result<Session, Box<dyn std::error::Error>> {
    Ok(Session::new(
        transport::connect(addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    let _served = registry.serve_interface(RoomServer::new(RoomImpl::default()))?;
    let socket = SocketListener::bind(
        &"ws://127.0.0.1:0/chat".parse()?,
        TransportConfig::default(),
    )
    .await?;
    let addr = socket.local_addr().clone();
    // Every connection gets a session (in whichever dialect its peer speaks).
    tokio::spawn(capwire::dialect::serve_forever(
        socket,
        registry,
        Default::default(),
    ));

    // Two clients, each over its own WebSocket, each with its own listener.
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let (alice_session, bob_session) = (connect(&addr).await?, connect(&addr).await?);
    let alice = RoomClient::bootstrap(&alice_session)
        .await?
        .join(
            "alice".into(),
            ListenerClient::from_impl(Ears("alice".into(), heard_tx.clone())),
        )
        .await?;
    let bob = RoomClient::bootstrap(&bob_session)
        .await?
        .join(
            "bob".into(),
            ListenerClient::from_impl(Ears("bob".into(), heard_tx)),
        )
        .await?;
    alice.say("hi bob".into()).await?;
    bob.say("hello alice".into()).await?;

    let mut got = Vec::new();
    while got.len() < 4 {
        let (who, m) = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await?
            .ok_or("closed")?;
        println!("{who} heard {}: {}", m.from, m.text);
        got.push((who, m.text));
    }
    assert_eq!(got.iter().filter(|(w, _)| w == "alice").count(), 2);
    assert_eq!(got.iter().filter(|(w, _)| w == "bob").count(), 2);

    // A third client reads the history as a stream.
    let carol = connect(&addr).await?;
    let history = RoomClient::bootstrap(&carol)
        .await?
        .history()
        .collect_all()
        .await?;
    println!("history: {history:?}");
    assert_eq!(history.len(), 2);
    for s in [alice_session, bob_session, carol] {
        s.close().await;
    }
    Ok(())
}
