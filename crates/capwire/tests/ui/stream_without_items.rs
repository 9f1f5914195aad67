#[capwire::interface(version = "1.0")]
pub trait Ticker {
    #[capwire(stream)]
    async fn ticks(&self, n: u64) -> Result<Vec<u64>, capwire::Status>;
}

fn main() {}
