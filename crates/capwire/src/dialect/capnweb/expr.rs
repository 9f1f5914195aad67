//! capnweb expressions ↔ capwire values (research note §2.4, §2.8).
//!
//! A capwire [`Value`] is a JSON-model tree whose capabilities are
//! placeholders `{"$cap": n}` (user maps that look like one are escaped as
//! `{"$esc": map}`), and whose values JSON cannot hold (undefined, dates,
//! bytes, …) are extension values `{"$ext": [tag, …]}`. A capnweb expression is a JSON tree where every literal
//! array is wrapped in a one-element array and other arrays are tagged
//! (`["export", -1]`, `["bigint", "…"]`, …). This module converts the data
//! part both ways; the session resolves the references.

use capwire_proto::{Code, Status};
use serde_json::{Map, Value as Json};

/// capnweb's nesting limit: a value nested this deep (a JS array or object
/// is one level, however it is escaped) aborts the session, and is not sent.
pub(crate) const MAX_DEPTH: usize = 256;

/// The most JSON nesting a message within [`MAX_DEPTH`] can have (an
/// escaped array is two JSON levels), with room for the message around it.
pub(crate) const MAX_JSON_DEPTH: usize = 2 * MAX_DEPTH + 8;

/// True when a tree nests `limit` levels deep or more, counted as capnweb
/// counts: each array, object or tagged value is one level. In a capnweb
/// expression (`escaped`) a literal array is `[[…]]`, one level.
pub(crate) fn too_deep(tree: &Json, limit: usize, escaped: bool) -> bool {
    nests(tree, 0, limit, escaped)
}

fn nests(tree: &Json, depth: usize, limit: usize, escaped: bool) -> bool {
    if depth >= limit {
        return true;
    }
    match tree {
        Json::Array(items) => {
            let inner: &[Json] = match items.as_slice() {
                [Json::Array(literal)] if escaped => literal,
                _ => items,
            };
            inner.iter().any(|i| nests(i, depth + 1, limit, escaped))
        }
        Json::Object(map) => map.values().any(|v| nests(v, depth + 1, limit, escaped)),
        _ => false,
    }
}

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
            if let Some(items) = extension(map) {
                return encode_extension(items, cap);
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

/// A plain JS object as a capwire map: one that would read as a placeholder,
/// an escape or an extension value is escaped.
pub(crate) fn user_map(map: Map<String, Json>) -> Json {
    if map.len() == 1
        && ["$cap", "$esc", "$ext"]
            .iter()
            .any(|k| map.contains_key(*k))
    {
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
/// Values JSON cannot hold travel as extension values `{"$ext": [tag, …]}`
/// (protocol.md §4.6), so they come back to the peer exactly as they came:
/// `undefined`, `inf`, `-inf`, `nan`, `date`, `bytes` (with its typed-array
/// name), `url`, `headers`, and bigints that fit no JSON integer or would
/// come back as a number (within ±(2^53−1)). A bigint beyond ±(2^53−1) that
/// fits 64 bits is a plain integer: it goes back as a bigint anyway.
pub(crate) fn special(tag: &str, items: &[Json]) -> Option<Result<Json, Status>> {
    let bad = |what: &str| {
        Err(Status::new(
            Code::InvalidArgument,
            format!("malformed capnweb `{tag}` value: {what}"),
        ))
    };
    let ext = |items: &[Json]| {
        let mut all = vec![Json::from(tag)];
        all.extend_from_slice(items);
        Ok(ext_value(Json::Array(all)))
    };
    Some(match tag {
        "undefined" | "inf" | "-inf" | "nan" if items.is_empty() => ext(items),
        "undefined" | "inf" | "-inf" | "nan" => bad("expected no operands"),
        "bigint" => match items {
            [Json::String(d)] if is_bigint(d) => {
                let wide = d
                    .parse::<i64>()
                    .map(Json::from)
                    .or_else(|_| d.parse::<u64>().map(Json::from));
                match wide {
                    Ok(n) if !is_safe(&n) => Ok(n),
                    _ => ext(items),
                }
            }
            _ => bad("expected a decimal string of at most 16384 digits"),
        },
        "date" => match items {
            [Json::Number(_) | Json::Null] => ext(items),
            _ => bad("expected milliseconds"),
        },
        "bytes" => match items {
            [Json::String(_)] => ext(items),
            [Json::String(_), Json::String(name)] if TYPED_ARRAYS.contains(&name.as_str()) => {
                ext(items)
            }
            _ => bad("expected base64 text and an optional typed-array name"),
        },
        "url" => match items {
            [Json::String(_)] => ext(items),
            _ => bad("expected a string"),
        },
        "headers" => match items {
            [Json::Array(pairs)] if pairs.iter().all(is_header) => ext(items),
            _ => bad("expected a list of [name, value] pairs"),
        },
        "request" | "response" | "blob" => Err(Status::new(
            Code::Unimplemented,
            format!("capnweb `{tag}` values are not supported by capwire"),
        )),
        _ => return None,
    })
}

/// The typed-array names a `bytes` value may carry.
const TYPED_ARRAYS: &[&str] = &[
    "ArrayBuffer",
    "DataView",
    "Int8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "BigInt64Array",
    "BigUint64Array",
    "Float32Array",
    "Float64Array",
];

fn is_bigint(d: &str) -> bool {
    let digits = d.strip_prefix('-').unwrap_or(d);
    !digits.is_empty() && digits.len() <= 16384 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_safe(n: &Json) -> bool {
    n.as_i64().map(i64::unsigned_abs).or_else(|| n.as_u64()) <= Some(MAX_SAFE)
}

fn is_header(pair: &Json) -> bool {
    matches!(
        pair.as_array().map(Vec::as_slice),
        Some([Json::String(_), Json::String(_)])
    )
}

/// `{"$ext": tagged}`.
pub(crate) fn ext_value(tagged: Json) -> Json {
    let mut map = Map::new();
    map.insert("$ext".into(), tagged);
    Json::Object(map)
}

/// `{"$ext": [tag, …]}` → its tag and operands.
fn extension(map: &Map<String, Json>) -> Option<&[Json]> {
    if map.len() != 1 {
        return None;
    }
    let items = map.get("$ext")?.as_array()?;
    items.first()?.as_str()?;
    Some(items)
}

/// The capnweb expression of an extension value. Its operands are data,
/// except an error's properties (element 4), which are a value.
fn encode_extension(
    items: &[Json],
    cap: &mut dyn FnMut(usize) -> Result<Json, Status>,
) -> Result<Json, Status> {
    let tag = items.first().and_then(Json::as_str).unwrap_or("");
    let valid = match tag {
        "error" => matches!(items.get(1..3), Some([Json::String(_), Json::String(_)])),
        _ => matches!(special(tag, &items[1..]), Some(Ok(_))),
    };
    if !valid {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "not a capnweb extension value: {}",
                Json::from(items.to_vec())
            ),
        ));
    }
    let mut out = items.to_vec();
    if tag == "error" {
        if let Some(props) = out.get_mut(4) {
            *props = encode_tree(props, cap)?;
        }
    }
    Ok(Json::Array(out))
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
    fn special_values_round_trip_as_extension_values() {
        let all = [
            json!(["undefined"]),
            json!(["inf"]),
            json!(["-inf"]),
            json!(["nan"]),
            json!(["bigint", "123"]),
            json!(["bigint", "-123456789012345678901234567890"]),
            json!(["date", 1700000000000.0]),
            json!(["date", null]),
            json!(["bytes", "AQID"]),
            json!(["bytes", "AQACAQ", "Uint16Array"]),
            json!(["url", "https://x.test/p?q=1"]),
            json!(["headers", [["a", "1"], ["b", "2"]]]),
        ];
        for tagged in all {
            let items = tagged.as_array().unwrap();
            let tag = items[0].as_str().unwrap();
            let value = special(tag, &items[1..]).unwrap().unwrap();
            assert_eq!(value, json!({ "$ext": tagged }));
            assert_eq!(enc(value), tagged, "{tag} comes back as it came");
        }
        // A bigint beyond JS's safe range that fits 64 bits is an integer,
        // and still goes back as a bigint.
        let big = special("bigint", &[json!("9007199254740993")])
            .unwrap()
            .unwrap();
        assert_eq!(big, json!(9007199254740993u64));
        assert_eq!(enc(big), json!(["bigint", "9007199254740993"]));
        // An error value's properties are a value.
        assert_eq!(
            enc(json!({"$ext": ["error", "RangeError", "m", null, {"list": [1]}]})),
            json!(["error", "RangeError", "m", null, {"list": [[1]]}])
        );
    }

    #[test]
    fn malformed_special_values_are_refused() {
        assert!(special("bigint", &[json!(1)]).unwrap().is_err());
        assert!(special("bigint", &[json!("12a")]).unwrap().is_err());
        assert!(special("bigint", &[json!("9".repeat(16385))])
            .unwrap()
            .is_err());
        assert!(special("undefined", &[json!(1)]).unwrap().is_err());
        assert!(special("bytes", &[json!("AQ"), json!("Uint64Array")])
            .unwrap()
            .is_err());
        assert!(special("headers", &[json!([["a"]])]).unwrap().is_err());
        assert_eq!(
            special("request", &[]).unwrap().unwrap_err().code,
            Code::Unimplemented
        );
        assert!(special("map", &[]).is_none());
        // A capwire value that claims to be an extension but is not one.
        let bad = encode_tree(&json!({"$ext": ["date", "soon"]}), &mut |_| Ok(Json::Null));
        assert_eq!(bad.unwrap_err().code, Code::InvalidArgument);
        // A user map that looks like one is escaped, and comes back as it was.
        let user = user_map(serde_json::from_value(json!({"$ext": ["date", 1]})).unwrap());
        assert_eq!(user, json!({"$esc": {"$ext": ["date", 1]}}));
        assert_eq!(enc(user), json!({"$ext": [["date", 1]]}));
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
