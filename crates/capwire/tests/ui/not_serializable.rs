pub struct Opaque;

#[capwire::interface(version = "1.0")]
pub trait Store {
    async fn put(&self, value: Opaque) -> Result<(), capwire::Status>;
}

fn main() {}
