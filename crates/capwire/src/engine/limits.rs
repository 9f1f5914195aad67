//! Per-connection limits: what the engine admits before it refuses.

/// Per-connection limits. Each one exceeded answers `resource_exhausted`
/// with a reason naming the limit.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Capabilities exported to the peer at once, revoked ones the peer has
    /// not released yet included. Default 1024 (`max_caps_per_connection`).
    pub max_exports: usize,
    /// Calls from the peer running at once. Default 1024 (`max_concurrent_calls`).
    pub max_in_flight_in: usize,
    /// Calls to the peer awaiting an answer at once. Default 1024 (`max_concurrent_calls`).
    pub max_in_flight_out: usize,
    /// Deepest nesting of a received value. Default 64 (`max_value_depth`).
    pub max_depth: usize,
    /// Revoked ids remembered to fail later calls without a round trip. Default 4096.
    pub max_revoked_remembered: usize,
    /// Stream answers open to the peer at once. Default 256 (`max_open_streams`).
    pub max_open_streams: usize,
    /// Calls and promises from the peer waiting for a kept answer to settle.
    /// Default 1024 (`max_pending_pipelined`).
    pub max_pending_pipelined: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_exports: 1024,
            max_in_flight_in: 1024,
            max_in_flight_out: 1024,
            max_depth: 64,
            max_revoked_remembered: 4096,
            max_open_streams: 256,
            max_pending_pipelined: 1024,
        }
    }
}
