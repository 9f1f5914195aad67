//! In-memory transport: two connected ends in one process.

use tokio::sync::mpsc;

use super::{FrameReceiver, FrameSender, ReceiverInner, Transport, TransportConfig};
use crate::attestation::{Attestation, TransportKind};

/// Two connected in-memory transports. Frames are handed over as they are
/// (no copy, no framing); the size limit and queue bound still apply.
pub fn memory_pair(config: &TransportConfig) -> (Transport, Transport) {
    let (a_tx, a_rx) = mpsc::channel(config.queue_frames.max(1));
    let (b_tx, b_rx) = mpsc::channel(config.queue_frames.max(1));
    let a_sender = FrameSender::new(a_tx, config.max_frame_bytes);
    let b_sender = FrameSender::new(b_tx, config.max_frame_bytes);
    let a = Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(b_rx), a_sender.clone()),
        sender: a_sender,
        attestation: Attestation::new(TransportKind::Memory),
    };
    let b = Transport {
        receiver: FrameReceiver::new(ReceiverInner::Mem(a_rx), b_sender.clone()),
        sender: b_sender,
        attestation: Attestation::new(TransportKind::Memory),
    };
    (a, b)
}
