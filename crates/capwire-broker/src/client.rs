//! A typed Rust client of the broker, over its Unix socket or WebSocket.

use std::path::Path;

use capwire::transport::{self, Address, TransportConfig};
use capwire::{Code, Registry, Session, SessionConfig, Status};

use crate::discovery::Discovery;
use crate::service::{BrokerAdminClient, BrokerApiClient};

/// A connection to a broker. `api()` is the plugin interface
/// (`capwire.broker`), `admin()` the operators' one.
#[derive(Debug, Clone)]
pub struct Client {
    session: Session,
    api: BrokerApiClient,
}

impl Client {
    /// Connects to `address` (`unix://…` or `ws://…`), presenting `token`.
    pub async fn connect(address: &str, token: &str) -> Result<Client, Status> {
        let address: Address = address
            .parse()
            .map_err(|e| Status::new(Code::InvalidArgument, format!("{e}")))?;
        let mut transport_config = TransportConfig::default();
        transport_config.bearer = Some(token.to_owned());
        let transport = transport::connect(&address, &transport_config)
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {address}: {e}")))?;
        let mut config = SessionConfig::default();
        config.token = Some(token.to_owned());
        let session = Session::new(transport, Registry::new(), config);
        let api = BrokerApiClient::bootstrap(&session).await?;
        Ok(Client { session, api })
    }

    /// Connects over the Unix socket named in the discovery file of `data_dir`.
    pub async fn connect_discovered(data_dir: &Path) -> Result<Client, Status> {
        let d = Discovery::read(data_dir).map_err(|e| {
            Status::unavailable(format!(
                "no broker discovery file in {}: {e}",
                data_dir.display()
            ))
        })?;
        Client::connect(&d.unix, &d.token).await
    }

    /// The plugin interface.
    pub fn api(&self) -> &BrokerApiClient {
        &self.api
    }

    /// The operators' interface.
    pub async fn admin(&self) -> Result<BrokerAdminClient, Status> {
        BrokerAdminClient::bootstrap(&self.session).await
    }

    /// The session underneath.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Closes the connection gracefully.
    pub async fn close(&self) {
        self.session.close().await;
    }
}
