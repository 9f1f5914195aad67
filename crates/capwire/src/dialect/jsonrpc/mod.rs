//! The JSON-RPC 2.0 dialect: served capabilities are JSON-RPC methods, and a
//! JSON-RPC peer's methods are capabilities.
//!
//! - A served name's method `m` is the JSON-RPC method `name/m` (or
//!   `name.m`, [`Separator::Dot`]). Params come by position or by name and
//!   are checked against the method's JSON Schema before the handler runs
//!   (`-32602` names the field, with the paths in `data`).
//! - Stream methods send their items as notifications (the method's `item`
//!   name, carrying the request's id in `subscription`), then a response
//!   holding the number of items.
//! - Requests run both ways on WebSocket and stdio: [`JsonRpcPeer`] calls
//!   the other side, raw or through a typed client of its interface.
//! - Batches, notifications and `$/cancelRequest` (as LSP and ACP use it)
//!   follow the specification; capwire statuses map to error codes by the
//!   table in [`errors`](self::ErrorClasses).
//!
//! The same session works against any JSON-RPC peer (an LSP server or an
//! ACP agent over stdio):
//!
//! ```no_run
//! use capwire::dialect::jsonrpc::{JsonRpcConfig, JsonRpcSession};
//! use capwire::transport::{self, Address, TransportConfig};
//! use capwire::Registry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let addr: Address = "ws://127.0.0.1:4000/".parse()?;
//! let transport = transport::connect(&addr, &TransportConfig::default()).await?;
//! let session = JsonRpcSession::connect(transport, Registry::new(), JsonRpcConfig::new());
//! let sum = session
//!     .peer()
//!     .request("demo/add", Some(serde_json::json!({"a": 2, "b": 3})), None)
//!     .await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```

mod catalog;
mod errors;
mod message;
mod peer;
mod session;

pub use errors::{
    code_for, status_code_for, ErrorClass, ErrorClasses, ErrorObject, INTERNAL_ERROR,
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, REQUEST_CANCELLED,
};
pub use peer::JsonRpcPeer;
pub use session::{JsonRpcConfig, JsonRpcSession, Separator, ServeFn};

/// True when a first frame is JSON-RPC: an object with a `jsonrpc` member,
/// an array that does not start with a string (a batch; capnweb messages
/// start with one), or text that is not JSON at all (it is answered with a
/// parse error).
pub(crate) fn looks_like(first: &[u8]) -> bool {
    let start = first
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(first.len());
    match first.get(start) {
        Some(b'{') => {
            #[derive(serde::Deserialize)]
            struct Probe {
                jsonrpc: Option<serde::de::IgnoredAny>,
            }
            // A native hello has no `jsonrpc` member.
            serde_json::from_slice::<Probe>(first).is_ok_and(|p| p.jsonrpc.is_some())
        }
        // A batch: capnweb messages start with a string, so any other
        // array is a JSON-RPC batch (`[1, 2]` gets one -32600 per entry, as
        // the specification's examples want).
        Some(b'[') => {
            let rest = &first[start + 1..];
            !matches!(rest.iter().find(|b| !b.is_ascii_whitespace()), Some(b'"'))
        }
        // MessagePack maps (a native hello) are not UTF-8 text.
        Some(_) => std::str::from_utf8(first).is_ok(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_frames_are_told_apart() {
        assert!(super::looks_like(br#"{"jsonrpc":"2.0","method":"a"}"#));
        assert!(super::looks_like(br#"[{"jsonrpc":"2.0","method":"a"}]"#));
        assert!(super::looks_like(b"[]"));
        assert!(super::looks_like(b"hello there"));
        assert!(super::looks_like(b""));
        assert!(!super::looks_like(
            br#"{"hello":{"versions":["capwire/1"]}}"#
        ));
        assert!(!super::looks_like(br#"["push",["pipeline",0,["x"]]]"#));
        assert!(super::looks_like(b"[1, 2]"));
        assert!(!super::looks_like(&[0x81, 0xa5, b'h']));
    }
}
