//! Returned capabilities and promise pipelining: a factory makes counters;
//! the client calls a counter before the factory has even answered.
//!
//! `cargo run -p capwire --example counter_factory`

use std::sync::atomic::{AtomicI64, Ordering};

use capwire::transport::{self, Listener, TransportConfig};
use capwire::{Registry, Session, SessionConfig, Status};

/// Makes counters.
#[capwire::interface(name = "factory", version = "1.0")]
pub trait Factory {
    /// A new counter starting at `start`.
    async fn make(&self, start: i64) -> Result<CounterClient, Status>;
    /// Adds `by` to any counter, yours or one it made.
    async fn add_to(&self, counter: CounterClient, by: i64) -> Result<i64, Status>;
}

/// A counter.
#[capwire::interface(version = "1.0")]
pub trait Counter {
    /// Adds `by`, returns the new value.
    async fn increment(&self, by: i64) -> Result<i64, Status>;
    /// The current value.
    async fn value(&self) -> Result<i64, Status>;
}

struct Shop;
struct Count(AtomicI64);

impl Factory for Shop {
    async fn make(&self, start: i64) -> Result<CounterClient, Status> {
        Ok(CounterClient::from_impl(Count(AtomicI64::new(start))))
    }
    async fn add_to(&self, counter: CounterClient, by: i64) -> Result<i64, Status> {
        counter.increment(by).await
    }
}

impl Counter for Count {
    async fn increment(&self, by: i64) -> Result<i64, Status> {
        Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
    }
    async fn value(&self) -> Result<i64, Status> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir()?;
    let addr: capwire::transport::Address =
        format!("unix://{}/factory.sock", dir.display()).parse()?;
    let registry = Registry::new();
    let _served = registry.serve_interface(FactoryServer::new(Shop))?;
    let listener = Listener::bind(&addr, TransportConfig::default()).await?;
    // Every connection gets a session (in whichever dialect its peer speaks).
    tokio::spawn(capwire::dialect::serve_forever(
        listener,
        registry,
        Default::default(),
    ));

    let session = Session::new(
        transport::connect(&addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    );
    let factory = FactoryClient::bootstrap(&session).await?;

    // `make(5)` and `increment(1)` leave together: one round trip.
    let frames = session.stats().frames_out;
    let six = factory.make(5).increment(1).await?;
    println!(
        "factory.make(5).increment(1) = {six}  ({} frames out, no wait in between)",
        session.stats().frames_out - frames
    );

    // Keep the promised counter, pass it back before it has arrived.
    let counter = factory.make(100);
    let added = factory.add_to(counter.pipeline().clone(), 10).await?;
    let held = counter.await?;
    println!(
        "add_to(<promised counter>, 10) = {added}; the counter now says {}",
        held.value().await?
    );
    assert_eq!((six, added, held.value().await?), (6, 110, 110));

    // A counter of our own, called by the server.
    let mine = CounterClient::from_impl(Count(AtomicI64::new(0)));
    let n = factory.add_to(mine.clone(), 7).await?;
    println!("add_to(<our counter>, 7) = {n}: the server called back into this process");
    assert_eq!(mine.value().await?, 7);
    session.close().await;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("capwire-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
