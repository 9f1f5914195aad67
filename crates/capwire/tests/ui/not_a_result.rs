#[capwire::interface(version = "1.0")]
pub trait Calc {
    async fn square(&self, n: i64) -> i64;
}

fn main() {}
