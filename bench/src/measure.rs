//! What one run of a workload measured, and the loops that measure it.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

/// CPU time of the whole process (every thread: client and server), read
/// from `/proc/self/task/*/schedstat` (nanoseconds on the CPU).
pub fn cpu_time() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// The outcome of one workload on one peer.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Per-operation latencies (sequential workloads only), sorted.
    pub latencies: Vec<Duration>,
    /// Operations (calls, items) completed.
    pub ops: u64,
    /// Payload bytes moved (streams).
    pub bytes: u64,
    /// Wall-clock time of the measured part.
    pub elapsed: Duration,
    /// CPU time of the process during the measured part.
    pub cpu: Duration,
}

impl Sample {
    /// The `q` quantile of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Bytes per second.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time per operation.
    pub fn cpu_per_op(&self) -> Duration {
        if self.ops == 0 {
            return Duration::ZERO;
        }
        self.cpu / self.ops.min(u32::MAX as u64) as u32
    }
}

/// A sequential measurement: a warm-up of a tenth of the budget, then
/// every operation timed until the budget is spent.
pub struct Seq {
    budget: Duration,
    began: Instant,
    measuring: Option<(Instant, Duration)>,
    latencies: Vec<Duration>,
}

impl Seq {
    /// Starts the warm-up.
    pub fn new(budget: Duration) -> Seq {
        Seq {
            budget,
            began: Instant::now(),
            measuring: None,
            latencies: Vec::with_capacity(1 << 16),
        }
    }

    /// Whether to run another operation.
    pub fn more(&mut self) -> bool {
        match self.measuring {
            None if self.began.elapsed() >= self.budget / 10 => {
                self.measuring = Some((Instant::now(), cpu_time()));
                true
            }
            None => true,
            Some((start, _)) => start.elapsed() < self.budget,
        }
    }

    /// Records one operation's latency (ignored during the warm-up).
    pub fn record(&mut self, took: Duration) {
        if self.measuring.is_some() {
            self.latencies.push(took);
        }
    }

    /// The sample.
    pub fn finish(mut self) -> Sample {
        let (start, cpu0) = self.measuring.unwrap_or((Instant::now(), cpu_time()));
        let elapsed = start.elapsed();
        let cpu = cpu_time().saturating_sub(cpu0);
        self.latencies.sort_unstable();
        Sample {
            ops: self.latencies.len() as u64,
            latencies: self.latencies,
            bytes: 0,
            elapsed,
            cpu,
        }
    }
}

/// Runs `op` one at a time for `budget` (after a short warm-up), timing each.
pub async fn sequential<F, Fut>(budget: Duration, mut op: F) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut seq = Seq::new(budget);
    while seq.more() {
        let t = Instant::now();
        op().await?;
        seq.record(t.elapsed());
    }
    Ok(seq.finish())
}

/// Keeps `depth` operations in flight from one task for `budget`.
pub async fn in_flight<F, Fut>(depth: usize, budget: Duration, mut op: F) -> anyhow::Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut running = FuturesUnordered::new();
    for _ in 0..depth {
        running.push(op());
    }
    // Warm-up.
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        if let Some(r) = running.next().await {
            r?;
            running.push(op());
        }
    }
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < budget {
        if let Some(r) = running.next().await {
            r?;
            ops += 1;
            running.push(op());
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    while let Some(r) = running.next().await {
        r?;
    }
    Ok(Sample {
        latencies: Vec::new(),
        ops,
        bytes: 0,
        elapsed,
        cpu,
    })
}

/// Times one stream of `items` items of `size` bytes, read by `read`, which
/// returns the items and bytes it received.
pub async fn stream<Fut>(read: Fut) -> anyhow::Result<Sample>
where
    Fut: Future<Output = anyhow::Result<(u64, u64)>>,
{
    let cpu0 = cpu_time();
    let start = Instant::now();
    let (ops, bytes) = read.await?;
    Ok(Sample {
        latencies: Vec::new(),
        ops,
        bytes,
        elapsed: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
    })
}
