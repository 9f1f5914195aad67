//! capwire statuses as JSON-RPC error objects and back: one table, plus the
//! error classes an application registers by code.
//!
//! | capwire code          | JSON-RPC code |
//! |-----------------------|---------------|
//! | `unauthenticated`     | -32000 |
//! | `permission_denied`   | -32001 |
//! | `not_found`           | -32002 |
//! | `already_exists`      | -32003 |
//! | `failed_precondition` | -32004 |
//! | `resource_exhausted`  | -32005 |
//! | `deadline_exceeded`   | -32006 |
//! | `unavailable`         | -32007 |
//! | `aborted`             | -32008 |
//! | `invalid_argument`    | -32009 (from a handler; arguments that do not decode, reason `bad_arguments`, and the dialect's own parameter checks answer -32602) |
//! | `unimplemented`       | -32601 (method not found) |
//! | `internal`            | -32603 |
//! | `cancelled`           | -32800 (LSP's `RequestCancelled`) |
//!
//! The status's message is the error's `message`; `data` is an object
//! holding the status's details (their fields, when they are an object;
//! under `details` otherwise), its `reason` and its capwire `status` name.

use std::collections::HashMap;
use std::sync::Arc;

use capwire_proto::{Code, Reason, Status};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal JSON-RPC error.
pub const INTERNAL_ERROR: i64 = -32603;
/// The request was cancelled (`$/cancelRequest`), as LSP numbers it.
pub const REQUEST_CANCELLED: i64 = -32800;

/// The table: capwire code ↔ JSON-RPC code.
const TABLE: [(Code, i64); 13] = [
    (Code::Unauthenticated, -32000),
    (Code::PermissionDenied, -32001),
    (Code::NotFound, -32002),
    (Code::AlreadyExists, -32003),
    (Code::FailedPrecondition, -32004),
    (Code::ResourceExhausted, -32005),
    (Code::DeadlineExceeded, -32006),
    (Code::Unavailable, -32007),
    (Code::Aborted, -32008),
    (Code::InvalidArgument, -32009),
    (Code::Unimplemented, METHOD_NOT_FOUND),
    (Code::Internal, INTERNAL_ERROR),
    (Code::Cancelled, REQUEST_CANCELLED),
];

/// The JSON-RPC error code a capwire code maps to.
pub fn code_for(code: Code) -> i64 {
    TABLE
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(INTERNAL_ERROR, |(_, n)| *n)
}

/// The capwire code a JSON-RPC error code maps to (the reserved codes of the
/// specification included; anything else is `unknown`-like `internal`).
pub fn status_code_for(code: i64) -> Code {
    match code {
        PARSE_ERROR | INVALID_REQUEST | INVALID_PARAMS => Code::InvalidArgument,
        n => TABLE
            .iter()
            .find(|(_, m)| *m == n)
            .map_or(Code::Internal, |(c, _)| *c),
    }
}

/// An application's own error type, sent with its own JSON-RPC code and
/// read back typed: register it in [`ErrorClasses`] on both sides.
///
/// ```
/// use capwire::dialect::jsonrpc::{ErrorClass, ErrorClasses};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct OutOfStock { sku: String }
///
/// impl ErrorClass for OutOfStock {
///     const CODE: i64 = 1001;
///     const NAME: &'static str = "OutOfStock";
///     fn message(&self) -> String { format!("{} is out of stock", self.sku) }
/// }
///
/// let classes = ErrorClasses::new().register::<OutOfStock>();
/// let status = OutOfStock { sku: "A1".into() }.into_status();
/// let error = classes.to_error(&status);
/// assert_eq!(error.code, 1001);
/// let back = classes.to_status(&error);
/// assert_eq!(OutOfStock::from_status(&back), Some(OutOfStock { sku: "A1".into() }));
/// ```
pub trait ErrorClass: Serialize + DeserializeOwned {
    /// Its JSON-RPC code: outside -32768..=-32000, which the specification
    /// reserves.
    const CODE: i64;
    /// Its name, carried in the status's details.
    const NAME: &'static str;

    /// The error's message.
    fn message(&self) -> String;

    /// A status carrying this error (code `failed_precondition`, details
    /// `{"class": NAME, "data": …}`), to return from a handler.
    fn into_status(self) -> Status
    where
        Self: Sized,
    {
        let data = serde_json::to_value(&self).unwrap_or(Json::Null);
        Status::new(Code::FailedPrecondition, self.message())
            .with_details(json!({ "class": Self::NAME, "data": data }))
    }

    /// The error inside `status`, if it carries this class.
    fn from_status(status: &Status) -> Option<Self>
    where
        Self: Sized,
    {
        let details = status.details_json()?;
        if details.get("class")?.as_str()? != Self::NAME {
            return None;
        }
        serde_json::from_value(details.get("data")?.clone()).ok()
    }
}

/// The error classes a connection knows, by code and by name.
#[derive(Debug, Clone, Default)]
pub struct ErrorClasses {
    by_name: Arc<HashMap<String, i64>>,
    by_code: Arc<HashMap<i64, String>>,
}

impl ErrorClasses {
    /// No classes: every error uses the table.
    pub fn new() -> ErrorClasses {
        ErrorClasses::default()
    }

    /// Adds `E`.
    pub fn register<E: ErrorClass>(mut self) -> ErrorClasses {
        Arc::make_mut(&mut self.by_name).insert(E::NAME.to_owned(), E::CODE);
        Arc::make_mut(&mut self.by_code).insert(E::CODE, E::NAME.to_owned());
        self
    }

    /// The error object for `status`.
    pub fn to_error(&self, status: &Status) -> ErrorObject {
        if status.code == Code::InvalidArgument && status.reason == Some(Reason::BAD_ARGUMENTS) {
            return ErrorObject::new(
                INVALID_PARAMS,
                format!("invalid params: {}", status.message),
            );
        }
        let details = status.details_json();
        if let Some(d) = &details {
            let class = d.get("class").and_then(Json::as_str);
            if let Some(code) = class.and_then(|c| self.by_name.get(c)) {
                return ErrorObject {
                    code: *code,
                    message: status.message.clone(),
                    data: d.get("data").cloned(),
                };
            }
        }
        let mut data = match details {
            Some(Json::Object(map)) => map,
            Some(other) => {
                let mut map = Map::new();
                map.insert("details".into(), other);
                map
            }
            None => Map::new(),
        };
        data.entry("status")
            .or_insert_with(|| Json::from(status.code.as_str()));
        if let Some(reason) = &status.reason {
            data.entry("reason")
                .or_insert_with(|| Json::from(reason.as_str()));
        }
        ErrorObject {
            code: code_for(status.code),
            message: status.message.clone(),
            data: Some(Json::Object(data)),
        }
    }

    /// The status for an error object the peer sent.
    pub fn to_status(&self, error: &ErrorObject) -> Status {
        if let Some(name) = self.by_code.get(&error.code) {
            let data = error.data.clone().unwrap_or(Json::Null);
            return Status::new(Code::FailedPrecondition, error.message.clone())
                .with_details(json!({ "class": name, "data": data }));
        }
        let mut code = status_code_for(error.code);
        let mut reason = None;
        let mut details = match &error.data {
            Some(Json::Object(map)) => {
                let mut map = map.clone();
                if let Some(named) = map
                    .remove("status")
                    .and_then(|s| s.as_str().and_then(Code::from_name))
                {
                    // A capwire peer says which code it meant.
                    if code_for(named) == error.code {
                        code = named;
                    }
                }
                if let Some(r) = map
                    .remove("reason")
                    .and_then(|r| r.as_str().map(str::to_owned))
                {
                    reason = Some(r);
                }
                map
            }
            Some(other) => {
                let mut map = Map::new();
                map.insert("details".into(), other.clone());
                map
            }
            None => Map::new(),
        };
        if status_code_for(error.code) == Code::Internal
            && !TABLE.iter().any(|(_, n)| *n == error.code)
        {
            // A code outside the table: kept, so the caller can still see it.
            details.insert("jsonrpc_code".into(), Json::from(error.code));
        }
        let mut status = Status::new(code, error.message.clone());
        if let Some(r) = reason {
            status = status.with_reason(Reason::new(r));
        }
        if !details.is_empty() {
            status = status.with_details(Json::Object(details));
        }
        status
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorObject {
    /// The error code.
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
}

impl ErrorObject {
    /// An error with the given code and message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> ErrorObject {
        ErrorObject {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Sets `data`.
    pub fn with_data(mut self, data: Json) -> ErrorObject {
        self.data = Some(data);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_and_comes_back() {
        let classes = ErrorClasses::new();
        for code in Code::ALL {
            if code == Code::Ok {
                continue;
            }
            let status = Status::new(code, "m").with_reason(Reason::new("r"));
            let error = classes.to_error(&status);
            let back = classes.to_status(&error);
            assert_eq!(back.code, code, "{error:?}");
            assert_eq!(back.reason.as_ref().map(Reason::as_str), Some("r"));
            assert_eq!(back.message, "m");
        }
        // Distinct numbers for distinct codes.
        let mut seen = std::collections::HashSet::new();
        assert!(TABLE.iter().all(|(_, n)| seen.insert(*n)));
    }

    #[test]
    fn details_are_data_fields_and_unknown_codes_are_kept() {
        let classes = ErrorClasses::new();
        let status =
            Status::new(Code::InvalidArgument, "bad thing").with_details(json!({"code": "E_BAD"}));
        let e = classes.to_error(&status);
        assert_eq!(e.code, -32009);
        assert_eq!(e.data.as_ref().unwrap()["code"], "E_BAD");
        assert_eq!(e.data.as_ref().unwrap()["status"], "invalid_argument");
        let s = classes.to_status(&ErrorObject::new(42, "theirs"));
        assert_eq!(s.code, Code::Internal);
        assert_eq!(s.details_json().unwrap()["jsonrpc_code"], 42);
        let s = classes.to_status(&ErrorObject::new(INVALID_PARAMS, "no"));
        assert_eq!(s.code, Code::InvalidArgument);
    }
}
