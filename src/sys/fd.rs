//! Small descriptor helpers that need raw syscalls: the eventfd a worker waits on for
//! shutdown.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec eventfd (counter starts at 0).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a negative return is an error we report.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whoever reads it.
pub fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::from(fd.try_clone()?);
    file.write_all(&1u64.to_ne_bytes())
}
