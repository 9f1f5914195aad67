//! Capability id 1: the framework's runtime capability.

use std::sync::{Arc, Weak};

use capwire_proto::Status;

use super::Shared;
use crate::object::{Methods, Object};
use crate::value::Value;

/// `ping` → `"pong"`; `names` → `[{name, version}]` served on this
/// connection's registry; `schemas` → `[{name, version, schema}]` (the
/// schema is `null` for objects without one); `stats` → this connection's [`crate::Stats`].
pub(super) fn runtime_object(session: Weak<Shared>) -> Arc<dyn Object> {
    let for_names = session.clone();
    let for_schemas = session.clone();
    let for_stats = session;
    let methods = Methods::new("capwire.runtime")
        .method("ping", |_args, _ctx| async { Value::new("pong") })
        .method("names", move |_args, _ctx| {
            let session = for_names.upgrade();
            async move {
                let session = session.ok_or_else(|| Status::unavailable("closed"))?;
                let names: Vec<serde_json::Value> = session
                    .registry
                    .names()
                    .into_iter()
                    .map(|(name, version)| serde_json::json!({ "name": name, "version": version }))
                    .collect();
                Value::new(&names)
            }
        })
        .method("schemas", move |_args, _ctx| {
            let session = for_schemas.upgrade();
            async move {
                let session = session.ok_or_else(|| Status::unavailable("closed"))?;
                let schemas: Vec<serde_json::Value> = session
                    .registry
                    .names()
                    .into_iter()
                    .filter_map(|(name, version)| {
                        let served = session.registry.lookup(&name)?;
                        let schema = served.object.schema();
                        Some(serde_json::json!({ "name": name, "version": version, "schema": schema }))
                    })
                    .collect();
                Value::new(&schemas)
            }
        })
        .method("stats", move |_args, _ctx| {
            let session = for_stats.upgrade();
            async move {
                let session = session.ok_or_else(|| Status::unavailable("closed"))?;
                Value::new(&session.stats())
            }
        })
        .idempotent("ping")
        .idempotent("names")
        .idempotent("schemas")
        .idempotent("stats");
    Arc::new(methods)
}
