//! Resolving a property path inside an encoded value (protocol.md §4.5).
//!
//! Promise pipelining names a capability by the answer that will hold it and
//! a path into that answer's value. When the answer settles, the callee walks
//! the path: it must end at a placeholder `{"$cap": n}`, and `n` indexes the
//! answer's capability table. Escapes (`{"$esc": map}`, §4.3) are unwrapped
//! on the way and are not path segments.

use serde_json::Value as Tree;

use crate::frame::PathSeg;
use crate::payload::Payload;
use crate::status::{Code, Status};

/// Why a path did not lead to a capability: always `invalid_argument` (\[S9\]).
fn bad_path(path: &[PathSeg], what: impl std::fmt::Display) -> Status {
    Status::new(
        Code::InvalidArgument,
        format!("pipelined path {} {what}", PathDisplay(path)),
    )
}

struct PathDisplay<'a>(&'a [PathSeg]);

impl std::fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("[]");
        }
        for seg in self.0 {
            match seg {
                PathSeg::Key(k) => write!(f, ".{}", k.escape_debug())?,
                PathSeg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// The placeholder index of a map `{"$cap": n}`, if the map is one.
fn placeholder(tree: &Tree) -> Option<Option<u64>> {
    let map = tree.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.get("$cap").map(Tree::as_u64)
}

/// Unwraps one escape level: `{"$esc": inner}` is the data map `inner`.
fn unescape(tree: &Tree) -> Result<&Tree, &'static str> {
    match tree.as_object() {
        Some(map) if map.len() == 1 => match map.get("$esc") {
            Some(inner) if inner.is_object() => Ok(inner),
            Some(_) => Err("crosses an escape that does not wrap a map"),
            None => Ok(tree),
        },
        _ => Ok(tree),
    }
}

impl Payload {
    /// Walks `path` through the value and returns the index of the placeholder
    /// it ends at: the capability it names is entry `n` of the value's `caps`.
    ///
    /// Fails with `invalid_argument` when the path is missing, crosses plain
    /// data, or ends at something that is not a placeholder (\[S9\]).
    ///
    /// ```
    /// use capwire_proto::{Codec, PathSeg, Payload};
    ///
    /// let v = Payload::encode(Codec::Json, &serde_json::json!({"counter": {"$cap": 0}}))?;
    /// assert_eq!(v.cap_at(&[PathSeg::Key("counter".into())])?, 0);
    /// assert!(v.cap_at(&[PathSeg::Key("other".into())]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cap_at(&self, path: &[PathSeg]) -> Result<usize, Status> {
        let tree: Tree = self
            .decode()
            .map_err(|e| bad_path(path, format_args!("cannot be followed: {e}")))?;
        let mut node = &tree;
        for (i, seg) in path.iter().enumerate() {
            if placeholder(node).is_some() {
                return Err(bad_path(
                    path,
                    format_args!("reaches a capability after {i} segments and cannot go into it"),
                ));
            }
            node = unescape(node).map_err(|e| bad_path(path, e))?;
            let next = match (seg, node) {
                (PathSeg::Key(k), Tree::Object(map)) => map.get(k.as_str()),
                (PathSeg::Index(n), Tree::Array(items)) => {
                    usize::try_from(*n).ok().and_then(|n| items.get(n))
                }
                (PathSeg::Key(_), _) => {
                    return Err(bad_path(
                        path,
                        format_args!("applies a key to a non-map at segment {i}"),
                    ))
                }
                (PathSeg::Index(_), _) => {
                    return Err(bad_path(
                        path,
                        format_args!("applies an index to a non-array at segment {i}"),
                    ))
                }
            };
            node =
                next.ok_or_else(|| bad_path(path, format_args!("has no element at segment {i}")))?;
        }
        match placeholder(node) {
            Some(Some(n)) => usize::try_from(n)
                .map_err(|_| bad_path(path, "names a capability index out of range")),
            Some(None) => Err(bad_path(path, "ends at a malformed placeholder")),
            None => Err(bad_path(path, "ends at plain data, not a capability")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    fn key(k: &str) -> PathSeg {
        PathSeg::Key(k.into())
    }

    #[test]
    fn resolves_in_both_codecs() {
        let v = serde_json::json!({"a": [1, {"$cap": 2}], "b": {"$cap": 0}, "e": {"$esc": {"$cap": {"c": {"$cap": 1}}}}});
        for codec in [Codec::Json, Codec::Msgpack] {
            let p = Payload::encode(codec, &v).expect("encode");
            assert_eq!(p.cap_at(&[key("b")]).expect("b"), 0);
            assert_eq!(p.cap_at(&[key("a"), PathSeg::Index(1)]).expect("a[1]"), 2);
            // The escape is unwrapped: `$cap` inside it is a plain key.
            assert_eq!(p.cap_at(&[key("e"), key("$cap"), key("c")]).expect("e"), 1);
        }
    }

    #[test]
    fn the_empty_path_is_the_value() {
        let p = Payload::encode(Codec::Msgpack, &serde_json::json!({"$cap": 0})).expect("encode");
        assert_eq!(p.cap_at(&[]).expect("root"), 0);
    }

    #[test]
    fn wrong_paths_are_invalid_argument() {
        let p = Payload::encode(
            Codec::Json,
            &serde_json::json!({"a": [1], "b": {"$cap": 0}, "s": "x", "e": {"$esc": 1}}),
        )
        .expect("encode");
        for path in [
            vec![key("missing")],
            vec![key("a"), PathSeg::Index(5)],
            vec![key("a"), key("x")],
            vec![key("b"), key("deeper")],
            vec![key("s")],
            vec![key("a"), PathSeg::Index(0)],
            vec![key("e"), key("x")],
            vec![],
        ] {
            let err = p.cap_at(&path).expect_err("not a capability");
            assert_eq!(err.code, Code::InvalidArgument, "{path:?}: {err}");
        }
    }
}
