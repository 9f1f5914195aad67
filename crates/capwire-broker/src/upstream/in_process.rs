//! An upstream in this process, for tests: the test holds the network's
//! end ([`InProcessNetwork`]), brings the link up and down, sends control
//! commands and reads what the broker delivered.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::{Control, Inbound, Outbound, Upstream, UpstreamError};

#[derive(Debug, Default)]
struct Link {
    up: bool,
    delivered: Vec<Outbound>,
}

/// The broker's end: give it to [`Connector::start`](super::Connector::start).
#[derive(Debug)]
pub struct InProcessUpstream {
    link: Arc<Mutex<Link>>,
    delivered: Arc<Notify>,
    inbound: Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
}

/// The network's end.
#[derive(Debug, Clone)]
pub struct InProcessNetwork {
    link: Arc<Mutex<Link>>,
    delivered: Arc<Notify>,
    inbound: mpsc::UnboundedSender<Inbound>,
}

impl InProcessUpstream {
    /// Both ends of a link that starts down.
    pub fn new() -> (InProcessUpstream, InProcessNetwork) {
        let link = Arc::new(Mutex::new(Link::default()));
        let delivered = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        (
            InProcessUpstream {
                link: link.clone(),
                delivered: delivered.clone(),
                inbound: Mutex::new(Some(rx)),
            },
            InProcessNetwork {
                link,
                delivered,
                inbound: tx,
            },
        )
    }
}

fn lock(link: &Mutex<Link>) -> std::sync::MutexGuard<'_, Link> {
    link.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream for InProcessUpstream {
    fn deliver(&self, message: &Outbound) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let outcome = {
            let mut link = lock(&self.link);
            if link.up {
                link.delivered.push(message.clone());
                Ok(())
            } else {
                Err(UpstreamError::LinkDown)
            }
        };
        if outcome.is_ok() {
            self.delivered.notify_waiters();
        }
        async move { outcome }.boxed()
    }

    fn inbound(&self) -> BoxStream<'static, Inbound> {
        match self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(mut rx) => futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed(),
            None => futures_util::stream::empty().boxed(),
        }
    }
}

impl InProcessNetwork {
    /// Brings the link up.
    pub fn link_up(&self) {
        lock(&self.link).up = true;
        let _ = self.inbound.send(Inbound::LinkUp);
    }

    /// Takes the link down: deliveries fail from now on.
    pub fn link_down(&self) {
        lock(&self.link).up = false;
        let _ = self.inbound.send(Inbound::LinkDown);
    }

    /// Sends a control command.
    pub fn control(&self, control: Control) {
        let _ = self.inbound.send(Inbound::Control(control));
    }

    /// Everything delivered so far, in order.
    pub fn delivered(&self) -> Vec<Outbound> {
        lock(&self.link).delivered.clone()
    }

    /// Waits until at least `n` messages were delivered; returns them all.
    pub async fn wait_delivered(&self, n: usize) -> Vec<Outbound> {
        loop {
            let notified = self.delivered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            notified.await;
        }
    }
}
