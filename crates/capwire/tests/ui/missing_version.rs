#[capwire::interface(name = "calc")]
pub trait Calc {
    async fn square(&self, n: i64) -> Result<i64, capwire::Status>;
}

fn main() {}
