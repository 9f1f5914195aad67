//! The page the relay serves at `GET /`: a browser attaches with the
//! pairing token from the URL fragment (`#token=…`, never sent to the
//! server in a request line) or a prompt, shows the session's transcript
//! (replayed from the ring on every reconnect, rebuilt on a reset), and
//! sends prompts, cancels, answers permission requests and takes control.

use bytes::Bytes;
use capwire::transport::GetRoute;

/// The page itself: one self-contained HTML file, no external resources.
pub const PAGE: &str = include_str!("page.html");

/// The route that serves [`PAGE`] at `path`.
pub(crate) fn route(path: &str) -> GetRoute {
    GetRoute::fixed(
        path,
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    )
}
