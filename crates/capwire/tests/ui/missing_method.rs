#[capwire::interface(version = "1.0")]
pub trait Calc {
    async fn square(&self, n: i64) -> Result<i64, capwire::Status>;
    async fn cube(&self, n: i64) -> Result<i64, capwire::Status>;
}

struct OnlySquares;

impl Calc for OnlySquares {
    async fn square(&self, n: i64) -> Result<i64, capwire::Status> {
        Ok(n * n)
    }
}

fn main() {
    let _ = CalcServer::new(OnlySquares);
}
