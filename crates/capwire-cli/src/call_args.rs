//! What `capwire call` sends: JSON arguments with capabilities made on the
//! spot (`{"$callback": R}`, `{"$sink": N}`, `{"$source": [...]}`), and a
//! pipelined path of calls on the result (`.increment '[1]'`).

use std::sync::Arc;

use capwire::proto::PathSeg;
use capwire::{CallContext, Capability, Object, SinkReceiver, Status, Value};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::Usage;

/// The window of a `{"$sink": true}`: items the server may write ahead.
const DEFAULT_SINK_WINDOW: usize = 32;

/// Arguments ready to send, and the sinks whose items to print.
pub(crate) struct Prepared {
    /// The arguments, with `{"$cap": n}` where a capability was asked for.
    pub(crate) value: Value,
    /// The receiving ends of the sinks, in argument order.
    pub(crate) sinks: Vec<SinkReceiver>,
}

/// Turns `args` into a value, making a capability for each placeholder:
///
/// - `{"$callback": R}`: an object of ours whose every method call is
///   printed (`{"callback": METHOD, "args": ARGS}`) and answered with `R`;
/// - `{"$sink": N}` (or `true`): a sink the server writes to, with a window
///   of `N` (32); its items are printed (`{"sink": I, "item": ITEM}`);
/// - `{"$source": [ITEMS]}`: a stream the server reads, yielding `ITEMS`.
pub(crate) fn prepare(mut args: serde_json::Value) -> Result<Prepared, Usage> {
    let mut caps = Vec::new();
    let mut sinks = Vec::new();
    replace(&mut args, &mut caps, &mut sinks)?;
    let value = Value::with_caps(&args, caps)
        .map_err(|s| Usage(format!("the arguments cannot be sent: {s}")))?;
    Ok(Prepared { value, sinks })
}

fn replace(
    json: &mut serde_json::Value,
    caps: &mut Vec<Capability>,
    sinks: &mut Vec<SinkReceiver>,
) -> Result<(), Usage> {
    match json {
        serde_json::Value::Object(map) if map.len() == 1 => {
            let Some((key, inner)) = map.iter().next() else {
                return Ok(());
            };
            let cap = match key.as_str() {
                "$callback" => Capability::local(Printer {
                    answer: inner.clone(),
                }),
                "$sink" => {
                    let window = match inner {
                        serde_json::Value::Bool(true) => DEFAULT_SINK_WINDOW,
                        serde_json::Value::Number(n) => n
                            .as_u64()
                            .filter(|n| (1..=65_536).contains(n))
                            .map(|n| n as usize)
                            .ok_or_else(|| window_error(inner))?,
                        _ => return Err(window_error(inner)),
                    };
                    let (cap, receiver) = capwire::sink(window);
                    sinks.push(receiver);
                    cap
                }
                "$source" => {
                    let serde_json::Value::Array(items) = inner else {
                        return Err(Usage(format!(
                            "`$source` takes a JSON array of the items to stream, not {inner}"
                        )));
                    };
                    let items: Vec<Result<Value, Status>> = items.iter().map(Value::new).collect();
                    capwire::source(futures_util::stream::iter(items).boxed())
                }
                _ => {
                    for value in map.values_mut() {
                        replace(value, caps, sinks)?;
                    }
                    return Ok(());
                }
            };
            *json = serde_json::json!({ "$cap": caps.len() });
            caps.push(cap);
            Ok(())
        }
        serde_json::Value::Object(map) => {
            for value in map.values_mut() {
                replace(value, caps, sinks)?;
            }
            Ok(())
        }
        serde_json::Value::Array(items) => {
            for value in items {
                replace(value, caps, sinks)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn window_error(got: &serde_json::Value) -> Usage {
    Usage(format!(
        "`$sink` takes `true` or a window from 1 to 65536 (items written ahead), not {got}"
    ))
}

/// A `{"$callback": R}`: prints each call it receives and answers `R`.
struct Printer {
    answer: serde_json::Value,
}

impl Object for Printer {
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Value,
        _ctx: CallContext,
    ) -> BoxFuture<'static, Result<Value, Status>> {
        let line = args
            .to_json()
            .map(|args| serde_json::json!({ "callback": method, "args": args }));
        async move {
            outln!("{}", line?);
            Value::new(&self.answer)
        }
        .boxed()
    }

    fn type_name(&self) -> &str {
        "capwire.cli.callback"
    }
}

/// Prints what the server writes to the sinks, one JSON line per item, as
/// it comes; returns once every sink has ended (or failed).
pub(crate) async fn print_sinks(sinks: Vec<SinkReceiver>) -> Result<(), Status> {
    let each = sinks
        .into_iter()
        .enumerate()
        .map(|(i, mut sink)| async move {
            while let Some(item) = sink.next().await {
                let item = item?.to_json()?;
                outln!("{}", serde_json::json!({ "sink": i, "item": item }));
            }
            Ok::<(), Status>(())
        });
    futures_util::future::try_join_all(each).await.map(|_| ())
}

/// One call of a pipelined path: `.method` or `.field.method`, on the
/// previous call's result (or the capability at `path` inside it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// Where the capability is in the previous result; empty: the result
    /// itself.
    pub(crate) path: Vec<PathSeg>,
    /// The method to call.
    pub(crate) method: String,
    /// Its arguments, as JSON.
    pub(crate) args: serde_json::Value,
}

/// Parses the words after the first call's arguments: each step is
/// `.PATH.METHOD`, optionally followed by its JSON arguments (`[]` when
/// the next word is another step, or there is none).
pub(crate) fn parse_path(words: &[String]) -> Result<Vec<Step>, Usage> {
    let mut steps = Vec::new();
    let mut words = words.iter().peekable();
    while let Some(word) = words.next() {
        let Some(dotted) = word.strip_prefix('.') else {
            return Err(Usage(format!(
                "`{word}`: after the arguments, each pipelined call is `.METHOD [ARGS]` \
                 (e.g. `makeCounter '[5]' .increment '[1]'`)"
            )));
        };
        let mut segments: Vec<&str> = dotted.split('.').collect();
        let method = segments.pop().unwrap_or_default();
        if method.is_empty() || segments.iter().any(|s| s.is_empty()) {
            return Err(Usage(format!(
                "`{word}`: expected `.METHOD` or `.FIELD.METHOD`"
            )));
        }
        let path = segments
            .iter()
            .map(|s| match s.parse::<u64>() {
                Ok(i) => PathSeg::Index(i),
                Err(_) => PathSeg::Key((*s).to_owned()),
            })
            .collect();
        let args = match words.peek() {
            Some(next) if !next.starts_with('.') => {
                let text = words.next().map(String::as_str).unwrap_or("[]");
                serde_json::from_str(text).map_err(|e| {
                    Usage(format!(
                        "the arguments of `.{method}` are not JSON: {text} ({e})"
                    ))
                })?
            }
            _ => serde_json::json!([]),
        };
        steps.push(Step {
            path,
            method: method.to_owned(),
            args,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_steps_with_and_without_arguments() {
        let steps = parse_path(&words(&[
            ".increment",
            "[1]",
            ".counter.value",
            ".items.0.get",
        ]))
        .expect("parses");
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].method, "increment");
        assert_eq!(steps[0].args, serde_json::json!([1]));
        assert!(steps[0].path.is_empty());
        assert_eq!(steps[1].path, vec![PathSeg::Key("counter".into())]);
        assert_eq!(steps[1].args, serde_json::json!([]));
        assert_eq!(
            steps[2].path,
            vec![PathSeg::Key("items".into()), PathSeg::Index(0)]
        );
    }

    #[test]
    fn refuses_what_is_not_a_step() {
        for (w, needle) in [
            (&["increment"][..], "each pipelined call"),
            (&["."][..], "expected `.METHOD`"),
            (&[".a..b"][..], "expected `.METHOD`"),
            (&[".m", "{not json"][..], "not JSON"),
        ] {
            let err = parse_path(&words(w)).expect_err("refused").0;
            assert!(err.contains(needle), "{w:?}: {err}");
        }
    }

    #[test]
    fn placeholders_become_capabilities() {
        let p = prepare(serde_json::json!([
            {"$callback": "pong"},
            {"x": [{"$sink": 4}]},
            {"$source": [1, 2]},
            {"$other": 1}
        ]))
        .expect("prepared");
        assert_eq!(p.value.caps().len(), 3);
        assert_eq!(p.sinks.len(), 1);
        assert_eq!(
            p.value.to_json().expect("json")[3],
            serde_json::json!({"$other": 1})
        );
        for bad in [
            serde_json::json!([{"$sink": 0}]),
            serde_json::json!([{"$sink": "x"}]),
            serde_json::json!([{"$source": 3}]),
        ] {
            assert!(prepare(bad.clone()).is_err(), "{bad}");
        }
    }
}
