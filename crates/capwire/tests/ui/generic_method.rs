#[capwire::interface(version = "1.0")]
pub trait Store {
    async fn put<T: serde::Serialize>(&self, value: T) -> Result<(), capwire::Status>;
}

fn main() {}
