//! capnweb's `.map()`: `["remap", id, path, captures, instructions]`
//! (research note §2.10).
//!
//! The value at `id` + `path` is mapped: an array element by element, `null`
//! to `null` without running the mapper, anything else once. The mapper is a
//! list of instructions evaluated in a numbering of its own: slot 0 is the
//! input, `-k` is capture `k`, `+k` is the result of instruction `k`; the last
//! instruction's value is the mapper's result.

use std::sync::Arc;

use capwire_proto::Status;
use serde_json::{json, Value as Json};

use super::eval::{locate, Base, Located};
use super::{violation, Inner};
use crate::capability::Capability;
use crate::value::Value;

/// The slots of one run of a mapper.
pub(super) struct Scope {
    input: Value,
    captures: Vec<Capability>,
    results: Vec<Value>,
}

impl Scope {
    /// The value in slot `id`.
    pub(super) fn slot(&self, id: i64) -> Result<Value, Status> {
        let missing = || violation(format!("no slot {id} in a map instruction"));
        match id {
            0 => Ok(self.input.clone()),
            n if n < 0 => {
                let k = usize::try_from(-(n + 1)).map_err(|_| missing())?;
                self.captures
                    .get(k)
                    .cloned()
                    .map(Value::capability)
                    .ok_or_else(missing)
            }
            n => {
                let k = usize::try_from(n - 1).map_err(|_| missing())?;
                self.results.get(k).cloned().ok_or_else(missing)
            }
        }
    }
}

fn list<'a>(items: &'a [Json], i: usize, what: &str) -> Result<&'a Vec<Json>, Status> {
    items
        .get(i)
        .and_then(Json::as_array)
        .ok_or_else(|| violation(format!("a remap's {what} is a list")))
}

impl Inner {
    /// Evaluates a `remap` expression whose `id` named `base`.
    pub(super) async fn remap(
        self: &Arc<Self>,
        base: Base,
        items: &[Json],
        scope: Option<&Scope>,
    ) -> Result<Value, Status> {
        let path = list(items, 2, "path")?;
        let capture_exprs = list(items, 3, "captures")?;
        let instructions = list(items, 4, "instructions")?;
        let value = match base {
            Base::Cap(cap) if path.is_empty() => Value::capability(cap),
            Base::Cap(_) => return Err(violation("a remap path into a capability")),
            Base::Value(v) => match locate(&v, path)? {
                Located::Cap(cap, used) if used == path.len() => Value::capability(cap),
                Located::Cap(..) => return Err(violation("a remap path through a capability")),
                Located::Value(v) => v,
            },
        };
        let mut captures = Vec::with_capacity(capture_exprs.len());
        for c in capture_exprs {
            let mut caps = Vec::new();
            let tree = self.eval(c.clone(), &mut caps, scope).await?;
            match (
                tree.as_object().and_then(super::expr::placeholder),
                caps.len(),
            ) {
                (Some(0), 1) => captures.extend(caps),
                _ => return Err(violation("a remap capture is a capability")),
            }
        }
        let tree: Json = value.decode()?;
        match tree {
            Json::Null => Ok(value),
            Json::Array(elems) => {
                let mut caps = Vec::new();
                let mut out = Vec::with_capacity(elems.len());
                for i in 0..elems.len() {
                    let element = match locate(&value, &[json!(i)])? {
                        Located::Cap(cap, _) => Value::capability(cap),
                        Located::Value(v) => v,
                    };
                    let result = self.run_mapper(element, &captures, instructions).await;
                    out.push(self.graft(result, &mut caps)?);
                }
                Value::with_caps(&Json::Array(out), caps)
            }
            _ => self.run_mapper(value, &captures, instructions).await,
        }
    }

    async fn run_mapper(
        self: &Arc<Self>,
        input: Value,
        captures: &[Capability],
        instructions: &[Json],
    ) -> Result<Value, Status> {
        let mut scope = Scope {
            input,
            captures: captures.to_vec(),
            results: Vec::with_capacity(instructions.len()),
        };
        for instruction in instructions {
            let mut caps = Vec::new();
            let tree = self
                .eval(instruction.clone(), &mut caps, Some(&scope))
                .await?;
            let value = Value::with_caps(&tree, caps)?;
            scope.results.push(value);
        }
        Ok(scope.results.pop().unwrap_or_else(Value::null))
    }
}
