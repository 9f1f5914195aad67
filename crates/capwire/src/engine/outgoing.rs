//! Frames this side originates: a question's `call` ([`Core::call`]) and
//! an answer's `result` ([`Core::answer`]). The engine checks, records and
//! builds the frame; the driver sends it.

use capwire_proto::{
    Call, CallResult, CapDescriptor, Code, Frame, Outcome, Payload, Status, Target,
};

use super::questions::QuestionKind;
use super::{Core, Host};

/// A call this side is about to make.
pub(crate) struct OutgoingCall<'a, H: Host> {
    pub(crate) target: Target,
    pub(crate) method: &'a str,
    pub(crate) payload: Payload,
    /// The capabilities of the arguments (the driver keeps them alive).
    pub(crate) caps: &'a [H::Cap],
    /// The answer whose handler makes this call (protocol `parent`).
    pub(crate) parent: Option<u64>,
    pub(crate) deadline_ms: Option<u64>,
    pub(crate) kind: QuestionKind,
}

/// An answer's `result`, ready to send.
pub(crate) struct Answering<H: Host> {
    pub(crate) frame: Frame,
    /// The introductions it carries, taken back if it cannot be sent.
    pub(crate) sent_caps: Vec<CapDescriptor>,
    pub(crate) code: Code,
    /// For a kept answer, the outcome to pipeline on.
    pub(crate) kept: Option<Result<H::Value, Status>>,
}

impl<H: Host> Core<H> {
    /// Records a question and builds its `call` frame (nothing is sent):
    /// refused while closing, on a revoked capability, past
    /// `max_in_flight_out`, or when an argument's capability cannot be
    /// exported.
    #[inline]
    pub(crate) fn call(
        &mut self,
        call: OutgoingCall<'_, H>,
        reply: H::Reply,
    ) -> Result<(u64, Frame), Status> {
        let OutgoingCall {
            target,
            method,
            payload,
            caps,
            parent,
            deadline_ms,
            kind,
        } = call;
        let payload = payload
            .into_codec(self.codec)
            .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        let cap = match &target {
            Target::Cap(cap) => Some(*cap),
            Target::Answer { .. } => None,
        };
        self.may_call(method, cap)?;
        let caps = self.describe_caps(caps)?;
        let id = self.questions.insert(cap, kind, reply);
        let (keep, stream) = match kind {
            QuestionKind::Plain => (false, None),
            QuestionKind::Kept => (true, None),
            QuestionKind::Stream { credit, .. } => {
                (false, Some(u32::try_from(credit).unwrap_or(u32::MAX)))
            }
        };
        let frame = Frame::Call(Call {
            id,
            target,
            method: method.to_owned(),
            args: payload,
            caps,
            parent,
            deadline_ms,
            keep,
            stream,
        });
        Ok((id, frame))
    }

    /// Describes the capabilities of an outgoing value (all or nothing).
    #[inline]
    pub(crate) fn describe_caps(&mut self, caps: &[H::Cap]) -> Result<Vec<CapDescriptor>, Status> {
        if caps.is_empty() {
            return Ok(Vec::new());
        }
        let host = &self.host;
        let max = self.limits.max_exports;
        super::describe::<H>(
            &mut self.exports,
            max,
            caps.iter().map(|cap| host.classify(cap)),
        )
    }

    /// An outgoing value in this connection's codec, with its capabilities described.
    #[inline]
    pub(crate) fn describe_value(
        &mut self,
        value: H::Value,
    ) -> Result<(Payload, Vec<CapDescriptor>), Status> {
        let (payload, caps) = H::into_parts(value);
        let payload = payload
            .into_codec(self.codec)
            .map_err(|e| Status::new(Code::Internal, format!("cannot encode the value: {e}")))?;
        Ok((payload, self.describe_caps(&caps)?))
    }

    /// The handler of answer `id` finished with `result` (`None`: it was
    /// stopped): the `result` frame to send, or `None` when nothing is to be
    /// sent (the session ended, or the answer is gone).
    #[inline]
    pub(crate) fn answer(
        &mut self,
        id: u64,
        result: Option<Result<H::Value, Status>>,
    ) -> Option<Answering<H>> {
        let (result, kept) = self.on_answered(id, result)?;
        // A kept answer keeps what the handler returned, for pipelining.
        let mut kept = kept.then(|| result.clone());
        let (outcome, sent_caps, code) = match result.and_then(|v| self.describe_value(v)) {
            Ok((value, caps)) => (
                Outcome::Ok {
                    value,
                    caps: caps.clone(),
                },
                caps,
                Code::Ok,
            ),
            Err(status) => {
                let code = status.code;
                if let Some(k) = kept.as_mut() {
                    *k = Err(status.clone());
                }
                (Outcome::Err(status), Vec::new(), code)
            }
        };
        Some(Answering {
            frame: Frame::Result(CallResult { id, outcome }),
            sent_caps,
            code,
            kept,
        })
    }
}
