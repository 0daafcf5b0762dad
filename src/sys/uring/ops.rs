//! The operations the data path needs, and no more: multishot accept, connect, recv,
//! send, poll, read (for the shutdown eventfd) and timers.
//!
//! Buffers are plain `Vec<u8>` passed by value and handed back with the result, so the
//! heap memory the kernel touches is owned by the operation while it is in flight.
//! `recv` fills the vector's spare capacity (after `len`) and extends `len`; `send` sends
//! a range of the vector.

use std::future::{Future, poll_fn};
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use io_uring::{opcode, types};

use super::op::{Completable, Op};
use super::runtime::{Driver, Slot};

/// A socket (or any descriptor) used with the ring. Dropping it first hands queued
/// submissions to the kernel, so a submission naming this descriptor number is never
/// resolved after the number has been closed and reused by a new connection.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    pub fn from_owned(fd: OwnedFd) -> Socket {
        Socket { fd }
    }

    pub fn as_fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn into_owned(self) -> OwnedFd {
        // Moving out of a type with Drop needs this detour; the flush in `drop` is not
        // wanted here because the descriptor stays open.
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so reading the field out moves
        // ownership exactly once.
        unsafe { std::ptr::read(&this.fd) }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        flush_submissions();
    }
}

/// Hands queued submissions to the kernel now (no waiting). A no-op outside a runtime.
pub fn flush_submissions() {
    let _ = super::runtime::try_flush();
}

/// Result of a [`recv`] or [`read`]: bytes received (0 = end of stream) and the buffer.
pub type BufResult = (io::Result<usize>, Vec<u8>);

struct RecvData {
    fd: RawFd,
    buf: Vec<u8>,
}

impl Completable for RecvData {
    type Output = BufResult;
    fn complete(mut self, res: i32, _flags: u32) -> BufResult {
        match result(res) {
            Ok(n) => {
                let n = n as usize;
                // SAFETY: the kernel wrote `n` bytes into the spare capacity that started
                // at `len` (we passed exactly that region), so they are initialised.
                unsafe { self.buf.set_len(self.buf.len() + n) };
                (Ok(n), self.buf)
            }
            Err(err) => (Err(err), self.buf),
        }
    }
}

/// Receives into `buf`'s spare capacity. A buffer with no spare capacity is an error,
/// not a zero-length read that would look like end of stream.
pub fn recv(fd: RawFd, buf: Vec<u8>) -> BufOp {
    recv_with(fd, buf, usize::MAX, false)
}

/// Like [`recv`], reading at most `limit` bytes: the handshake reads exactly one TLS
/// record at a time, so that nothing past it leaves the socket.
pub fn recv_limit(fd: RawFd, buf: Vec<u8>, limit: usize) -> BufOp {
    recv_with(fd, buf, limit, false)
}

/// Like [`recv`] for a plain descriptor (an eventfd, a pipe): uses IORING_OP_READ.
pub fn read(fd: RawFd, buf: Vec<u8>) -> BufOp {
    recv_with(fd, buf, usize::MAX, true)
}

fn recv_with(fd: RawFd, buf: Vec<u8>, limit: usize, plain_read: bool) -> BufOp {
    let op = if buf.capacity() == buf.len() {
        Err((
            io::Error::new(io::ErrorKind::InvalidInput, "recv into a full buffer"),
            buf,
        ))
    } else {
        let data = RecvData { fd, buf };
        // SAFETY: the entry points into `data.buf`'s heap allocation, which `RecvData`
        // owns and which does not move with it.
        let op = unsafe {
            Op::submit(data, |d| {
                let spare = (d.buf.capacity() - d.buf.len()).min(limit);
                // SAFETY (pointer arithmetic): `len <= capacity`, so the start of the spare
                // region is inside (or one past) the allocation.
                let ptr = d.buf.as_ptr().wrapping_add(d.buf.len()) as *mut u8;
                let len = u32::try_from(spare).unwrap_or(u32::MAX);
                if plain_read {
                    opcode::Read::new(types::Fd(d.fd), ptr, len).build()
                } else {
                    opcode::Recv::new(types::Fd(d.fd), ptr, len).build()
                }
            })
        };
        op.map_err(|(err, data)| (err, data.buf))
    };
    match op {
        Ok(op) => BufOp(BufOpInner::Recv(op)),
        Err(failed) => BufOp(BufOpInner::Failed(Some(failed))),
    }
}

struct SendData {
    buf: Vec<u8>,
}

impl Completable for SendData {
    type Output = BufResult;
    fn complete(self, res: i32, _flags: u32) -> BufResult {
        (result(res).map(|n| n as usize), self.buf)
    }
}

/// Sends `buf[range]` (possibly only part of it: check the count). MSG_NOSIGNAL, so a
/// peer that went away is an EPIPE error, not a SIGPIPE that kills the process.
pub fn send(fd: RawFd, buf: Vec<u8>, range: Range<usize>) -> BufOp {
    let op = if range.start > range.end || range.end > buf.len() {
        Err((
            io::Error::new(io::ErrorKind::InvalidInput, "send range out of bounds"),
            buf,
        ))
    } else {
        // SAFETY: the entry points into `data.buf`'s heap allocation, owned by `SendData`.
        let op = unsafe {
            Op::submit(SendData { buf }, |d| {
                let ptr = d.buf[range.clone()].as_ptr();
                let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
                opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            })
        };
        op.map_err(|(err, data)| (err, data.buf))
    };
    match op {
        Ok(op) => BufOp(BufOpInner::Send(op)),
        Err(failed) => BufOp(BufOpInner::Failed(Some(failed))),
    }
}

/// A receive or send in flight: a named future (no boxing) that yields [`BufResult`].
/// Dropping it cancels the operation (see `op`).
pub struct BufOp(BufOpInner);

enum BufOpInner {
    Recv(Op<RecvData>),
    Send(Op<SendData>),
    /// The ring refused the submission; the error and the buffer come back on first poll.
    Failed(Option<(io::Error, Vec<u8>)>),
}

impl Future for BufOp {
    type Output = BufResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BufResult> {
        match &mut self.0 {
            BufOpInner::Recv(op) => Pin::new(op).poll(cx),
            BufOpInner::Send(op) => Pin::new(op).poll(cx),
            BufOpInner::Failed(failed) => match failed.take() {
                Some((err, buf)) => Poll::Ready((Err(err), buf)),
                None => Poll::Pending,
            },
        }
    }
}

/// Sends all of `buf[range]`, looping over short sends.
pub async fn send_all(fd: RawFd, mut buf: Vec<u8>, range: Range<usize>) -> BufResult {
    let mut start = range.start;
    while start < range.end {
        let (res, b) = send(fd, buf, start..range.end).await;
        buf = b;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => start += n,
            Err(err) => return (Err(err), buf),
        }
    }
    (Ok(range.len()), buf)
}

struct ConnectData {
    addr: Box<socket2::SockAddr>,
}

impl Completable for ConnectData {
    type Output = io::Result<()>;
    fn complete(self, res: i32, _flags: u32) -> io::Result<()> {
        result(res).map(|_| ())
    }
}

/// Connects `fd` to `addr` (TCP or unix).
pub async fn connect(fd: RawFd, addr: socket2::SockAddr) -> io::Result<()> {
    let data = ConnectData {
        addr: Box::new(addr),
    };
    // SAFETY: the entry points at the boxed address, owned by `ConnectData`.
    let op = unsafe {
        Op::submit(data, |d| {
            opcode::Connect::new(types::Fd(fd), d.addr.as_ptr().cast(), d.addr.len()).build()
        })
    }
    .map_err(|(err, _)| err)?;
    op.await
}

struct PollData;

impl Completable for PollData {
    type Output = io::Result<u32>;
    fn complete(self, res: i32, _flags: u32) -> io::Result<u32> {
        result(res)
    }
}

/// Waits once until `fd` is ready for `events` (POLLIN, POLLOUT, ...); yields the
/// events. A named future, so a pump can keep one in a field without boxing.
pub fn poll(fd: RawFd, events: i16) -> PollOnce {
    // SAFETY: a poll entry points at no memory.
    let op = unsafe {
        Op::submit(PollData, |_| {
            opcode::PollAdd::new(types::Fd(fd), events as u16 as u32).build()
        })
    };
    PollOnce(op.map_err(|(err, _)| Some(err)))
}

/// The future of [`poll`]. Dropping it cancels the poll.
pub struct PollOnce(Result<Op<PollData>, Option<io::Error>>);

impl Future for PollOnce {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
        match &mut self.0 {
            Ok(op) => Pin::new(op).poll(cx),
            Err(err) => match err.take() {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
        }
    }
}

struct SleepData {
    ts: Box<types::Timespec>,
}

impl Completable for SleepData {
    type Output = ();
    fn complete(self, _res: i32, _flags: u32) {}
}

/// Completes after `duration`. A ring timer: no thread, no timer wheel of our own.
pub async fn sleep(duration: Duration) {
    let ts = types::Timespec::new()
        .sec(duration.as_secs())
        .nsec(duration.subsec_nanos());
    let data = SleepData { ts: Box::new(ts) };
    // SAFETY: the entry points at the boxed timespec, owned by `SleepData`.
    let op = unsafe { Op::submit(data, |d| opcode::Timeout::new(&*d.ts as *const _).build()) };
    match op {
        Ok(op) => op.await,
        // The ring refused a timer: fall back to yielding rather than spinning forever.
        Err(_) => super::runtime::yield_now().await,
    }
}

/// The error returned by [`timeout`] when the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` for at most `duration`. On timeout the future is dropped, which cancels
/// whatever operation it was waiting on.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep(duration));
    poll_fn(|cx| {
        if let Poll::Ready(value) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    })
    .await
}

/// A multishot accept on one listening socket: one submission, a completion per
/// connection. If the kernel ends the multishot (it may, e.g. under memory pressure),
/// the next call re-arms it.
pub struct Incoming {
    driver: Rc<Driver>,
    listener: RawFd,
    id: Option<usize>,
}

impl Incoming {
    /// Must be called inside the runtime; `listener` must outlive the `Incoming`.
    pub fn new(listener: RawFd) -> Incoming {
        Incoming {
            driver: Driver::with_current(|d| d.clone()),
            listener,
            id: None,
        }
    }

    /// The next accepted connection, or the accept error (EMFILE, ENFILE, ...).
    pub async fn next(&mut self) -> io::Result<Socket> {
        poll_fn(|cx| {
            let id = match self.id {
                Some(id) => id,
                None => match self.arm() {
                    Ok(id) => id,
                    Err(err) => return Poll::Ready(Err(err)),
                },
            };
            let mut slots = self.driver.slots.borrow_mut();
            let Some(Slot::Multi {
                waker,
                results,
                armed,
            }) = slots.get_mut(id)
            else {
                return Poll::Ready(Err(io::Error::other("accept slot lost")));
            };
            if let Some((res, _flags)) = results.pop_front() {
                return Poll::Ready(result(res).map(|fd| {
                    // SAFETY: a non-negative accept result is a new descriptor we now own.
                    Socket::from_owned(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
                }));
            }
            if !*armed {
                // The kernel ended this multishot: free the slot and re-arm on next poll.
                slots.remove(id);
                self.id = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            *waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn arm(&mut self) -> io::Result<usize> {
        let id = self.driver.insert_slot(Slot::Multi {
            waker: None,
            results: Default::default(),
            armed: true,
        });
        let sqe = opcode::AcceptMulti::new(types::Fd(self.listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(id as u64);
        if let Err(err) = self.driver.push(&sqe) {
            self.driver.slots.borrow_mut().remove(id);
            return Err(err);
        }
        self.id = Some(id);
        Ok(id)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let mut slots = self.driver.slots.borrow_mut();
        let Some(Slot::Multi { results, armed, .. }) = slots.get_mut(id) else {
            return;
        };
        // Connections accepted but never collected: nobody will serve them.
        for (res, _) in results.drain(..) {
            if res >= 0 {
                // SAFETY: an accepted descriptor that no one took ownership of.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
        }
        if *armed {
            slots[id] = Slot::Orphaned {
                _keep: Box::new(()),
                close_fds: true,
            };
            drop(slots);
            self.driver.cancel(id);
        } else {
            slots.remove(id);
        }
    }
}

/// A multishot poll: one submission that reports every readiness change of `fd` for
/// `events` until dropped. The pumps wait on it and then call non-blocking syscalls
/// (recv, send, splice) from the worker thread; an idle session thus holds no buffer,
/// only this submission. If the kernel ends the multishot, the next call re-arms it.
pub struct PollMulti {
    driver: Rc<Driver>,
    fd: RawFd,
    events: u32,
    id: Option<usize>,
}

impl PollMulti {
    /// Must be called inside the runtime; `fd` must outlive the `PollMulti`.
    pub fn new(fd: RawFd, events: i16) -> PollMulti {
        PollMulti {
            driver: Driver::with_current(|d| d.clone()),
            fd,
            events: events as u16 as u32,
            id: None,
        }
    }

    /// Polls for the next readiness report: the `revents` bits, or the poll's error.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
        let id = match self.id {
            Some(id) => id,
            None => match self.arm() {
                Ok(id) => id,
                Err(err) => return Poll::Ready(Err(err)),
            },
        };
        let mut slots = self.driver.slots.borrow_mut();
        let Some(Slot::Multi {
            waker,
            results,
            armed,
        }) = slots.get_mut(id)
        else {
            return Poll::Ready(Err(io::Error::other("poll slot lost")));
        };
        // Several reports may have queued up; all say "look at the socket", so one
        // is as good as all of them.
        let mut ready = None;
        while let Some((res, _flags)) = results.pop_front() {
            ready = Some(match (ready, result(res)) {
                (Some(Ok(a)), Ok(b)) => Ok(a | b),
                (_, r) => r,
            });
        }
        if let Some(ready) = ready {
            if !*armed {
                slots.remove(id);
                self.id = None;
            }
            return Poll::Ready(ready);
        }
        if !*armed {
            slots.remove(id);
            self.id = None;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        *waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn arm(&mut self) -> io::Result<usize> {
        let id = self.driver.insert_slot(Slot::Multi {
            waker: None,
            results: Default::default(),
            armed: true,
        });
        let sqe = opcode::PollAdd::new(types::Fd(self.fd), self.events)
            .multi(true)
            .build()
            .user_data(id as u64);
        if let Err(err) = self.driver.push(&sqe) {
            self.driver.slots.borrow_mut().remove(id);
            return Err(err);
        }
        self.id = Some(id);
        Ok(id)
    }
}

impl Drop for PollMulti {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let mut slots = self.driver.slots.borrow_mut();
        let Some(Slot::Multi { armed, .. }) = slots.get(id) else {
            return;
        };
        if *armed {
            slots[id] = Slot::Orphaned {
                _keep: Box::new(()),
                close_fds: false,
            };
            drop(slots);
            self.driver.cancel(id);
        } else {
            slots.remove(id);
        }
    }
}

/// Turns a completion result into a count or the errno it carries.
fn result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}
