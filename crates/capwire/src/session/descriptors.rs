//! Capabilities in values: describing the ones this side sends (exports,
//! imports sent back, answers pipelined on) and resolving the descriptors of
//! received values into capabilities.

use std::collections::HashMap;
use std::sync::Arc;

use capwire_proto::{
    CapDescriptor, Code, Frame, Payload, Reason, Release, Status, BOOTSTRAP_CAP, RUNTIME_CAP,
};

use crate::capability::{CapKind, Capability, RemoteCap};
use crate::object::Object;
use crate::promise::Sent;
use crate::value::Value;

use super::{AnswerRef, Queued, Shared, State};

impl Shared {
    /// Turns the capabilities of an outgoing value into descriptors, exporting
    /// local objects. All or nothing: if one cannot be exported (the export
    /// limit), the introductions counted for the others are taken back.
    pub(super) fn describe_caps(
        self: &Arc<Self>,
        st: &mut State,
        caps: &[Capability],
    ) -> Result<Vec<CapDescriptor>, Status> {
        let mut described = Vec::with_capacity(caps.len());
        for cap in caps {
            match self.describe_cap(st, cap) {
                Ok(d) => described.push(d),
                Err(status) => {
                    st.exports.unsend(&described);
                    return Err(status);
                }
            }
        }
        Ok(described)
    }

    pub(super) fn describe_cap(
        self: &Arc<Self>,
        st: &mut State,
        cap: &Capability,
    ) -> Result<CapDescriptor, Status> {
        let max = self.config.limits.max_exports;
        match &cap.kind {
            CapKind::Local(object) => st
                .exports
                .export(object, None, max)
                .map(CapDescriptor::Export),
            CapKind::Served { object, generation } => st
                .exports
                .export(object, Some(*generation), max)
                .map(CapDescriptor::Export),
            CapKind::Remote(r) if std::ptr::eq(r.session.as_ptr(), Arc::as_ptr(self)) => {
                Ok(CapDescriptor::Import(r.id))
            }
            CapKind::Promised(core, path) => match core.sent() {
                Some(Sent::Kept(k)) if std::ptr::eq(k.session.as_ptr(), Arc::as_ptr(self)) => {
                    Ok(CapDescriptor::Answer {
                        id: k.id,
                        path: path.to_vec(),
                    })
                }
                _ => self.describe_forward(st, cap),
            },
            CapKind::Answer(answer) => match answer.get() {
                Some(Ok(resolved)) => self.describe_cap(st, &resolved),
                _ => self.describe_forward(st, cap),
            },
            CapKind::Remote(_) => self.describe_forward(st, cap),
        }
    }

    /// Exports a capability hosted elsewhere (another connection, a promise)
    /// as a forwarding object: calls on it are passed on.
    pub(super) fn describe_forward(
        self: &Arc<Self>,
        st: &mut State,
        cap: &Capability,
    ) -> Result<CapDescriptor, Status> {
        let forward: Arc<dyn Object> = Arc::new(cap.clone());
        st.exports
            .export(&forward, None, self.config.limits.max_exports)
            .map(CapDescriptor::Export)
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

    /// Turns the descriptors of an incoming value into capabilities.
    pub(super) fn resolve_caps(
        self: &Arc<Self>,
        st: &mut State,
        descriptors: Vec<CapDescriptor>,
    ) -> Result<Vec<Capability>, Status> {
        if descriptors.is_empty() {
            return Ok(Vec::new());
        }
        let me = Arc::downgrade(self);
        descriptors
            .into_iter()
            .map(|d| match d {
                CapDescriptor::Export(id) if id == BOOTSTRAP_CAP || id == RUNTIME_CAP => {
                    Err(Status::protocol_violation(format!(
                        "capability {id} is reserved and cannot be introduced"
                    )))
                }
                CapDescriptor::Export(id) => {
                    let me = me.clone();
                    let handle = st.imports.introduce(id, |serial| {
                        Arc::new(RemoteCap {
                            session: me,
                            id,
                            serial,
                        })
                    });
                    Ok(Capability {
                        kind: CapKind::Remote(handle),
                    })
                }
                CapDescriptor::Import(id) => match st.exports.get(id) {
                    Some(e) => Ok(Capability::from_arc(e.object.clone())),
                    None if st.exports.is_revoked(id) || st.revoked_exports.contains(id) => {
                        Err(Status::revoked(format!("capability {id}")))
                    }
                    None => Err(Status::new(
                        Code::NotFound,
                        format!("capability {id} is not exported"),
                    )),
                },
                CapDescriptor::Answer { id, path } => {
                    match st.answers.pipeline_target(id, &path)? {
                        Some(resolved) => Ok(resolved),
                        None => {
                            let max = self.config.limits.max_pending_pipelined;
                            if st.answers.pending_pipelined() >= max {
                                return Err(Status::limit(
                                    Reason::MAX_PENDING_PIPELINED,
                                    max as u64,
                                ));
                            }
                            let answer = Arc::new(AnswerRef::new(id, me.clone()));
                            st.answers.enqueue(
                                id,
                                Queued::Promise {
                                    path,
                                    answer: answer.clone(),
                                },
                            );
                            Ok(Capability {
                                kind: CapKind::Answer(answer),
                            })
                        }
                    }
                }
            })
            .collect()
    }

    /// Hands back the introductions of a value nobody will receive.
    pub(super) fn release_unwanted(&self, caps: &[CapDescriptor]) {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for d in caps {
            if let CapDescriptor::Export(id) = d {
                if *id != BOOTSTRAP_CAP && *id != RUNTIME_CAP {
                    *counts.entry(*id).or_default() += 1;
                }
            }
        }
        for (cap, n) in counts {
            self.send_nowait(Frame::Release(Release { cap, n }));
        }
    }
}
