//! `capwire broker`: runs the broker daemon, or talks to a running one
//! through its discovery file (`status`, `endpoints`, `inbox`, `send`).

use std::path::PathBuf;
use std::process::ExitCode;

use capwire_broker::daemon::{self, DaemonConfig};
use capwire_broker::spawn::CommandDriver;
use capwire_broker::Client;
use clap::{Args, Subcommand};

/// The arguments of `capwire broker`.
#[derive(Args)]
pub(crate) struct BrokerArgs {
    /// The data directory (store, socket, discovery file); by default
    /// $CAPWIRE_BROKER_DIR, else $XDG_DATA_HOME/capwire/broker, else
    /// ~/.local/share/capwire/broker.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Where the WebSocket/HTTP listener binds (loopback; port 0 picks one).
    #[arg(long, default_value = "ws://127.0.0.1:0/")]
    listen: String,
    /// How long a reconnecting endpoint waits for its plugin, in ms.
    #[arg(long, default_value_t = 30_000)]
    grace_ms: u64,
    /// A spawn driver: spawn requests for runtime KIND run COMMAND (split
    /// like a shell would, run without one) with CAPWIRE_SPAWN_TOKEN (and
    /// CAPWIRE_SPAWN_PROMPT) in its environment; repeat for several kinds.
    #[arg(long = "spawn", value_name = "KIND=COMMAND", value_parser = CommandDriver::parse)]
    spawn: Vec<CommandDriver>,
    #[command(subcommand)]
    command: Option<BrokerCommand>,
}

#[derive(Subcommand)]
enum BrokerCommand {
    /// Print the running broker's counts as JSON.
    Status,
    /// Print its endpoints with their states and queue depths as JSON.
    Endpoints,
    /// The undispatched inbox.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Send a message as an operator; prints where it went.
    Send {
        /// The target endpoint id.
        #[arg(long)]
        to: u64,
        /// The content: JSON, or else taken as a string.
        content: String,
        /// The content type.
        #[arg(long)]
        content_type: Option<String>,
    },
}

#[derive(Subcommand)]
enum InboxCommand {
    /// List the undispatched messages as JSON.
    List,
    /// Move one to an endpoint's queue.
    Dispatch {
        /// The inbox entry.
        id: u64,
        /// The endpoint.
        endpoint: u64,
    },
    /// Drop one for good.
    Drop {
        /// The inbox entry.
        id: u64,
    },
}

pub(crate) async fn run(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let data = args.data.unwrap_or_else(daemon::default_data_dir);
    let Some(command) = args.command else {
        let mut config = DaemonConfig::new(data);
        config.listen = args.listen;
        config.limits.grace = std::time::Duration::from_millis(args.grace_ms);
        config.spawn = args.spawn;
        daemon::run(config).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let client = Client::connect_discovered(&data).await?;
    let admin = client.admin().await?;
    let output = match command {
        BrokerCommand::Status => serde_json::to_value(admin.status().await?)?,
        BrokerCommand::Endpoints => serde_json::to_value(admin.endpoints().await?)?,
        BrokerCommand::Inbox(InboxCommand::List) => {
            serde_json::to_value(admin.inbox_list().await?)?
        }
        BrokerCommand::Inbox(InboxCommand::Dispatch { id, endpoint }) => {
            serde_json::to_value(admin.inbox_dispatch(id, endpoint).await?)?
        }
        BrokerCommand::Inbox(InboxCommand::Drop { id }) => {
            admin.inbox_drop(id).await?;
            serde_json::json!({"dropped": id})
        }
        BrokerCommand::Send {
            to,
            content,
            content_type,
        } => {
            let content =
                serde_json::from_str(&content).unwrap_or(serde_json::Value::String(content));
            serde_json::to_value(admin.send(Some(to), content, content_type, None).await?)?
        }
    };
    client.close().await;
    outln!("{}", serde_json::to_string_pretty(&output)?);
    Ok(ExitCode::SUCCESS)
}
