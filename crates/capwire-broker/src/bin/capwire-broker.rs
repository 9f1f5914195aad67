//! `capwire-broker [--data DIR] [--listen ws://127.0.0.1:PORT/] [--grace-ms N]
//! [--spawn KIND=COMMAND]...`: the broker daemon on its own (`capwire broker`
//! runs the same).

use std::process::ExitCode;
use std::time::Duration;

use capwire_broker::daemon::{self, DaemonConfig};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut config = DaemonConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed = match arg.as_str() {
            "--data" => value("--data").map(|v| config.data_dir = v.into()),
            "--listen" => value("--listen").map(|v| config.listen = v),
            "--spawn" => value("--spawn")
                .and_then(|v| capwire_broker::spawn::CommandDriver::parse(&v))
                .map(|d| config.spawn.push(d)),
            "--grace-ms" => value("--grace-ms").and_then(|v| {
                v.parse::<u64>()
                    .map(|ms| config.limits.grace = Duration::from_millis(ms))
                    .map_err(|e| format!("--grace-ms: {e}"))
            }),
            other => Err(format!("unknown argument `{other}`")),
        };
        if let Err(e) = parsed {
            eprintln!("capwire-broker: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capwire-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capwire-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
