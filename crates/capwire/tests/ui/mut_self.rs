#[capwire::interface(version = "1.0")]
pub trait Counter {
    async fn increment(&mut self, by: i64) -> Result<i64, capwire::Status>;
}

fn main() {}
