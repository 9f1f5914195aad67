//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Nothing is recorded until [`enable`] is called (after installing a
//! recorder, e.g. `metrics-exporter-prometheus`): a program that does not
//! want metrics pays one relaxed atomic load where they would be recorded.
//! Once enabled, native sessions read the clock for every call (for the
//! latency histograms) as they do while someone subscribes to their events.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `capwire_calls_total` | counter | `dialect`, `direction` (`incoming`: the peer called us), `code` (the status code, `ok` for success) |
//! | `capwire_call_duration_seconds` | histogram | `dialect`, `direction` |
//! | `capwire_streams_total` | counter | `dialect`, `direction`, `code` |
//! | `capwire_stream_duration_seconds` | histogram | `dialect`, `direction` |
//! | `capwire_stream_items_total` | counter | `direction` (`sent`, `received`) |
//! | `capwire_streams_open` | gauge | — (streams a native session is sending to its peer) |
//! | `capwire_bytes_total` | counter | `direction` (`sent`, `received`): frame bytes of native sessions |
//! | `capwire_sessions_open` | gauge | `dialect` (`capwire`, `capnweb`, `jsonrpc`): connections being served ([`dialect::serve`](crate::dialect::serve), which [`Server`](crate::dialect::Server) runs for each) |
//! | `capwire_sessions_total` | counter | `dialect` |
//! | `capwire_bootstraps_total` | counter | `code` |
//! | `capwire_connection_errors_total` | counter | `code` (protocol violations, limits) |
//!
//! A native bootstrap is a call on the runtime capability and counts as
//! one. Method names are not labels: a peer chooses them, and each would be a
//! new time series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use capwire_proto::Code;

use crate::events::{Direction, Event};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts recording. Install a recorder first (`metrics::set_global_recorder`,
/// or an exporter's `install_recorder`); what is recorded before one is
/// installed is lost.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A dialect's label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Native,
    Capnweb,
    JsonRpc,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::Native => "capwire",
            Dialect::Capnweb => "capnweb",
            Dialect::JsonRpc => "jsonrpc",
        }
    }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Incoming => "incoming",
        Direction::Outgoing => "outgoing",
    }
}

/// A status code's label value: its wire name.
fn code(c: Code) -> &'static str {
    c.as_str()
}

/// A call (or, when `stream`, a stream) that finished, in any dialect.
pub(crate) fn finished(
    dialect: Dialect,
    stream: bool,
    dir: Direction,
    outcome: Code,
    took: Duration,
) {
    let labels = [
        ("dialect", dialect.label()),
        ("direction", direction(dir)),
        ("code", code(outcome)),
    ];
    let (count, duration) = match stream {
        false => ("capwire_calls_total", "capwire_call_duration_seconds"),
        true => ("capwire_streams_total", "capwire_stream_duration_seconds"),
    };
    metrics::counter!(count, &labels).increment(1);
    metrics::histogram!(duration, &labels[..2]).record(took.as_secs_f64());
}

/// Records what a native session's event says (calls, streams,
/// bootstraps, connection errors).
pub(crate) fn event(event: &Event) {
    let native = Dialect::Native;
    match event {
        Event::Call {
            direction: dir,
            duration,
            outcome,
            ..
        } => finished(native, false, *dir, *outcome, *duration),
        Event::Stream {
            direction: dir,
            duration,
            outcome,
            ..
        } => finished(native, true, *dir, *outcome, *duration),
        Event::Bootstrap { outcome, .. } => {
            metrics::counter!("capwire_bootstraps_total", "code" => code(*outcome)).increment(1);
        }
        Event::Error { status } => {
            metrics::counter!("capwire_connection_errors_total", "code" => code(status.code))
                .increment(1);
        }
        Event::Revoke { .. } | Event::Closed { .. } => {}
    }
}

/// Frame bytes a native session sent or received.
pub(crate) fn bytes(sent: bool, n: usize) {
    let dir = if sent { "sent" } else { "received" };
    metrics::counter!("capwire_bytes_total", "direction" => dir).increment(n as u64);
}

/// A stream item a native session sent or received.
pub(crate) fn stream_item(sent: bool) {
    let dir = if sent { "sent" } else { "received" };
    metrics::counter!("capwire_stream_items_total", "direction" => dir).increment(1);
}

/// Counts a stream a native session sends, while it lives.
pub(crate) struct OpenStream(());

impl OpenStream {
    /// A stream starts (when metrics are on).
    pub(crate) fn start() -> Option<OpenStream> {
        enabled().then(|| {
            metrics::gauge!("capwire_streams_open").increment(1.0);
            OpenStream(())
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("capwire_streams_open").decrement(1.0);
    }
}

/// Counts a served connection, while it lives.
pub(crate) struct OpenSession(Dialect);

impl OpenSession {
    /// A connection starts being served (when metrics are on).
    pub(crate) fn start(dialect: Dialect) -> Option<OpenSession> {
        enabled().then(|| {
            metrics::counter!("capwire_sessions_total", "dialect" => dialect.label()).increment(1);
            metrics::gauge!("capwire_sessions_open", "dialect" => dialect.label()).increment(1.0);
            OpenSession(dialect)
        })
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics::gauge!("capwire_sessions_open", "dialect" => self.0.label()).decrement(1.0);
    }
}
