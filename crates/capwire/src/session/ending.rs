//! How a session ends: `shutdown` fails what is pending and closes the
//! transport; `fail` tells the peer why first (`goaway`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use capwire_proto::{Code, Frame, Goaway, Reason, Status};

use crate::engine::Ended;
use crate::events::Event;
use crate::transport::CloseReason;

use super::{Shared, MAX_GOAWAY_MESSAGE};

/// The transport close that goes with a session's end: WebSocket peers see
/// 1002 or 1009 for the errors of §7; the `goaway` before it says the rest.
pub(super) fn close_reason(status: &Status) -> CloseReason {
    match &status.reason {
        Some(r) if *r == Reason::PROTOCOL_VIOLATION => {
            CloseReason::new(CloseReason::PROTOCOL_ERROR, "protocol violation")
        }
        Some(r) if *r == Reason::MAX_FRAME_BYTES => {
            CloseReason::new(CloseReason::TOO_BIG, "frame too large")
        }
        _ => CloseReason::normal(),
    }
}

impl Shared {
    /// Ends the session: pending questions fail with `unavailable` (§7.1),
    /// running handlers are stopped, the tables are cleared and the transport
    /// closed. `status` is what [`Session::closed`] reports.
    pub(super) fn shutdown(self: &Arc<Self>, status: Status) {
        // Answer entries hold values (and handles): dropped outside the lock.
        let Some(Ended { questions, answers }) = self.lock().end(status.clone()) else {
            return;
        };
        self.pings().waiting.clear();
        for answer in &answers {
            answer.running.stop();
        }
        // A refusal (unauthenticated, permission denied) is what every
        // pending call learns, in its own code.
        let failed = if status.code == Code::Unavailable || crate::auth::is_refusal(status.code) {
            status.clone()
        } else {
            Status::unavailable(format!("the connection closed: {status}"))
        };
        for q in questions {
            q.reply.settle(Err(failed.clone()));
        }
        drop(answers);
        // Queued behind everything already sent (a goaway first of all); a
        // task, so that a full queue cannot lose the close.
        let sender = self.sender.clone();
        let reason = close_reason(&status);
        tokio::spawn(async move {
            let _ = sender.close(reason).await;
        });
        self.ended.store(true, Ordering::Release);
        self.closed.cancel();
        self.notify_settled();
        self.emit(Event::Closed { status });
    }

    /// Tells the peer why the connection ends (`goaway`, grace 0), then ends it.
    pub(super) async fn fail(self: &Arc<Self>, status: Status) {
        tracing::warn!(%status, "closing the connection");
        self.emit(Event::Error {
            status: status.clone(),
        });
        let mut told = status.clone();
        if told.message.len() > MAX_GOAWAY_MESSAGE {
            let mut end = MAX_GOAWAY_MESSAGE;
            while !told.message.is_char_boundary(end) {
                end -= 1;
            }
            told.message.truncate(end);
        }
        let goaway = Frame::Goaway(Goaway {
            status: told,
            grace_ms: 0,
        });
        // A peer that does not read cannot keep the session from ending.
        let _ = tokio::time::timeout(self.config.close_grace, self.send(goaway)).await;
        self.shutdown(status);
    }
}
