//! TypeScript declarations for typed interfaces, from their schemas.
//!
//! The runtime capability's `schemas` lists what a peer serves, each with the
//! JSON Schema of its interface (made by [`interface`](crate::interface)).
//! [`declarations`] turns that list into one self-contained `.ts` file: an
//! `interface` per capwire interface (methods return `Promise`s, stream
//! methods `ReadableStream`s, sinks are `WritableStream`s) and a type per
//! shared definition, so a web client gets its types from the Rust
//! definitions (`capwire schema --ts ADDRESS`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value as Json};

/// A TypeScript identifier for a schema name (`Sink_of_int64`, `Point`).
fn ident(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A property name, quoted when it is not an identifier.
fn property(name: &str) -> String {
    if ident(name) == name {
        name.to_owned()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""))
    }
}

fn ref_name(reference: &str) -> Option<&str> {
    reference
        .strip_prefix("#/$defs/")
        .or_else(|| reference.strip_prefix("#/definitions/"))
}

/// The TypeScript type of a JSON Schema (the subset schemars produces).
fn ts_type(schema: &Json) -> String {
    let Some(obj) = schema.as_object() else {
        // `true` accepts anything; `false` nothing.
        return if schema == &Json::Bool(false) {
            "never"
        } else {
            "unknown"
        }
        .to_owned();
    };
    if let Some(r) = obj.get("$ref").and_then(Json::as_str) {
        return ref_name(r).map_or_else(|| "unknown".to_owned(), ident);
    }
    if let Some(interface) = obj.get("x-capwire-interface").and_then(Json::as_str) {
        return ident(interface);
    }
    if let Some(item) = obj.get("x-capwire-sink") {
        return format!("WritableStream<{}>", ts_type(item));
    }
    if let Some(item) = obj.get("x-capwire-source") {
        return format!("ReadableStream<{}>", ts_type(item));
    }
    if let Some(c) = obj.get("const") {
        return serde_json::to_string(c).unwrap_or_else(|_| "unknown".into());
    }
    if let Some(values) = obj.get("enum").and_then(Json::as_array) {
        return union(
            values
                .iter()
                .map(|v| serde_json::to_string(v).unwrap_or_default()),
        );
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = obj.get(key).and_then(Json::as_array) {
            return union(options.iter().map(ts_type));
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Json::as_array) {
        return all.iter().map(ts_type).collect::<Vec<_>>().join(" & ");
    }
    match obj.get("type") {
        Some(Json::String(t)) => type_of(t, obj),
        Some(Json::Array(types)) => union(
            types
                .iter()
                .filter_map(Json::as_str)
                .map(|t| type_of(t, obj)),
        ),
        _ => "unknown".to_owned(),
    }
}

fn union(parts: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for p in parts {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    match seen.len() {
        0 => "never".to_owned(),
        1 => seen.remove(0),
        _ => seen
            .into_iter()
            .map(|p| {
                if p.contains(" & ") {
                    format!("({p})")
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(" | "),
    }
}

fn type_of(t: &str, obj: &Map<String, Json>) -> String {
    match t {
        "null" => "null".to_owned(),
        "boolean" => "boolean".to_owned(),
        "integer" | "number" => "number".to_owned(),
        "string" => "string".to_owned(),
        "array" => {
            if let Some(items) = obj.get("prefixItems").and_then(Json::as_array) {
                let parts: Vec<String> = items.iter().map(ts_type).collect();
                return format!("[{}]", parts.join(", "));
            }
            match obj.get("items") {
                Some(items) => {
                    let inner = ts_type(items);
                    if inner.contains(' ') {
                        format!("Array<{inner}>")
                    } else {
                        format!("{inner}[]")
                    }
                }
                None => "unknown[]".to_owned(),
            }
        }
        "object" => object_type(obj),
        _ => "unknown".to_owned(),
    }
}

fn object_type(obj: &Map<String, Json>) -> String {
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Json::as_array)
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let mut fields = Vec::new();
    if let Some(props) = obj.get("properties").and_then(Json::as_object) {
        for (name, schema) in props {
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            fields.push(format!("{}{optional}: {}", property(name), ts_type(schema)));
        }
    }
    match obj.get("additionalProperties") {
        Some(Json::Bool(false)) | None if !fields.is_empty() => {}
        Some(extra @ Json::Object(_)) => fields.push(format!("[key: string]: {}", ts_type(extra))),
        Some(Json::Bool(true)) | None => fields.push("[key: string]: unknown".to_owned()),
        Some(_) => {}
    }
    format!("{{ {} }}", fields.join("; "))
}

/// The methods of an interface, as TypeScript members.
fn members(methods: &Map<String, Json>, out: &mut String) {
    for (name, method) in methods {
        let params: Vec<String> = method
            .get("params")
            .and_then(Json::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let pname = p.get("name").and_then(Json::as_str).unwrap_or("arg");
                        let ty = p.get("schema").map_or_else(|| "unknown".into(), ts_type);
                        format!("{}: {ty}", ident(pname))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let result = method
            .get("result")
            .map_or_else(|| "unknown".into(), ts_type);
        let returns = match method.get("kind").and_then(Json::as_str) {
            Some("stream") => format!("Promise<ReadableStream<{result}>>"),
            _ => format!("Promise<{result}>"),
        };
        let _ = writeln!(
            out,
            "  {}({}): {returns};",
            property(name),
            params.join(", ")
        );
    }
}

/// One `.ts` file declaring every interface in `schemas` (the runtime
/// capability's `schemas` answer: `[{name, version, schema}]`) and the
/// types they use. Entries without a schema are listed in a comment.
pub fn declarations(schemas: &Json) -> String {
    let mut out = String::from(
        "// TypeScript declarations generated by `capwire schema --ts` from the\n\
         // interfaces' JSON Schemas. Integers are `number`s (values beyond 2^53 travel as bigint in capnweb).\n\n",
    );
    let mut interfaces: BTreeMap<String, (Option<String>, Map<String, Json>)> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for entry in schemas.as_array().into_iter().flatten() {
        let served = entry.get("name").and_then(Json::as_str).unwrap_or("?");
        let version = entry.get("version").and_then(Json::as_str).unwrap_or("?");
        let Some(schema) = entry.get("schema").filter(|s| s.is_object()) else {
            let _ = writeln!(
                out,
                "// \"{served}\" v{version}: no schema (a dynamic object)"
            );
            continue;
        };
        if let Some(iface) = schema.get("interface").and_then(Json::as_str) {
            let methods = schema
                .get("methods")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default();
            interfaces.insert(
                ident(iface),
                (Some(format!("served as \"{served}\" v{version}")), methods),
            );
        }
        for (name, def) in schema
            .get("$defs")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(iface) = def.get("x-capwire-interface").and_then(Json::as_str) {
                let methods = def
                    .get("x-capwire-methods")
                    .and_then(Json::as_object)
                    .cloned()
                    .unwrap_or_default();
                interfaces.entry(ident(iface)).or_insert((None, methods));
                continue;
            }
            let plain_object = def.get("type").and_then(Json::as_str) == Some("object")
                && def.get("properties").is_some()
                && def.get("x-capwire-sink").is_none()
                && def.get("x-capwire-source").is_none();
            let body = if plain_object {
                format!(
                    "interface {} {}",
                    ident(name),
                    object_type(def.as_object().unwrap_or(&Map::new()))
                )
            } else {
                format!("type {} = {};", ident(name), ts_type(def))
            };
            types.insert(ident(name), body);
        }
    }
    for (name, (served, methods)) in &interfaces {
        if let Some(served) = served {
            let _ = writeln!(out, "/** The capwire interface `{name}`, {served}. */");
        } else {
            let _ = writeln!(out, "/** The capwire interface `{name}`. */");
        }
        let _ = writeln!(out, "export interface {name} {{");
        members(methods, &mut out);
        out.push_str("}\n\n");
    }
    for body in types.values() {
        let _ = writeln!(out, "export {body}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_of_the_schemars_subset() {
        let cases = [
            (
                serde_json::json!({"type": "integer", "format": "int64"}),
                "number",
            ),
            (
                serde_json::json!({"type": ["string", "null"]}),
                "string | null",
            ),
            (
                serde_json::json!({"type": "array", "items": {"type": "boolean"}}),
                "boolean[]",
            ),
            (
                serde_json::json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]}),
                "[string, number]",
            ),
            (serde_json::json!({"$ref": "#/$defs/Point"}), "Point"),
            (serde_json::json!({"enum": ["a", "b"]}), "\"a\" | \"b\""),
            (
                serde_json::json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                "{ [key: string]: number }",
            ),
            (
                serde_json::json!({"type": "object", "properties": {"a b": {"type": "string"}, "c": {"type": "null"}}, "required": ["c"]}),
                "{ \"a b\"?: string; c: null }",
            ),
            (serde_json::json!(true), "unknown"),
            (
                serde_json::json!({"x-capwire-interface": "Counter"}),
                "Counter",
            ),
            (
                serde_json::json!({"x-capwire-sink": {"type": "string"}}),
                "WritableStream<string>",
            ),
        ];
        for (schema, ts) in cases {
            assert_eq!(ts_type(&schema), ts, "{schema}");
        }
    }

    #[test]
    fn identifiers_are_sanitised() {
        assert_eq!(ident("Sink_of_int64"), "Sink_of_int64");
        assert_eq!(ident("Wrapper<T>"), "Wrapper_T_");
        assert_eq!(ident("1st"), "_1st");
        assert_eq!(property("ok"), "ok");
        assert_eq!(property("$cap"), "\"$cap\"");
    }
}
