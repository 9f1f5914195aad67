//! The per-thread buffer values and frames are encoded in before they are
//! copied out at their exact size.
//!
//! Encoding into a buffer of its own grows that buffer step by step, and a
//! `Bytes` made from a buffer with room to spare allocates a second header
//! to share it. Writing into a buffer kept per thread and copying the result
//! out costs one exact allocation and a copy, which for the small values and
//! frames of the call path is cheaper.

use std::cell::Cell;

use bytes::{Bytes, BytesMut};

thread_local! {
    static SCRATCH: Cell<BytesMut> = Cell::new(BytesMut::new());
}

/// A scratch buffer grown past this is given back after use.
const MAX_KEPT: usize = 1 << 20;

/// Runs `write` on an empty per-thread buffer and returns what it wrote,
/// copied out at its size. The buffer is taken out of its slot while
/// `write` runs, so an encoding that encodes another value inside (or one
/// made while the thread's locals are torn down) simply gets a fresh buffer.
pub(crate) fn encode_exact<E>(
    write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Bytes, E> {
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    let written = write(&mut buf).map(|()| Bytes::copy_from_slice(&buf));
    if buf.capacity() <= MAX_KEPT {
        let _ = SCRATCH.try_with(|slot| slot.set(buf));
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Nested use gets its own buffer; both results are whole and exact.
    #[test]
    fn nested_encodings_do_not_share_a_buffer() {
        let outer = encode_exact(|out| {
            out.put_slice(b"outer:");
            let inner = encode_exact(|inner| {
                inner.put_slice(b"inner");
                Ok::<_, ()>(())
            })?;
            out.put_slice(&inner);
            Ok::<_, ()>(())
        })
        .expect("encodes");
        assert_eq!(&outer[..], b"outer:inner");
        assert_eq!(outer.len(), 11);
        let again = encode_exact(|out| {
            out.put_slice(b"x");
            Ok::<_, ()>(())
        })
        .expect("encodes");
        assert_eq!(&again[..], b"x", "the buffer starts empty");
        let failed = encode_exact(|out| {
            out.put_slice(b"half");
            Err::<(), _>("no")
        });
        assert_eq!(failed, Err("no"));
    }
}
