//! The session's [`Host`]: the runtime types the engine stores in its
//! tables (objects, import handles, reply channels, cancellation tokens,
//! values) and the few things it asks the driver to make.

use std::borrow::Cow;
use std::sync::{Arc, Weak};

use capwire_proto::{PathSeg, Payload, Status};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::flow::Credit;
use super::pipeline::{AnswerRef, Queued};
use super::Shared;
use crate::capability::{CapKind, Capability, RemoteCap};
use crate::engine::{AnswerHost, Host, Outgoing, Start};
use crate::events::Started;
use crate::object::Object;
use crate::promise::Sent;
use crate::value::Value;

/// The engine's host for a tokio session.
pub(crate) struct Live {
    pub(crate) session: Weak<Shared>,
}

/// The driver's part of a running answer.
#[derive(Clone)]
pub(crate) struct Running {
    /// Cancelled to stop the handler (and the calls it made).
    pub(crate) cancel: CancellationToken,
    /// A stream answer's credit.
    pub(crate) credit: Option<Arc<Credit>>,
    /// When the call arrived, for its event.
    pub(crate) started: Started,
}

impl Running {
    /// Tells the handler to stop.
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }
}

/// What a question's caller is told when it is answered.
pub(crate) enum Reply {
    /// A plain call: one result, to one waiter.
    Once(oneshot::Sender<Result<Value, Status>>),
    /// A kept call: the result is shared by every handle to the promise.
    Kept {
        tx: watch::Sender<Option<Result<Value, Status>>>,
        meta: Meta,
    },
    /// A stream call: items, in order.
    Stream {
        tx: mpsc::UnboundedSender<Result<Value, Status>>,
        meta: Meta,
    },
}

/// What the events of a kept or stream question report.
pub(crate) struct Meta {
    pub(crate) method: String,
    pub(crate) started: Started,
}

impl Reply {
    /// Gives the caller its outcome. A stream only hears about errors: its
    /// items went to it as they came.
    pub(crate) fn settle(self, outcome: Result<Value, Status>) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Kept { tx, .. } => {
                tx.send_replace(Some(outcome));
            }
            Reply::Stream { tx, .. } => {
                if let Err(status) = outcome {
                    let _ = tx.send(Err(status));
                }
            }
        }
    }
}

impl AnswerHost for Live {
    type Running = Running;
    type Value = Value;
    type Waiting = Queued;
}

impl Host for Live {
    type Object = Arc<dyn Object>;
    type Cap = Capability;
    type Import = Weak<RemoteCap>;
    type Reply = Reply;
    type ItemSink = mpsc::UnboundedSender<Result<Value, Status>>;

    fn object_key(object: &Arc<dyn Object>) -> u64 {
        Arc::as_ptr(object) as *const () as usize as u64
    }

    fn new_import(&self, id: u64, serial: u64) -> Arc<RemoteCap> {
        Arc::new(RemoteCap {
            session: self.session.clone(),
            id,
            serial,
        })
    }

    fn import_cap(&self, handle: Arc<RemoteCap>) -> Capability {
        Capability {
            kind: CapKind::Remote(handle),
        }
    }

    fn local_cap(&self, object: &Arc<dyn Object>) -> Capability {
        Capability::from_arc(object.clone())
    }

    fn cap_at(&self, value: &Value, path: &[PathSeg]) -> Result<Capability, Status> {
        value.payload.cap_at(path).and_then(|n| value.cap(n))
    }

    fn promise(&self, answer: u64) -> (Capability, Queued) {
        let answer = Arc::new(AnswerRef::new(answer, self.session.clone()));
        (
            Capability {
                kind: CapKind::Answer(answer.clone()),
            },
            Queued::Promise(answer),
        )
    }

    fn value(&self, payload: Payload, caps: Vec<Capability>) -> Value {
        Value { payload, caps }
    }

    fn into_parts(value: Value) -> (Payload, Vec<Capability>) {
        (value.payload, value.caps)
    }

    fn classify<'a>(&self, cap: &'a Capability) -> Outgoing<'a, Arc<dyn Object>> {
        let here = |session: &Weak<Shared>| std::ptr::eq(session.as_ptr(), self.session.as_ptr());
        match &cap.kind {
            CapKind::Local(object) => Outgoing::Export(Cow::Borrowed(object), None),
            CapKind::Served { object, generation } => {
                Outgoing::Export(Cow::Borrowed(object), Some(*generation))
            }
            CapKind::Remote(r) if here(&r.session) => Outgoing::Import(r.id),
            CapKind::Promised(core, path) => match core.sent() {
                Some(Sent::Kept(k)) if here(&k.session) => {
                    Outgoing::Answer(k.id, Cow::Borrowed(&path[..]))
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

    fn queued_call(&self, start: Start<Live>) -> Queued {
        Queued::Call(Box::new(start))
    }

    fn item_sink(&self, reply: &Reply) -> Option<Self::ItemSink> {
        match reply {
            Reply::Stream { tx, .. } => Some(tx.clone()),
            _ => None,
        }
    }
}

/// A capability hosted elsewhere (another connection, a promise), exported
/// as a forwarding object: calls on it are passed on.
fn forward(cap: &Capability) -> Outgoing<'static, Arc<dyn Object>> {
    let forward: Arc<dyn Object> = Arc::new(cap.clone());
    Outgoing::Export(Cow::Owned(forward), None)
}
