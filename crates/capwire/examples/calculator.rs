//! Calls: a typed calculator served over TCP, called by a typed client.
//!
//! `cargo run -p capwire --example calculator`

use capwire::transport::{self, Listener, TransportConfig};
use capwire::{Code, Registry, Session, SessionConfig, Status};

/// Four operations on integers; division by zero is an error.
#[capwire::interface(name = "calculator", version = "1.0")]
pub trait Calculator {
    /// `a + b`.
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status>;
    /// `a - b`.
    async fn sub(&self, a: i64, b: i64) -> Result<i64, Status>;
    /// `a * b`, failing on overflow.
    async fn mul(&self, a: i64, b: i64) -> Result<i64, Status>;
    /// `a / b`, failing when `b` is 0.
    async fn div(&self, a: i64, b: i64) -> Result<i64, Status>;
}

struct Calc;

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> Result<i64, Status> {
        a.checked_add(b)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "overflow"))
    }
    async fn sub(&self, a: i64, b: i64) -> Result<i64, Status> {
        a.checked_sub(b)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "overflow"))
    }
    async fn mul(&self, a: i64, b: i64) -> Result<i64, Status> {
        a.checked_mul(b)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "overflow"))
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, Status> {
        a.checked_div(b)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "division by zero"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Server: serve the implementation, accept connections.
    let registry = Registry::new();
    let _served = registry.serve_interface(CalculatorServer::new(Calc))?;
    let listener =
        Listener::bind(&"tcp://127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    let addr = listener.local_addr().clone();
    // Every connection gets a session (in whichever dialect its peer speaks).
    tokio::spawn(capwire::dialect::serve_forever(
        listener,
        registry,
        Default::default(),
    ));

    // Client: connect, bootstrap the typed interface, call.
    let session = Session::new(
        transport::connect(&addr, &TransportConfig::default()).await?,
        Registry::new(),
        SessionConfig::default(),
    );
    let calc = CalculatorClient::bootstrap(&session).await?;
    let sum = calc.add(40, 2).await?;
    let product = calc.mul(6, 7).await?;
    let (a, b) = tokio::join!(calc.sub(50, 8), calc.div(84, 2));
    println!(
        "add(40, 2) = {sum}, mul(6, 7) = {product}, sub(50, 8) = {}, div(84, 2) = {}",
        a?, b?
    );
    let err = calc.div(1, 0).await.expect_err("division by zero");
    println!("div(1, 0) -> {err}");
    assert_eq!((sum, product, err.code), (42, 42, Code::InvalidArgument));
    session.close().await;
    Ok(())
}
