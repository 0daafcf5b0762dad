//! A one-shot, single-thread stop signal: the worker sets it (shutdown, and later
//! revocation or expiry), and the session's pump wakes up and closes with that reason.

use std::cell::{Cell, RefCell};
use std::task::{Context, Poll, Waker};

use crate::audit::CloseReason;

/// Set once by the owner of a session, observed by its pump.
#[derive(Default)]
pub struct StopSignal {
    reason: Cell<Option<CloseReason>>,
    waker: RefCell<Option<Waker>>,
}

impl StopSignal {
    /// Asks the session to stop; the first reason wins.
    pub fn stop(&self, reason: CloseReason) {
        if self.reason.get().is_none() {
            self.reason.set(Some(reason));
        }
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get()
    }

    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        match self.reason.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
