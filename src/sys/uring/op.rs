//! One io_uring operation as a future that owns its memory.
//!
//! The rule that makes io_uring safe to use from Rust: the kernel may read or write an
//! operation's buffers until its completion arrives, whatever happens to the future. So an
//! [`Op`] owns everything its submission points into (buffers, addresses, timespecs) on
//! the heap. Dropping an `Op` before it completes queues an IORING_OP_ASYNC_CANCEL and
//! parks the memory in the slot until the kernel reports the final completion; only then
//! is it freed. A result that had already completed when the future was dropped is simply
//! discarded along with it, which is why callers that must not lose data (the pump) keep
//! their receive futures alive rather than drop them on a timer.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::squeue;

use super::runtime::{Driver, Slot};

/// What an operation keeps alive and how it turns the completion into a result.
pub(crate) trait Completable: 'static {
    type Output;
    fn complete(self, res: i32, flags: u32) -> Self::Output;
}

/// A submitted single-shot operation.
pub(crate) struct Op<T: Completable> {
    driver: Rc<Driver>,
    id: usize,
    data: Option<T>,
}

impl<T: Completable> Op<T> {
    /// Builds the submission from `data` and queues it. If the ring refuses it, `data`
    /// comes back with the error so that no buffer is lost.
    ///
    /// # Safety
    ///
    /// Every pointer that `build` puts into the entry must point into heap memory owned by
    /// `data` (a `Vec`'s buffer, a `Box`), so that it stays put when `data` moves into the
    /// `Op` and, if the `Op` is dropped early, into the orphaned slot.
    pub(crate) unsafe fn submit(
        data: T,
        build: impl FnOnce(&T) -> squeue::Entry,
    ) -> Result<Op<T>, (std::io::Error, T)> {
        Driver::with_current(|driver| {
            let id = driver.insert_slot(Slot::Waiting(None));
            let sqe = build(&data).user_data(id as u64);
            if let Err(err) = driver.push(&sqe) {
                driver.slots.borrow_mut().remove(id);
                return Err((err, data));
            }
            Ok(Op {
                driver: driver.clone(),
                id,
                data: Some(data),
            })
        })
    }
}

impl<T: Completable + Unpin> Future for Op<T> {
    type Output = T::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = &mut *self;
        let mut slots = this.driver.slots.borrow_mut();
        let slot = &mut slots[this.id];
        match slot {
            Slot::Done(res, flags) => {
                let (res, flags) = (*res, *flags);
                slots.remove(this.id);
                drop(slots);
                match this.data.take() {
                    Some(data) => Poll::Ready(data.complete(res, flags)),
                    // Polled again after completion: a caller bug; never resolve twice.
                    None => Poll::Pending,
                }
            }
            Slot::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Multi { .. } | Slot::Orphaned { .. } => Poll::Pending,
        }
    }
}

impl<T: Completable> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        let mut slots = self.driver.slots.borrow_mut();
        match slots.get(self.id) {
            Some(Slot::Done(..)) => {
                slots.remove(self.id);
            }
            Some(Slot::Waiting(_)) => {
                slots[self.id] = Slot::Orphaned {
                    _keep: Box::new(data),
                    close_fds: false,
                };
                drop(slots);
                self.driver.cancel(self.id);
            }
            _ => {}
        }
    }
}
