//! The broker's faces on the wire: `capwire.broker` for plugins and
//! `capwire.broker.admin` for operators. Both are typed capwire interfaces,
//! so they are served to native capwire and capnweb peers and, unchanged,
//! as JSON-RPC methods (`capwire.broker/register`, …) with JSON Schemas.

use capwire::typed::ItemsOf;
use capwire::Status;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::broker::{
    Acked, BrokerStatus, ConnectionId, Delivery, EndpointStatus, Outgoing, Reattached, Registered,
    Registration, Sent, TaskHint,
};
use crate::events::BrokerEvent;
use crate::spawn::SpawnStarted;
use crate::state::EndpointState;
use crate::store::{EndpointId, InboxEntry, Seq};
use crate::Broker;

/// What plugins call. Every method but `register` names the caller's
/// endpoint; the bearer token of the connection is the authority.
#[capwire::interface(name = "capwire.broker", version = "1.0")]
pub trait BrokerApi {
    /// Registers an endpoint; it is `active` and durable when this returns.
    #[capwire(name = "register")]
    #[allow(clippy::too_many_arguments)]
    async fn register(
        &self,
        kind: String,
        pid: u32,
        label: Option<String>,
        workspace: Option<String>,
        tracking_ref: Option<String>,
        task_hint: Option<String>,
        spawn_token: Option<String>,
    ) -> Result<Registered, Status>;

    /// Says the plugin is alive; returns the endpoint's state.
    #[capwire(name = "heartbeat")]
    async fn heartbeat(&self, endpoint_id: EndpointId) -> Result<EndpointState, Status>;

    /// Closes the endpoint for good; held messages go to the inbox.
    #[capwire(name = "unregister")]
    async fn unregister(&self, endpoint_id: EndpointId) -> Result<(), Status>;

    /// Takes a reconnecting endpoint back (`pid` must be the registered one).
    #[capwire(name = "reattach")]
    async fn reattach(&self, endpoint_id: EndpointId, pid: u32) -> Result<Reattached, Status>;

    /// Sends a message to `to`, or as a reply to `in_reply_to`. Answers
    /// once the message is durable.
    #[capwire(name = "send")]
    async fn send(
        &self,
        endpoint_id: EndpointId,
        to: Option<EndpointId>,
        in_reply_to: Option<String>,
        content: serde_json::Value,
        content_type: Option<String>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Sent, Status>;

    /// The endpoint's messages, oldest unacknowledged first; at most
    /// `window` delivered and unacknowledged at once (default 64).
    #[capwire(stream, item = "message", name = "receive")]
    async fn receive(
        &self,
        endpoint_id: EndpointId,
        window: Option<u32>,
    ) -> Result<ItemsOf<Delivery>, Status>;

    /// Acknowledges delivered messages: they leave the store.
    #[capwire(name = "ack")]
    async fn ack(&self, endpoint_id: EndpointId, seqs: Vec<Seq>) -> Result<Acked, Status>;

    /// Sets what the endpoint is doing (cut to the limit; `truncated` says so).
    #[capwire(name = "set_task_hint")]
    async fn set_task_hint(
        &self,
        endpoint_id: EndpointId,
        task_hint: String,
    ) -> Result<TaskHint, Status>;
}

/// An inbox entry dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Dispatched {
    /// The endpoint it went to.
    pub endpoint_id: EndpointId,
    /// Its position in that endpoint's queue.
    pub seq: Seq,
}

/// What operators and scripts call.
#[capwire::interface(name = "capwire.broker.admin", version = "1.0")]
pub trait BrokerAdmin {
    /// Counts: endpoints by state, queued messages, inbox, store commits.
    #[capwire(name = "status")]
    async fn status(&self) -> Result<BrokerStatus, Status>;

    /// Every endpoint with its state and queue depth.
    #[capwire(name = "endpoints")]
    async fn endpoints(&self) -> Result<Vec<EndpointStatus>, Status>;

    /// The undispatched inbox, oldest first.
    #[capwire(name = "inbox_list")]
    async fn inbox_list(&self) -> Result<Vec<InboxEntry>, Status>;

    /// Moves an inbox entry to an endpoint's queue.
    #[capwire(name = "inbox_dispatch")]
    async fn inbox_dispatch(
        &self,
        inbox_id: u64,
        endpoint_id: EndpointId,
    ) -> Result<Dispatched, Status>;

    /// Drops an inbox entry.
    #[capwire(name = "inbox_drop")]
    async fn inbox_drop(&self, inbox_id: u64) -> Result<(), Status>;

    /// Sends as an operator (no source endpoint).
    #[capwire(name = "send")]
    async fn send(
        &self,
        to: Option<EndpointId>,
        content: serde_json::Value,
        content_type: Option<String>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Sent, Status>;

    /// Starts a plugin of `runtime_kind` through its driver.
    #[capwire(name = "spawn")]
    async fn spawn(
        &self,
        runtime_kind: String,
        prompt: Option<String>,
    ) -> Result<SpawnStarted, Status>;

    /// The broker's events as they happen (state transitions, inbox
    /// changes, spawns). A subscriber too slow to keep up gets
    /// `resource_exhausted` and the stream ends.
    #[capwire(stream, item = "event", name = "events")]
    async fn events(&self) -> Result<ItemsOf<BrokerEvent>, Status>;
}

/// Serves a [`Broker`] as both interfaces, to one connection or to
/// callers without one.
#[derive(Debug, Clone)]
pub struct Service {
    broker: Broker,
    conn: Option<ConnectionId>,
}

impl Service {
    /// The service of `broker` for callers without a lasting connection
    /// (HTTP requests, in-process): their endpoints are kept alive by
    /// heartbeats.
    pub fn new(broker: Broker) -> Service {
        Service { broker, conn: None }
    }

    /// The service of `broker` for the connection `conn`: endpoints
    /// registered or reattached through it are held by it.
    pub fn on_connection(broker: Broker, conn: ConnectionId) -> Service {
        Service {
            broker,
            conn: Some(conn),
        }
    }

    /// Serves both interfaces in `registry`; the handles keep them served.
    pub fn serve(self, registry: &capwire::Registry) -> Result<Vec<capwire::ServeHandle>, Status> {
        use capwire::typed::Interface;
        let api = BrokerApiServer::new(self.clone());
        let admin = BrokerAdminServer::new(self);
        Ok(vec![
            registry.serve_framework(
                <BrokerApiServer<Service> as Interface>::NAME,
                <BrokerApiServer<Service> as Interface>::VERSION,
                api,
            )?,
            registry.serve_framework(
                <BrokerAdminServer<Service> as Interface>::NAME,
                <BrokerAdminServer<Service> as Interface>::VERSION,
                admin,
            )?,
        ])
    }
}

impl BrokerApi for Service {
    async fn register(
        &self,
        kind: String,
        pid: u32,
        label: Option<String>,
        workspace: Option<String>,
        tracking_ref: Option<String>,
        task_hint: Option<String>,
        spawn_token: Option<String>,
    ) -> Result<Registered, Status> {
        self.broker
            .register(
                Registration {
                    kind,
                    pid,
                    label,
                    workspace,
                    tracking_ref,
                    task_hint,
                    spawn_token,
                },
                self.conn,
            )
            .await
    }

    async fn heartbeat(&self, endpoint_id: EndpointId) -> Result<EndpointState, Status> {
        self.broker.heartbeat(endpoint_id)
    }

    async fn unregister(&self, endpoint_id: EndpointId) -> Result<(), Status> {
        self.broker.unregister(endpoint_id)
    }

    async fn reattach(&self, endpoint_id: EndpointId, pid: u32) -> Result<Reattached, Status> {
        self.broker.reattach(endpoint_id, pid, self.conn)
    }

    // Not `async`: the arguments go into the send at once, so the future
    // that waits for the commit does not carry them too.
    fn send(
        &self,
        endpoint_id: EndpointId,
        to: Option<EndpointId>,
        in_reply_to: Option<String>,
        content: serde_json::Value,
        content_type: Option<String>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> impl std::future::Future<Output = Result<Sent, Status>> + Send {
        let out = Outgoing {
            to,
            in_reply_to,
            content,
            content_type,
            metadata,
        };
        self.broker.send(Some(endpoint_id), out)
    }

    async fn receive(
        &self,
        endpoint_id: EndpointId,
        window: Option<u32>,
    ) -> Result<ItemsOf<Delivery>, Status> {
        self.broker.receive(endpoint_id, window)
    }

    async fn ack(&self, endpoint_id: EndpointId, seqs: Vec<Seq>) -> Result<Acked, Status> {
        self.broker.ack(endpoint_id, &seqs).await
    }

    async fn set_task_hint(
        &self,
        endpoint_id: EndpointId,
        task_hint: String,
    ) -> Result<TaskHint, Status> {
        self.broker.set_task_hint(endpoint_id, &task_hint).await
    }
}

impl BrokerAdmin for Service {
    async fn status(&self) -> Result<BrokerStatus, Status> {
        Ok(self.broker.status())
    }

    async fn endpoints(&self) -> Result<Vec<EndpointStatus>, Status> {
        Ok(self.broker.endpoints())
    }

    async fn inbox_list(&self) -> Result<Vec<InboxEntry>, Status> {
        Ok(self.broker.inbox())
    }

    async fn inbox_dispatch(
        &self,
        inbox_id: u64,
        endpoint_id: EndpointId,
    ) -> Result<Dispatched, Status> {
        let seq = self.broker.dispatch(inbox_id, endpoint_id).await?;
        Ok(Dispatched { endpoint_id, seq })
    }

    async fn inbox_drop(&self, inbox_id: u64) -> Result<(), Status> {
        self.broker.drop_inbox(inbox_id).await
    }

    async fn send(
        &self,
        to: Option<EndpointId>,
        content: serde_json::Value,
        content_type: Option<String>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Sent, Status> {
        let out = Outgoing {
            to,
            in_reply_to: None,
            content,
            content_type,
            metadata,
        };
        self.broker.send(None, out).await
    }

    async fn spawn(
        &self,
        runtime_kind: String,
        prompt: Option<String>,
    ) -> Result<SpawnStarted, Status> {
        self.broker.request_spawn(&runtime_kind, prompt.as_deref())
    }

    async fn events(&self) -> Result<ItemsOf<BrokerEvent>, Status> {
        let events = self.broker.subscribe();
        Ok(
            futures_util::stream::unfold(Some(events), |events| async move {
                let mut events = events?;
                match events.recv().await {
                    Ok(event) => Some((Ok(event), Some(events))),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Some((
                        Err(Status::new(
                            capwire::Code::ResourceExhausted,
                            format!("the subscriber fell {n} events behind"),
                        )),
                        None,
                    )),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                }
            })
            .boxed(),
        )
    }
}
