//! Non-blocking socket calls the pumps make from the worker thread once the ring has
//! said a socket is ready: vectored receive and send without copies, with the flags
//! a proxy needs (MSG_NOSIGNAL: a vanished peer is EPIPE, not a SIGPIPE that kills the
//! process). `std::io::IoSlice`/`IoSliceMut` are ABI-compatible with `struct iovec` on
//! Unix (their documentation guarantees it), so they are passed straight through.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;

/// `readv(2)` on a socket: fills the slices in order. Ok(0) is end of stream.
pub fn readv(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
    // SAFETY: IoSliceMut is guaranteed ABI-compatible with iovec; each points to memory
    // we may write for its whole length, borrowed mutably for the duration of the call.
    let n = unsafe { libc::readv(fd, bufs.as_mut_ptr().cast::<libc::iovec>(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `recv(2)` into one buffer. Ok(0) is end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `sendmsg(2)` of several slices at once, non-blocking, without SIGPIPE.
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid empty message; we then point it at the
    // caller's slices, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: `msg` describes readable memory only (IoSlice is iovec-compatible); the
    // kernel does not write through msg_iov for sendmsg.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` of one buffer, non-blocking, without SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length for the duration of the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
