//! Per-thread pool of I/O buffers for the pumps.
//!
//! A session takes a buffer only while bytes are moving through it and gives it back as
//! soon as it is empty, so an idle session holds none (it waits on a multishot poll).
//! Buffers are reused, never freed on the hot path; the pool keeps at most
//! [`MAX_IDLE`] spare ones per thread, so a burst does not pin memory forever.
//! The pool is thread-local: each worker has its own, with no locking.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::tls::record::{HEADER_LEN, MAX_CIPHERTEXT, MAX_PLAINTEXT, RECORD_OVERHEAD};

/// Records per buffer: four full TLS records let one receive or one send move 64 KiB.
pub const RECORDS_PER_BUFFER: usize = 4;
/// One sealed full-size record: header, 16 KiB of plaintext, content type, tag.
pub const SEALED_SLOT: usize = MAX_PLAINTEXT + RECORD_OVERHEAD;
/// Buffer size: room for four of the largest records a peer may send.
pub const BUFFER_SIZE: usize = RECORDS_PER_BUFFER * (HEADER_LEN + MAX_CIPHERTEXT);
/// Spare buffers kept per thread (about 17 MiB).
const MAX_IDLE: usize = 256;

thread_local! {
    static IDLE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer on loan from this thread's pool; goes back when dropped.
pub struct PoolBuf(Option<Box<[u8]>>);

impl PoolBuf {
    pub fn take() -> PoolBuf {
        let buf = IDLE
            .with(|idle| idle.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        PoolBuf(Some(buf))
    }
}

impl Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                if idle.len() < MAX_IDLE {
                    idle.push(buf);
                }
            });
        }
    }
}

/// Buffers currently idle in this thread's pool (for metrics and tests).
pub fn idle_count() -> usize {
    IDLE.with(|idle| idle.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_not_reallocated() {
        let first = PoolBuf::take();
        let addr = first.as_ptr();
        drop(first);
        let again = PoolBuf::take();
        assert_eq!(
            again.as_ptr(),
            addr,
            "a returned buffer should be handed out again"
        );
        assert_eq!(again.len(), BUFFER_SIZE);
    }
}
