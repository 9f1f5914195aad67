//! What a served interface looks like to a person at a terminal: method
//! signatures from its JSON Schema, arguments by parameter name, and the
//! nearest method name for a typo.

use serde_json::{Map, Value as Json};

/// A served name's interface, from the runtime capability's `schemas`.
pub(crate) struct Interface {
    name: String,
    version: String,
    methods: Map<String, Json>,
}

impl Interface {
    /// The interface served as `name`, from a `schemas` listing.
    pub(crate) fn find(schemas: &Json, name: &str) -> Option<Interface> {
        let entry = schemas
            .as_array()?
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some(name))?;
        let methods = entry.get("schema")?.get("methods")?.as_object()?.clone();
        Some(Interface {
            name: name.to_owned(),
            version: entry
                .get("version")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_owned(),
            methods,
        })
    }

    /// One line per method: `square(n: integer) -> integer`.
    pub(crate) fn listing(&self) -> String {
        let mut out = format!("{} v{} methods:\n", self.name, self.version);
        for (method, spec) in &self.methods {
            out.push_str("  ");
            out.push_str(&signature(method, spec));
            out.push('\n');
        }
        out
    }

    /// The method's parameter names, if the method exists.
    fn params(&self, method: &str) -> Option<Vec<String>> {
        let params = self.methods.get(method)?.get("params")?.as_array()?;
        Some(
            params
                .iter()
                .filter_map(|p| p.get("name").and_then(Json::as_str).map(str::to_owned))
                .collect(),
        )
    }

    /// Arguments given as an object of parameter names, as the positional
    /// array the method takes; `Ok(None)` when `args` is not such an object.
    pub(crate) fn positional(&self, method: &str, args: &Json) -> Result<Option<Json>, String> {
        let (Some(params), Json::Object(named)) = (self.params(method), args) else {
            return Ok(None);
        };
        if named.keys().any(|k| !params.contains(k)) {
            // Not named arguments: an object for a single parameter, say.
            return Ok(None);
        }
        let mut list = Vec::with_capacity(params.len());
        for p in &params {
            match named.get(p) {
                Some(v) => list.push(v.clone()),
                None => return Err(format!("missing argument `{p}` of `{method}`")),
            }
        }
        Ok(Some(Json::Array(list)))
    }

    /// The method names nearest to `wrong`, for "did you mean".
    pub(crate) fn nearest(&self, wrong: &str) -> Vec<&str> {
        let wrong_lower = wrong.to_lowercase();
        let mut scored: Vec<(usize, &str)> = self
            .methods
            .keys()
            .map(|m| (distance(&wrong_lower, &m.to_lowercase()), m.as_str()))
            .filter(|(d, m)| {
                *d <= 2.max(wrong.len() / 3) || m.to_lowercase().contains(&wrong_lower)
            })
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, m)| m).collect()
    }
}

/// `name(param: type, …) -> type`, or `… -> stream of type`.
fn signature(method: &str, spec: &Json) -> String {
    let params: Vec<String> = spec
        .get("params")
        .and_then(Json::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let name = p.get("name").and_then(Json::as_str).unwrap_or("_");
                    format!("{name}: {}", type_name(p.get("schema")))
                })
                .collect()
        })
        .unwrap_or_default();
    let stream = spec.get("kind").and_then(Json::as_str) == Some("stream");
    // A stream method's `result` is the type of its items.
    let result = type_name(spec.get("result"));
    if stream {
        format!("{method}({}) -> stream of {result}", params.join(", "))
    } else {
        format!("{method}({}) -> {result}", params.join(", "))
    }
}

/// A JSON Schema as a short type name.
fn type_name(schema: Option<&Json>) -> String {
    let Some(Json::Object(s)) = schema else {
        return "any".to_owned();
    };
    if let Some(r) = s.get("$ref").and_then(Json::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    if let Some(iface) = s.get("x-capwire-interface").and_then(Json::as_str) {
        return format!("capability<{iface}>");
    }
    if let Some(item) = s.get("x-capwire-sink") {
        return format!("sink of {}", type_name(Some(item)));
    }
    if s.contains_key("x-capwire-source") {
        return "source".to_owned();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Json::Array(alts)) = s.get(key) {
            let names: Vec<String> = alts.iter().map(|a| type_name(Some(a))).collect();
            return names.join(" | ");
        }
    }
    match s.get("type") {
        Some(Json::String(t)) if t == "array" => {
            format!("[{}]", type_name(s.get("items")))
        }
        Some(Json::String(t)) => t.clone(),
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    }
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Interface {
        let schemas = serde_json::json!([{ "name": "demo", "version": "1.0", "schema": {
            "methods": {
                "square": { "kind": "call", "params": [{ "name": "n", "schema": { "type": "integer" } }], "result": { "type": "integer" } },
                "getName": { "kind": "call", "params": [{ "name": "id", "schema": { "type": "integer" } }], "result": { "type": "string" } },
                "makeStream": { "kind": "stream", "params": [{ "name": "n", "schema": { "type": "integer" } }], "result": { "type": "integer" } },
                "writeTo": { "kind": "call", "params": [{ "name": "w", "schema": { "type": "object", "x-capwire-sink": { "type": "string" } } }], "result": { "type": "string" } },
                "add": { "kind": "call", "params": [{ "name": "a", "schema": {} }, { "name": "b", "schema": { "$ref": "#/$defs/Big" } }], "result": { "type": ["string", "null"] } }
            }
        }}]);
        Interface::find(&schemas, "demo").expect("demo")
    }

    #[test]
    fn signatures_read_like_code() {
        let listing = demo().listing();
        assert!(
            listing.contains("square(n: integer) -> integer"),
            "{listing}"
        );
        assert!(
            listing.contains("makeStream(n: integer) -> stream of integer"),
            "{listing}"
        );
        assert!(
            listing.contains("add(a: any, b: Big) -> string | null"),
            "{listing}"
        );
        assert!(
            listing.contains("writeTo(w: sink of string) -> string"),
            "{listing}"
        );
    }

    #[test]
    fn named_arguments_become_positional() {
        let d = demo();
        let args = serde_json::json!({ "b": 2, "a": 1 });
        assert_eq!(
            d.positional("add", &args),
            Ok(Some(serde_json::json!([1, 2])))
        );
        let missing = serde_json::json!({ "a": 1 });
        assert!(d
            .positional("add", &missing)
            .unwrap_err()
            .contains("missing argument `b`"));
        assert_eq!(d.positional("add", &serde_json::json!([1, 2])), Ok(None));
        assert_eq!(
            d.positional("add", &serde_json::json!({ "c": 1 })),
            Ok(None)
        );
    }

    #[test]
    fn typos_find_their_method() {
        let d = demo();
        assert_eq!(d.nearest("sqare"), vec!["square"]);
        assert_eq!(d.nearest("getname"), vec!["getName"]);
        assert!(d.nearest("zzzzzzzzzz").is_empty());
    }
}
