#[capwire::interface(version = "1.0")]
pub trait Calc {
    #[capwire(cached)]
    async fn square(&self, n: i64) -> Result<i64, capwire::Status>;
}

fn main() {}
