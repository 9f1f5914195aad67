// A role whose outbound catalog has no notifications cannot send one: the
// typed client only has the methods the interface declares.
#[capwire::interface(version = "1.0")]
pub trait Agent {
    async fn prompt(&self, text: String) -> Result<String, capwire::Status>;
}

fn send(agent: AgentClient) -> Result<(), capwire::Status> {
    agent.cancelled("now".to_owned())
}

fn main() {}
