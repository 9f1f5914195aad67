#[capwire::interface(version = "1.0")]
pub trait Greeter {
    async fn greet(&self, name: &str) -> Result<String, capwire::Status>;
}

fn main() {}
