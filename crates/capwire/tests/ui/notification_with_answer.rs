#[capwire::interface(version = "1.0")]
pub trait Log {
    #[capwire(notification)]
    async fn write(&self, line: String) -> Result<u64, capwire::Status>;
}

fn main() {}
