//! What a JSON-RPC method is: the served capability and method a name maps
//! to, its parameters (names, schemas, compiled validators) and its kind.
//! Compiled once per served object and method, and shared by the
//! connections of a listener.

use std::sync::{Arc, Mutex, Weak};

use rustc_hash::FxHashMap;
use serde_json::{json, Value as Json};

use super::errors::{ErrorObject, INVALID_PARAMS};
use crate::object::Object;

/// How a method answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Call,
    /// Items as notifications, then a response holding their count.
    Stream,
    /// Answers nothing (a request to it still gets `null`).
    Notification,
}

struct Param {
    name: String,
    required: bool,
    /// The schema asks for an integer: `3.0` is one (JSON Schema says so),
    /// and is passed as `3` so that an integer parameter decodes it.
    integer: bool,
    /// `None` when the parameter is a capability: JSON-RPC cannot pass one.
    validator: Option<jsonschema::Validator>,
}

/// One method, as the dialect calls it.
pub(crate) struct MethodInfo {
    pub(crate) kind: Kind,
    /// For streams: the notification method of the items (unqualified).
    pub(crate) item: Option<String>,
    /// `None` for objects without a schema: params pass as they come.
    params: Option<Vec<Param>>,
    pub(crate) result: Option<jsonschema::Validator>,
}

impl MethodInfo {
    /// Reads a method out of an interface schema document (`None` if the
    /// schema has no such method).
    pub(crate) fn from_schema(schema: &Json, method: &str) -> Option<MethodInfo> {
        let m = schema.get("methods")?.get(method)?;
        let defs = schema.get("$defs").cloned().unwrap_or_else(|| json!({}));
        let kind = match m.get("kind").and_then(Json::as_str) {
            Some("stream") => Kind::Stream,
            Some("notification") => Kind::Notification,
            _ => Kind::Call,
        };
        let params = m.get("params").and_then(Json::as_array).map(|ps| {
            ps.iter()
                .map(|p| {
                    let schema = p.get("schema").cloned().unwrap_or(Json::Bool(true));
                    let validator = compile(&schema, &defs);
                    Param {
                        integer: schema.get("type").and_then(Json::as_str) == Some("integer"),
                        name: p
                            .get("name")
                            .and_then(Json::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        // An `Option` parameter's schema admits `null`.
                        required: validator.as_ref().is_some_and(|v| !v.is_valid(&Json::Null)),
                        validator: validator.filter(|_| !is_capability(&schema, &defs)),
                    }
                })
                .collect()
        });
        let result = m.get("result").and_then(|r| compile(r, &defs));
        Some(MethodInfo {
            kind,
            item: m.get("item").and_then(Json::as_str).map(str::to_owned),
            params,
            result,
        })
    }

    /// A method of an object without a schema.
    pub(crate) fn untyped(kind: Kind) -> MethodInfo {
        MethodInfo {
            kind,
            item: None,
            params: None,
            result: None,
        }
    }

    /// The parameter names, when known.
    pub(crate) fn param_names(&self) -> Option<Vec<&str>> {
        self.params
            .as_ref()
            .map(|ps| ps.iter().map(|p| p.name.as_str()).collect())
    }

    /// `params` as the positional arguments of a capwire call, checked
    /// against the schema: by position (an array) or by name (an object).
    pub(crate) fn bind(&self, params: Option<Json>) -> Result<Vec<Json>, ErrorObject> {
        let Some(decl) = &self.params else {
            return Ok(match params {
                None => Vec::new(),
                Some(Json::Array(v)) => v,
                Some(other) => vec![other],
            });
        };
        let mut args = match params {
            None => Vec::new(),
            Some(Json::Array(v)) => {
                if v.len() > decl.len() {
                    return Err(invalid(
                        format!(
                            "invalid params: the method takes {} parameter{}, {} were given",
                            decl.len(),
                            if decl.len() == 1 { "" } else { "s" },
                            v.len()
                        ),
                        json!({"expected": decl.len(), "given": v.len()}),
                    ));
                }
                v
            }
            Some(Json::Object(mut map)) => {
                let mut args = Vec::with_capacity(decl.len());
                for p in decl {
                    args.push(map.remove(&p.name).unwrap_or(Json::Null));
                }
                if let Some(extra) = map.keys().next() {
                    let names: Vec<&str> = decl.iter().map(|p| p.name.as_str()).collect();
                    return Err(invalid(
                        format!(
                            "invalid params: unknown field `{extra}` (the parameters are {})",
                            list(&names)
                        ),
                        json!({"field": extra}),
                    ));
                }
                // Trailing absent optional parameters may stay absent.
                args
            }
            Some(_) => {
                return Err(invalid(
                    "invalid params: params are an array or an object".into(),
                    Json::Null,
                ))
            }
        };
        for (i, p) in decl.iter().enumerate() {
            if i >= args.len() {
                if p.required {
                    return Err(invalid(
                        format!("invalid params: missing field `{}`", p.name),
                        json!({"field": p.name, "path": format!("/{}", p.name)}),
                    ));
                }
                args.push(Json::Null);
                continue;
            }
            if args[i].is_null() && p.required {
                return Err(invalid(
                    format!("invalid params: missing field `{}`", p.name),
                    json!({"field": p.name, "path": format!("/{}", p.name)}),
                ));
            }
            let Some(validator) = &p.validator else {
                return Err(invalid(
                    format!(
                        "invalid params: `{}` is a capability, which JSON-RPC cannot pass",
                        p.name
                    ),
                    json!({"field": p.name}),
                ));
            };
            if p.integer {
                if let Some(n) = whole(&args[i]) {
                    args[i] = n;
                }
            }
            if let Some(e) = validator.iter_errors(&args[i]).next() {
                let at = e.instance_path.to_string();
                let path = format!("/{}{}", p.name, at);
                return Err(invalid(
                    format!("invalid params: `{}`{}: {}", p.name, in_path(&at), e),
                    json!({
                        "field": p.name,
                        "path": path,
                        "schema_path": e.schema_path.to_string(),
                    }),
                ));
            }
        }
        Ok(args)
    }

    /// Checks a result against its schema (debug builds and tests, on the
    /// side that receives it).
    pub(crate) fn check_result(&self, result: &Json) -> Result<(), String> {
        match &self.result {
            Some(v) => match v.iter_errors(result).next() {
                Some(e) => Err(format!(
                    "the result does not match its schema at `{}`: {e}",
                    e.instance_path
                )),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// A float with no fractional part, within the 64-bit integers, as an
/// integer.
fn whole(v: &Json) -> Option<Json> {
    let f = v.as_f64().filter(|_| v.is_f64())?;
    if f.fract() != 0.0 {
        return None;
    }
    if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        return Some(Json::from(f as u64));
    }
    if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
        return Some(Json::from(f as i64));
    }
    None
}

fn in_path(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" at `{at}`")
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn invalid(message: String, data: Json) -> ErrorObject {
    ErrorObject::new(INVALID_PARAMS, message).with_data(data)
}

/// True when the schema is a capability's (`{"$cap": n}`), directly or
/// through a reference.
fn is_capability(schema: &Json, defs: &Json) -> bool {
    let resolved = schema
        .get("$ref")
        .and_then(Json::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|d| defs.get(d))
        .unwrap_or(schema);
    resolved
        .get("properties")
        .and_then(|p| p.get("$cap"))
        .is_some()
}

fn compile(schema: &Json, defs: &Json) -> Option<jsonschema::Validator> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "allOf": [schema],
    });
    match jsonschema::validator_for(&root) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "a method's schema does not compile; its values are not checked");
            None
        }
    }
}

/// One served object's compiled methods, with the object (to tell a reused
/// address from the same object).
struct Methods {
    object: Weak<dyn Object>,
    by_name: FxHashMap<String, Option<Arc<MethodInfo>>>,
}

/// Compiled methods, by object and method name.
#[derive(Default)]
pub(crate) struct Catalog {
    objects: Mutex<FxHashMap<usize, Methods>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// Objects cached past which the catalog starts over (served objects that
/// come and go would otherwise leave entries behind).
const MAX_CACHED: usize = 1024;

impl Catalog {
    /// The method `method` of `object`; `None` when its schema has no such
    /// method.
    pub(crate) fn method(&self, object: &Arc<dyn Object>, method: &str) -> Option<Arc<MethodInfo>> {
        let key = Arc::as_ptr(object) as *const () as usize;
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let same = objects
            .get(&key)
            .is_some_and(|m| m.object.upgrade().is_some_and(|o| Arc::ptr_eq(&o, object)));
        if !same {
            if objects.len() >= MAX_CACHED {
                objects.clear();
            }
            objects.insert(
                key,
                Methods {
                    object: Arc::downgrade(object),
                    by_name: FxHashMap::default(),
                },
            );
        }
        let methods = objects.get_mut(&key)?;
        if let Some(found) = methods.by_name.get(method) {
            return found.clone();
        }
        let info = match object.schema() {
            Some(schema) => MethodInfo::from_schema(&schema, method).map(Arc::new),
            None => Some(Arc::new(MethodInfo::untyped(if object.is_stream(method) {
                Kind::Stream
            } else {
                Kind::Call
            }))),
        };
        // Unknown names are remembered too, within a bound.
        if info.is_some() || methods.by_name.len() < 256 {
            methods.by_name.insert(method.to_owned(), info.clone());
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> MethodInfo {
        let schema = json!({
            "methods": {"add": {
                "kind": "call",
                "params": [
                    {"name": "a", "schema": {"type": "integer"}},
                    {"name": "b", "schema": {"type": "integer"}},
                    {"name": "note", "schema": {"type": ["string", "null"]}},
                ],
                "result": {"type": "integer"},
            }},
            "$defs": {},
        });
        MethodInfo::from_schema(&schema, "add").unwrap()
    }

    #[test]
    fn params_bind_by_position_and_by_name() {
        let m = add();
        assert_eq!(
            m.bind(Some(json!([1, 2]))).unwrap(),
            vec![json!(1), json!(2), Json::Null]
        );
        assert_eq!(
            m.bind(Some(json!({"b": 2, "a": 1, "note": "x"}))).unwrap(),
            vec![json!(1), json!(2), json!("x")]
        );
        assert!(m.check_result(&json!(3)).is_ok());
        // A whole float is an integer, as JSON Schema has it.
        assert_eq!(
            m.bind(Some(json!([1.0, -2.0]))).unwrap()[..2],
            [json!(1), json!(-2)]
        );
        assert!(m.check_result(&json!("3")).is_err());
    }

    #[test]
    fn wrong_params_name_the_field() {
        let m = add();
        for (params, field) in [
            (json!({"a": 1}), "`b`"),
            (json!({"a": 1, "b": "x"}), "`b`"),
            (json!({"a": 1.5, "b": 2}), "`a`"),
            (json!({"a": 1, "b": 2, "c": 3}), "`c`"),
            (json!([1]), "`b`"),
            (json!([1, 2, null, 4]), "3 parameters"),
        ] {
            let e = m.bind(Some(params.clone())).unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS);
            assert!(e.message.contains(field), "{params}: {}", e.message);
        }
        let e = m.bind(Some(json!({"a": 1, "b": "x"}))).unwrap_err();
        let data = e.data.unwrap();
        assert_eq!(data["field"], "b");
        assert_eq!(data["path"], "/b");
        assert!(data["schema_path"].as_str().unwrap().contains("type"));
    }
}
