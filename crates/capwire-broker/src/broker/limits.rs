//! The broker's bounds and timers.

use std::time::Duration;

/// The broker's bounds and timers. Every field has a default suited to one
/// user's machine; change one when a plugin needs more room.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Messages queued for one endpoint at most. Default 10 000.
    pub max_queue_messages: usize,
    /// Bytes queued for one endpoint at most (encoded). Default 64 MiB.
    pub max_queue_bytes: usize,
    /// One message's encoded size at most. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Undispatched messages kept at most (sends past it are refused with
    /// `resource_exhausted`/`inbox_full`). Default 10 000.
    pub max_inbox: usize,
    /// How long a reconnecting endpoint waits for its plugin. Default 30 s.
    pub grace: Duration,
    /// How long an active endpoint without an open connection (its plugin
    /// calls over HTTP, or its connection closed while another one was
    /// receiving for it and that one closed too) stays active without a
    /// call naming it (`heartbeat`, or any other); then it becomes
    /// reconnecting. Endpoints on an open connection need no heartbeats.
    /// Default 60 s.
    pub heartbeat_expiry: Duration,
    /// How long a received correlation id can be replied to. Default 10 min.
    pub correlation_ttl: Duration,
    /// Correlation ids remembered per endpoint. Default 4096.
    pub correlation_capacity: usize,
    /// A task hint's length at most, in characters (longer ones are cut,
    /// and the caller told). Default 256.
    pub max_task_hint_chars: usize,
    /// Unacknowledged deliveries per receiver when the plugin does not say.
    /// Default 64.
    pub default_window: u32,
    /// The largest window a receiver may ask for. Default 4096.
    pub max_window: u32,
    /// How often registered pids are checked and expired correlations
    /// swept. Default 2 s.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_queue_messages: 10_000,
            max_queue_bytes: 64 << 20,
            max_message_bytes: 1 << 20,
            max_inbox: 10_000,
            grace: Duration::from_secs(30),
            heartbeat_expiry: Duration::from_secs(60),
            correlation_ttl: Duration::from_secs(600),
            correlation_capacity: 4096,
            max_task_hint_chars: 256,
            default_window: 64,
            max_window: 4096,
            sweep_interval: Duration::from_secs(2),
        }
    }
}
