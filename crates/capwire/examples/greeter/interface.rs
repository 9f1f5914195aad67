//! The interface both programs compile. In a real project it lives in a
//! small crate that the server and the client both depend on.

// Each program uses its half: the server the trait and `GreeterServer`,
// the client `GreeterClient`.
#![allow(dead_code)]

use capwire::typed::ItemsOf;
use capwire::Status;

/// A greeter that knows who is calling.
#[capwire::interface(name = "greeter", version = "1.0")]
pub(crate) trait Greeter {
    /// A greeting for `name`, saying who the connection proved to be.
    async fn hello(&self, name: String) -> Result<String, Status>;
    /// The numbers 1 to `n`, as a stream (at most 32 unacknowledged).
    #[capwire(stream)]
    async fn count_to(&self, n: u32) -> Result<ItemsOf<u32>, Status>;
}
