//! capwire: object-capability RPC.
pub use capwire_proto as proto;
