//! The workloads every peer runs, and the settings of a run.

use std::time::Duration;

/// Argument and result size of a unary call.
pub const UNARY_BYTES: usize = 64;
/// Calls kept in flight by the in-flight workload.
pub const DEPTH: usize = 64;
/// Latency the delayed workloads add in each direction.
pub const DELAY: Duration = Duration::from_millis(1);
/// The small stream item.
pub const SMALL_ITEM: usize = 16;
/// The large stream item.
pub const LARGE_ITEM: usize = 64 * 1024;

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One call at a time, 64-byte argument and result.
    Unary,
    /// 64 calls in flight.
    InFlight,
    /// One call at a time through a proxy adding [`DELAY`] each way.
    UnaryDelayed,
    /// `a.b().c()`: three dependent calls (pipelined where the peer can).
    Chain,
    /// The same chain through the delay proxy.
    ChainDelayed,
    /// A server stream of items of this many bytes.
    Stream(usize),
}

impl Work {
    /// The table heading.
    pub fn title(self) -> String {
        match self {
            Work::Unary => "Unary call, 64-byte argument and result, one at a time".into(),
            Work::InFlight => format!("Unary calls, {DEPTH} in flight"),
            Work::UnaryDelayed => "One call through a proxy adding 1 ms each way".into(),
            Work::Chain => "Three-call chain `a.b().c()`, no added latency".into(),
            Work::ChainDelayed => "Three-call chain through a proxy adding 1 ms each way".into(),
            Work::Stream(n) if n >= 1024 => format!("Server stream of {} KiB items", n / 1024),
            Work::Stream(n) => format!("Server stream of {n}-byte items"),
        }
    }

    /// The name `--work` takes.
    pub fn name(self) -> &'static str {
        match self {
            Work::Unary => "unary",
            Work::InFlight => "inflight",
            Work::UnaryDelayed => "unary-delayed",
            Work::Chain => "chain",
            Work::ChainDelayed => "chain-delayed",
            Work::Stream(n) if n >= 1024 => "stream64k",
            Work::Stream(_) => "stream16",
        }
    }

    /// Whether it runs through the delay proxy.
    pub fn is_delayed(self) -> bool {
        matches!(self, Work::UnaryDelayed | Work::ChainDelayed)
    }

    /// Where a client connects for this workload: `ep` itself, or a proxy
    /// in front of it adding [`DELAY`] each way.
    pub async fn endpoint(
        self,
        net: crate::net::Net,
        ep: crate::net::Endpoint,
    ) -> anyhow::Result<crate::net::Endpoint> {
        if self.is_delayed() {
            crate::net::delay_proxy(net, ep, DELAY).await
        } else {
            Ok(ep)
        }
    }

    /// Whether its figures are latencies (else throughput).
    pub fn is_latency(self) -> bool {
        matches!(
            self,
            Work::Unary | Work::UnaryDelayed | Work::Chain | Work::ChainDelayed
        )
    }
}

/// How long and how much.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Measured time of a timed workload.
    pub budget: Duration,
    /// Items of a small-item stream.
    pub small_items: u64,
    /// Items of a large-item stream.
    pub large_items: u64,
}

impl Opts {
    /// Items of a stream of `size`-byte items.
    pub fn items(&self, size: usize) -> u64 {
        if size >= 1024 {
            self.large_items
        } else {
            self.small_items
        }
    }
}

/// The 64-byte payload.
pub fn payload() -> String {
    "x".repeat(UNARY_BYTES)
}
