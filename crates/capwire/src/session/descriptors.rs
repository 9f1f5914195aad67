//! Capabilities in values: the driver's half. The engine keeps the tables
//! and decides; here each outgoing `Capability` is classified for it (a
//! local object to export, one of the peer's own sent back, an answer this
//! side pipelines on, or anything else as a forwarding export).

use std::borrow::Cow;
use std::sync::Arc;

use capwire_proto::{CapDescriptor, Code, Payload, Status};

use crate::capability::{CapKind, Capability};
use crate::engine::Outgoing;
use crate::object::Object;
use crate::promise::Sent;
use crate::value::Value;

use super::{Shared, State};

impl Shared {
    /// How the engine should describe `cap` on this connection.
    fn classify<'a>(self: &Arc<Self>, cap: &'a Capability) -> Outgoing<'a, Arc<dyn Object>> {
        match &cap.kind {
            CapKind::Local(object) => Outgoing::Export(Cow::Borrowed(object), None),
            CapKind::Served { object, generation } => {
                Outgoing::Export(Cow::Borrowed(object), Some(*generation))
            }
            CapKind::Remote(r) if std::ptr::eq(r.session.as_ptr(), Arc::as_ptr(self)) => {
                Outgoing::Import(r.id)
            }
            CapKind::Promised(core, path) => match core.sent() {
                Some(Sent::Kept(k)) if std::ptr::eq(k.session.as_ptr(), Arc::as_ptr(self)) => {
                    Outgoing::Answer(k.id, Cow::Borrowed(path))
                }
                _ => forward(cap),
            },
            CapKind::Answer(answer) => match answer.get() {
                Some(Ok(resolved)) => match self.classify(&resolved) {
                    Outgoing::Export(object, generation) => {
                        Outgoing::Export(Cow::Owned(object.into_owned()), generation)
                    }
                    Outgoing::Import(id) => Outgoing::Import(id),
                    Outgoing::Answer(id, path) => {
                        Outgoing::Answer(id, Cow::Owned(path.into_owned()))
                    }
                },
                _ => forward(cap),
            },
            CapKind::Remote(_) => forward(cap),
        }
    }

    /// Turns the capabilities of an outgoing value into descriptors,
    /// exporting local objects (all or nothing: see the engine's `describe`).
    pub(super) fn describe_caps(
        self: &Arc<Self>,
        st: &mut State,
        caps: &[Capability],
    ) -> Result<Vec<CapDescriptor>, Status> {
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        st.describe(caps.iter().map(|cap| self.classify(cap)))
    }

    /// An outgoing value in this session's codec, with its capabilities described.
    pub(super) fn describe_value(
        self: &Arc<Self>,
        st: &mut State,
        value: Value,
    ) -> Result<(Payload, Vec<CapDescriptor>), Status> {
        let payload = value
            .payload
            .into_codec(self.codec)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the value: {e}")))?;
        Ok((payload, self.describe_caps(st, &value.caps)?))
    }
}

/// A capability hosted elsewhere (another connection, a promise), exported
/// as a forwarding object: calls on it are passed on.
fn forward(cap: &Capability) -> Outgoing<'static, Arc<dyn Object>> {
    let forward: Arc<dyn Object> = Arc::new(cap.clone());
    Outgoing::Export(Cow::Owned(forward), None)
}
