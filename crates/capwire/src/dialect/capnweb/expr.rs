//! capnweb expressions ↔ capwire values (research note §2.4, §2.8).
//!
//! A capwire [`Value`] is a JSON-model tree whose capabilities are
//! placeholders `{"$cap": n}` (user maps that look like one are escaped as
//! `{"$esc": map}`). A capnweb expression is a JSON tree where every literal
//! array is wrapped in a one-element array and other arrays are tagged
//! (`["export", -1]`, `["bigint", "…"]`, …). This module converts the data
//! part both ways; the session resolves the references.

use capwire_proto::{Code, Status};
use serde_json::{Map, Value as Json};

/// Largest integer a JavaScript number holds exactly.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// Walks a capwire value tree, calling `cap` for each placeholder, and
/// returns the capnweb expression for it.
pub(crate) fn encode_tree(
    tree: &Json,
    cap: &mut dyn FnMut(usize) -> Result<Json, Status>,
) -> Result<Json, Status> {
    Ok(match tree {
        Json::Array(items) => {
            let inner: Result<Vec<Json>, Status> =
                items.iter().map(|i| encode_tree(i, cap)).collect();
            Json::Array(vec![Json::Array(inner?)])
        }
        Json::Object(map) => {
            if let Some(n) = placeholder(map) {
                return cap(n);
            }
            // An escaped user map: its keys are data; its values are values.
            let data = match escaped(map) {
                Some(inner) => inner,
                None => map,
            };
            let mut out = Map::new();
            for (k, v) in data {
                out.insert(k.clone(), encode_tree(v, cap)?);
            }
            Json::Object(out)
        }
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i.unsigned_abs() > MAX_SAFE => bigint(&i.to_string()),
            (None, Some(u)) if u > MAX_SAFE => bigint(&u.to_string()),
            _ => tree.clone(),
        },
        other => other.clone(),
    })
}

fn bigint(digits: &str) -> Json {
    Json::Array(vec![Json::from("bigint"), Json::from(digits)])
}

/// `{"$cap": n}` → n.
pub(crate) fn placeholder(map: &Map<String, Json>) -> Option<usize> {
    if map.len() != 1 {
        return None;
    }
    map.get("$cap")
        .and_then(Json::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

/// `{"$esc": inner}` → inner.
pub(crate) fn escaped(map: &Map<String, Json>) -> Option<&Map<String, Json>> {
    if map.len() != 1 {
        return None;
    }
    map.get("$esc").and_then(Json::as_object)
}

/// A plain JS object as a capwire map: one that would read as a placeholder
/// or an escape is escaped.
pub(crate) fn user_map(map: Map<String, Json>) -> Json {
    if map.len() == 1 && (map.contains_key("$cap") || map.contains_key("$esc")) {
        let mut esc = Map::new();
        esc.insert("$esc".into(), Json::Object(map));
        Json::Object(esc)
    } else {
        Json::Object(map)
    }
}

/// Counts the capabilities an expression introduces (`["export", id]`,
/// `["promise", id]`), for handing them back when nobody wants the value.
pub(crate) fn introductions(expr: &Json, out: &mut std::collections::HashMap<i64, u64>) {
    match expr {
        Json::Array(items) => match (
            items.first().and_then(Json::as_str),
            items.get(1).and_then(Json::as_i64),
        ) {
            (Some("export" | "promise"), Some(id)) if items.len() == 2 => {
                *out.entry(id).or_default() += 1;
            }
            _ => items.iter().for_each(|i| introductions(i, out)),
        },
        Json::Object(map) => map.values().for_each(|v| introductions(v, out)),
        _ => {}
    }
}

/// Keys a JS receiver never sees (`Object.prototype` members, `toJSON`).
pub(crate) fn is_hidden_key(key: &str) -> bool {
    matches!(
        key,
        "constructor"
            | "toString"
            | "toLocaleString"
            | "valueOf"
            | "hasOwnProperty"
            | "isPrototypeOf"
            | "propertyIsEnumerable"
            | "__proto__"
            | "__defineGetter__"
            | "__defineSetter__"
            | "__lookupGetter__"
            | "__lookupSetter__"
            | "toJSON"
    )
}

/// The capwire value of a special tagged expression that carries no
/// reference, or `None` if `tag` is not one of them.
///
/// JSON has no undefined, non-finite numbers, big integers, dates or bytes:
/// they become the nearest JSON value (`null`; a number when it fits, else
/// the decimal string; milliseconds; standard base64 text; the URL text).
pub(crate) fn special(tag: &str, items: &[Json]) -> Option<Result<Json, Status>> {
    let bad = |what: &str| {
        Err(Status::new(
            Code::InvalidArgument,
            format!("malformed capnweb `{tag}` value: {what}"),
        ))
    };
    Some(match tag {
        "undefined" | "inf" | "-inf" | "nan" => Ok(Json::Null),
        "bigint" => match items.first().and_then(Json::as_str) {
            Some(d) if d.len() <= 16384 => Ok(d
                .parse::<i64>()
                .map(Json::from)
                .or_else(|_| d.parse::<u64>().map(Json::from))
                .unwrap_or_else(|_| Json::from(d))),
            _ => bad("expected a decimal string of at most 16384 digits"),
        },
        "date" => match items.first() {
            Some(ms @ (Json::Number(_) | Json::Null)) => Ok(ms.clone()),
            _ => bad("expected milliseconds"),
        },
        "bytes" | "url" => match items.first().and_then(Json::as_str) {
            Some(text) => Ok(Json::from(text)),
            None => bad("expected a string"),
        },
        _ => return None,
    })
}

/// The capnweb error expression for a status: the JS error name comes from
/// `details.name` (else `Error`), the other members of `details` become the
/// error's properties, and `capwireCode` (and `capwireReason`) say what it
/// was on the capwire side.
pub(crate) fn encode_error(status: &Status) -> Json {
    let details = status.details_json();
    let mut props = match &details {
        Some(Json::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    let name = match props.remove("name") {
        Some(Json::String(n)) => n,
        _ => match status.code {
            Code::InvalidArgument | Code::Unimplemented => "TypeError".to_owned(),
            _ => "Error".to_owned(),
        },
    };
    props.insert("capwireCode".into(), Json::from(status.code.as_str()));
    if let Some(r) = &status.reason {
        props.insert("capwireReason".into(), Json::from(r.as_str()));
    }
    let props = encode_tree(&Json::Object(props), &mut |_| Ok(Json::Null)).unwrap_or(Json::Null);
    Json::Array(vec![
        Json::from("error"),
        Json::from(name),
        Json::from(status.message.clone()),
        Json::Null,
        props,
    ])
}

/// The status for a capnweb error expression (or any thrown value).
pub(crate) fn decode_error(expr: &Json) -> Status {
    let Some(items) = expr
        .as_array()
        .filter(|a| a.first() == Some(&Json::from("error")))
    else {
        return Status::new(Code::Internal, format!("the peer threw {expr}"));
    };
    let name = items.get(1).and_then(Json::as_str).unwrap_or("Error");
    let message = items.get(2).and_then(Json::as_str).unwrap_or("");
    let props = items
        .get(4)
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let code = props
        .get("capwireCode")
        .and_then(Json::as_str)
        .and_then(Code::from_name)
        .unwrap_or(match name {
            "TypeError" | "RangeError" | "SyntaxError" | "URIError" => Code::InvalidArgument,
            _ => Code::Internal,
        });
    let mut details = Map::new();
    details.insert("name".into(), Json::from(name));
    for (k, v) in props {
        if !k.starts_with("capwire") {
            details.insert(k, v);
        }
    }
    Status::new(code, message).with_details(Json::Object(details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(tree: Json) -> Json {
        encode_tree(&tree, &mut |n| Ok(json!(["export", -(n as i64) - 1]))).expect("encode")
    }

    #[test]
    fn arrays_are_escaped_and_placeholders_become_references() {
        assert_eq!(enc(json!([1, [2]])), json!([[1, [[2]]]]));
        assert_eq!(enc(json!([])), json!([[]]));
        assert_eq!(
            enc(json!({"c": {"$cap": 0}, "d": [{"$cap": 1}]})),
            json!({"c": ["export", -1], "d": [[["export", -2]]]})
        );
        assert_eq!(enc(json!({"$esc": {"$cap": "x"}})), json!({"$cap": "x"}));
        assert_eq!(
            enc(json!(9007199254740993u64)),
            json!(["bigint", "9007199254740993"])
        );
        assert_eq!(
            enc(json!(-9007199254740993i64)),
            json!(["bigint", "-9007199254740993"])
        );
        assert_eq!(enc(json!(9007199254740991u64)), json!(9007199254740991u64));
    }

    #[test]
    fn special_values_map_to_json() {
        assert_eq!(
            special("bigint", &[json!("123")]).unwrap().unwrap(),
            json!(123)
        );
        assert_eq!(
            special("bigint", &[json!("123456789012345678901234567890")])
                .unwrap()
                .unwrap(),
            json!("123456789012345678901234567890")
        );
        assert_eq!(special("undefined", &[]).unwrap().unwrap(), Json::Null);
        assert_eq!(special("date", &[json!(1.5)]).unwrap().unwrap(), json!(1.5));
        assert!(special("bigint", &[json!(1)]).unwrap().is_err());
        assert!(special("map", &[]).is_none());
    }

    #[test]
    fn introductions_are_counted_without_evaluating() {
        let mut out = std::collections::HashMap::new();
        introductions(
            &json!({"a": ["export", -1], "b": [[["export", -1], ["promise", -2], ["import", 3]]]}),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[&-1], out[&-2]), (2, 1));
    }

    #[test]
    fn errors_both_ways() {
        let s = Status::new(Code::InvalidArgument, "bad thing")
            .with_details(json!({"name": "RangeError", "code": "E_BAD"}));
        let e = encode_error(&s);
        assert_eq!(
            e,
            json!(["error", "RangeError", "bad thing", null, {"code": "E_BAD", "capwireCode": "invalid_argument"}])
        );
        let back = decode_error(&e);
        assert_eq!(back.code, Code::InvalidArgument);
        assert_eq!(
            back.details_json(),
            Some(json!({"name": "RangeError", "code": "E_BAD"}))
        );
        let js = decode_error(&json!(["error", "Error", "boom"]));
        assert_eq!((js.code, js.message.as_str()), (Code::Internal, "boom"));
        assert_eq!(decode_error(&json!("oops")).code, Code::Internal);
    }
}
