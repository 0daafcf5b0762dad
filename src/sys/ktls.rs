//! Kernel TLS (kTLS) and splice(2): the system calls behind the kTLS pump.
//!
//! This module owns the socket options and messages of the kernel's TLS upper layer
//! protocol (`TCP_ULP "tls"`, `SOL_TLS` `TLS_TX`/`TLS_RX`, the record-type control
//! messages) and the non-blocking pipe and splice calls that move payload between two
//! sockets without it entering user space. It knows nothing about sessions: which records
//! to send and when, and what a KeyUpdate means, is `pump::ktls`'s business; rustls
//! computes every secret.
//!
//! Linux only, TLS 1.3 only, the three TLS 1.3 AEADs (AES-128-GCM, AES-256-GCM,
//! ChaCha20-Poly1305). Kernel versions matter: Debian's 6.1 has all of this except
//! re-keying (a second `TLS_TX`/`TLS_RX` fails with EBUSY before Linux 6.14).

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// TLS record content types (RFC 8446 section 5.1, "ContentType").
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_HANDSHAKE: u8 = 22;
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// Which direction of a kTLS socket a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => libc::TLS_TX,
            Direction::Rx => libc::TLS_RX,
        }
    }
}

/// Checks that this kernel can run TLS 1.3 in the kernel for every suite we negotiate.
/// On a loopback connection pair it attaches the TLS ULP and sets a (throwaway, all-zero)
/// key for each suite in both directions. The error says why not, in words an operator
/// can act on, e.g. "kernel has no TLS ULP (CONFIG_TLS) ...".
pub fn probe() -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|err| format!("cannot open a loopback listener to probe kTLS: {err}"))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot open a loopback listener to probe kTLS: {err}"))?;
    for suite in Suite::ALL {
        // Each suite needs its own socket: a key can be set only once per direction on
        // the kernels we must support.
        let _client = TcpStream::connect(addr)
            .map_err(|err| format!("cannot connect on loopback to probe kTLS: {err}"))?;
        let (server, _) = listener
            .accept()
            .map_err(|err| format!("cannot accept on loopback to probe kTLS: {err}"))?;
        attach_ulp(&server).map_err(|err| match err.raw_os_error() {
            Some(libc::ENOENT) if tls_module_installed() => {
                "kernel TLS ULP not loaded and we may not load it (run `modprobe tls`)".to_string()
            }
            Some(libc::ENOENT) => {
                "kernel has no TLS ULP (CONFIG_TLS is off and no tls module is installed)"
                    .to_string()
            }
            _ => format!("setsockopt TCP_ULP \"tls\" failed: {err}"),
        })?;
        let zeros = [0u8; 32];
        for direction in [Direction::Tx, Direction::Rx] {
            let info = CryptoInfo::from_parts(suite, &zeros[..suite.key_len()], &zeros[..12], 0)
                .map_err(|err| err.to_string())?;
            set_crypto_info(&server, direction, &info).map_err(|err| {
                format!(
                    "kernel TLS refuses TLS 1.3 {} ({direction:?}): {err}",
                    suite.name()
                )
            })?;
        }
    }
    Ok(())
}

/// Hands the TLS 1.3 connection on `fd` to the kernel: attaches the TLS ULP, then sets
/// the transmit and receive keys and sequence numbers rustls extracted after the
/// handshake. From then on the socket reads and writes plaintext; bytes already received
/// by the kernel but not yet read are decrypted with the new receive key.
pub fn enable(fd: impl AsFd, secrets: &ExtractedSecrets) -> io::Result<()> {
    let fd = fd.as_fd();
    attach_ulp(&fd)?;
    set_key(&fd, Direction::Tx, secrets.tx.0, &secrets.tx.1)?;
    set_key(&fd, Direction::Rx, secrets.rx.0, &secrets.rx.1)
}

/// Installs the receive key that follows a KeyUpdate from the peer (rustls'
/// `KernelConnection::update_rx_secret`). Linux 6.14 and later accept it; older kernels
/// answer EBUSY, and the connection cannot go on.
pub fn update_rx(fd: impl AsFd, secrets: &(u64, ConnectionTrafficSecrets)) -> io::Result<()> {
    set_key(&fd.as_fd(), Direction::Rx, secrets.0, &secrets.1)
}

/// Installs the transmit key after our own KeyUpdate was sent under the old one. Same
/// kernel limits as [`update_rx`].
pub fn update_tx(fd: impl AsFd, secrets: &(u64, ConnectionTrafficSecrets)) -> io::Result<()> {
    set_key(&fd.as_fd(), Direction::Tx, secrets.0, &secrets.1)
}

/// Reads the record at the head of a kTLS socket's receive queue, whatever its type,
/// into `buf`; returns the record type and the byte count. Use it when splice fails with
/// EINVAL (or read with EIO): the kernel then holds a record that is not application
/// data (an alert, a KeyUpdate, a NewSessionTicket). Non-blocking: EAGAIN when no record
/// is complete. At end of stream it returns `(RECORD_APPLICATION_DATA, 0)`.
///
/// `buf` should hold a whole record (16 KiB); a longer control record is an error.
pub fn recv_control(fd: impl AsFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = CmsgBuf::new();
    // SAFETY: an all-zero msghdr is valid (null pointers with zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr();
    msg.msg_controllen = CmsgBuf::LEN as _;

    // SAFETY: `msg` points at `iov` (which points into `buf`) and at `cmsg_buf`, all
    // alive and writable for the whole call, with their true lengths.
    let n = unsafe { libc::recvmsg(fd.as_fd().as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "kTLS control record truncated",
        ));
    }

    let mut record_type = RECORD_APPLICATION_DATA;
    // SAFETY: `msg` was filled in by the kernel; CMSG_FIRSTHDR/NXTHDR stay inside the
    // control buffer it describes (msg_controllen was updated by recvmsg).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/NXTHDR lies inside `cmsg_buf`.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_TLS && header.cmsg_type == libc::TLS_GET_RECORD_TYPE {
            // SAFETY: the kernel writes one byte of record type after the header.
            record_type = unsafe { *libc::CMSG_DATA(cmsg) };
        }
        // SAFETY: as above; returns null past the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((record_type, n as usize))
}

/// Sends `data` as one record of `record_type` (an alert, a handshake message) through
/// the kernel's TLS layer, encrypted with the current transmit key. Non-blocking:
/// EAGAIN when the socket's send buffer is full. A short send is an error: alerts must
/// not be split across records (RFC 8446 section 5.1).
pub fn send_control(fd: impl AsFd, record_type: u8, data: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg_buf = CmsgBuf::new();
    // SAFETY: an all-zero msghdr is valid (null pointers with zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr();
    msg.msg_controllen = CmsgBuf::LEN as _;
    // SAFETY: the control buffer is CMSG_SPACE(1) bytes, aligned for cmsghdr, so the
    // first header and its one data byte fit inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
    }

    // SAFETY: `msg` points at `iov` (which points into `data`, only read) and at
    // `cmsg_buf`, both alive for the whole call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_fd().as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "kTLS control record sent only in part",
        ));
    }
    Ok(())
}

/// Moves up to `len` bytes from `from` to `to` with splice(2), one of which must be a
/// pipe, without blocking (SPLICE_F_NONBLOCK; the sockets must be O_NONBLOCK too, since
/// the flag only covers the pipe on older kernels). Returns the count moved; 0 means end
/// of stream on `from`. EAGAIN means nothing could move now.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    // A non-blocking splice is not restarted after a signal on every kernel; a few
    // retries cover a signal storm without spinning forever.
    for _ in 0..8 {
        // SAFETY: null offsets are allowed (both ends are streams); no memory is passed.
        let n = unsafe {
            libc::splice(
                from.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                to.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Err(io::ErrorKind::Interrupted.into())
}

/// A pipe between two splices: non-blocking and close-on-exec at both ends.
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are new descriptors that only we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    /// The pipe's capacity in bytes (F_GETPIPE_SZ; 64 KiB unless changed).
    pub fn capacity(&self) -> io::Result<usize> {
        // SAFETY: F_GETPIPE_SZ takes no pointer.
        let n = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Asks for a capacity of `bytes` (rounded up to pages by the kernel, limited by
    /// /proc/sys/fs/pipe-max-size for unprivileged processes); returns the new capacity.
    pub fn set_capacity(&self, bytes: usize) -> io::Result<usize> {
        let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an integer.
        let n = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes `data` into the pipe (non-blocking; may write less).
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: `data` is valid for reads of `data.len()` bytes.
        let n = unsafe { libc::write(self.write.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A control-message buffer with room for one cmsghdr and one data byte, aligned for
/// cmsghdr (CMSG_SPACE(1) is 24 bytes on 64-bit Linux; 32 leaves slack).
#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; CmsgBuf::LEN]);

impl CmsgBuf {
    const LEN: usize = 32;

    fn new() -> CmsgBuf {
        CmsgBuf([MaybeUninit::new(0); CmsgBuf::LEN])
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }
}

/// Whether the running kernel has a loadable tls module (listed in modules.dep).
fn tls_module_installed() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let dep = format!("/lib/modules/{}/modules.dep", release.trim());
    std::fs::read_to_string(dep)
        .map(|text| text.lines().any(|line| line.contains("/net/tls/tls.ko")))
        .unwrap_or(false)
}

/// Attaches the kernel's TLS upper layer protocol to a connected TCP socket.
fn attach_ulp(fd: &impl AsFd) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: the option value points at three bytes that live for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets one direction's key, IV and record sequence number.
fn set_key(
    fd: &impl AsFd,
    direction: Direction,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> io::Result<()> {
    set_crypto_info(fd, direction, &CryptoInfo::new(seq, secrets)?)
}

fn set_crypto_info(fd: &impl AsFd, direction: Direction, info: &CryptoInfo) -> io::Result<()> {
    let (ptr, len) = info.as_raw();
    // SAFETY: `ptr` points at `len` readable bytes of `info`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_TLS,
            direction.optname(),
            ptr,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's crypto-info structure for one suite (include/uapi/linux/tls.h). The
/// TLS 1.3 IV rustls gives us (12 bytes) is split as the kernel wants it: for AES-GCM,
/// the first 4 bytes are the `salt` and the last 8 the `iv`; ChaCha20-Poly1305 takes all
/// 12 as `iv`. The record sequence number is big-endian. Key material is wiped on drop.
enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> io::Result<CryptoInfo> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                CryptoInfo::from_parts(Suite::Aes128Gcm, key.as_ref(), iv.as_ref(), seq)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                CryptoInfo::from_parts(Suite::Aes256Gcm, key.as_ref(), iv.as_ref(), seq)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                CryptoInfo::from_parts(Suite::Chacha20Poly1305, key.as_ref(), iv.as_ref(), seq)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cipher suite not supported by kernel TLS",
            )),
        }
    }

    fn from_parts(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> io::Result<CryptoInfo> {
        let rec_seq = seq.to_be_bytes();
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        Ok(match suite {
            Suite::Aes128Gcm => {
                let (salt, iv) = split_gcm_iv(iv)?;
                CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                    info: info(libc::TLS_CIPHER_AES_GCM_128),
                    iv,
                    key: fixed(key)?,
                    salt,
                    rec_seq,
                })
            }
            Suite::Aes256Gcm => {
                let (salt, iv) = split_gcm_iv(iv)?;
                CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                    info: info(libc::TLS_CIPHER_AES_GCM_256),
                    iv,
                    key: fixed(key)?,
                    salt,
                    rec_seq,
                })
            }
            Suite::Chacha20Poly1305 => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: fixed(iv)?,
                    key: fixed(key)?,
                    salt: [],
                    rec_seq,
                })
            }
        })
    }

    fn as_raw(&self) -> (*const libc::c_void, libc::socklen_t) {
        fn raw<T>(value: &T) -> (*const libc::c_void, libc::socklen_t) {
            (
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        }
        match self {
            CryptoInfo::Aes128Gcm(info) => raw(info),
            CryptoInfo::Aes256Gcm(info) => raw(info),
            CryptoInfo::Chacha20Poly1305(info) => raw(info),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        match self {
            CryptoInfo::Aes128Gcm(info) => {
                wipe(&mut info.key);
                wipe(&mut info.iv);
                wipe(&mut info.salt);
            }
            CryptoInfo::Aes256Gcm(info) => {
                wipe(&mut info.key);
                wipe(&mut info.iv);
                wipe(&mut info.salt);
            }
            CryptoInfo::Chacha20Poly1305(info) => {
                wipe(&mut info.key);
                wipe(&mut info.iv);
            }
        }
    }
}

/// Overwrites key material with zeros in a way the optimiser may not remove.
fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY: `byte` is a valid, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Splits a 12-byte TLS 1.3 AES-GCM IV into the kernel's 4-byte salt and 8-byte iv.
fn split_gcm_iv(iv: &[u8]) -> io::Result<([u8; 4], [u8; 8])> {
    if iv.len() != 12 {
        return Err(wrong_length("IV"));
    }
    Ok((fixed(&iv[..4])?, fixed(&iv[4..])?))
}

fn fixed<const N: usize>(bytes: &[u8]) -> io::Result<[u8; N]> {
    bytes.try_into().map_err(|_| wrong_length("key or IV"))
}

fn wrong_length(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} has the wrong length for its cipher suite"),
    )
}

/// The TLS 1.3 suites the kernel can run.
#[derive(Debug, Clone, Copy)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];

    fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "AES-128-GCM",
            Suite::Aes256Gcm => "AES-256-GCM",
            Suite::Chacha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn probe_says_why_when_the_kernel_cannot_do_tls() {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
        match probe() {
            Ok(()) => assert!(
                available.split_whitespace().any(|ulp| ulp == "tls"),
                "probe accepted kTLS but the kernel lists no tls ULP: {available:?}"
            ),
            Err(reason) => {
                // Shown with --nocapture: the reason an operator would read at start-up.
                eprintln!("kTLS probe on this kernel: {reason}");
                assert!(
                    reason.contains("TLS ULP") || reason.contains("kernel TLS refuses"),
                    "the refusal should name what is missing, got {reason:?}"
                );
            }
        }
    }

    #[test]
    fn aes_gcm_iv_is_split_into_salt_and_iv_and_the_sequence_is_big_endian() {
        let key: Vec<u8> = (0..16).collect();
        let iv: Vec<u8> = (100..112).collect();
        let info = CryptoInfo::from_parts(Suite::Aes128Gcm, &key, &iv, 0x0102_0304_0506_0708)
            .expect("a 16-byte key and a 12-byte IV fit AES-128-GCM");
        let CryptoInfo::Aes128Gcm(raw) = &info else {
            panic!("AES-128-GCM produced another structure");
        };
        assert_eq!(raw.info.version, 0x0304, "TLS 1.3 is version 0x0304");
        assert_eq!(raw.info.cipher_type, libc::TLS_CIPHER_AES_GCM_128);
        assert_eq!(
            raw.salt,
            [100, 101, 102, 103],
            "salt is the IV's first 4 bytes"
        );
        assert_eq!(raw.iv, [104, 105, 106, 107, 108, 109, 110, 111]);
        assert_eq!(raw.key.as_slice(), key.as_slice());
        assert_eq!(
            raw.rec_seq,
            [1, 2, 3, 4, 5, 6, 7, 8],
            "rec_seq is big-endian"
        );
    }

    #[test]
    fn chacha20_poly1305_takes_the_whole_iv_and_wrong_lengths_are_refused() {
        let info = CryptoInfo::from_parts(Suite::Chacha20Poly1305, &[7; 32], &[9; 12], 1)
            .expect("a 32-byte key and a 12-byte IV fit ChaCha20-Poly1305");
        let CryptoInfo::Chacha20Poly1305(raw) = &info else {
            panic!("ChaCha20-Poly1305 produced another structure");
        };
        assert_eq!(
            raw.iv, [9; 12],
            "ChaCha20-Poly1305 has no salt: all 12 IV bytes"
        );
        assert_eq!(raw.rec_seq, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(
            CryptoInfo::from_parts(Suite::Aes256Gcm, &[0; 16], &[0; 12], 0).is_err(),
            "a 16-byte key must not pass for AES-256-GCM"
        );
        assert!(
            CryptoInfo::from_parts(Suite::Aes128Gcm, &[0; 16], &[0; 8], 0).is_err(),
            "an 8-byte IV must be refused"
        );
    }

    #[test]
    fn splice_moves_bytes_socket_to_pipe_to_socket_and_says_eagain_when_empty() {
        let (mut a, b) = tcp_pair();
        let (c, mut d) = tcp_pair();
        b.set_nonblocking(true).unwrap();
        c.set_nonblocking(true).unwrap();
        let pipe = Pipe::new().unwrap();
        assert!(
            pipe.capacity().unwrap() >= 4096,
            "a pipe holds at least a page"
        );

        let err = splice(&b, &pipe.write, 1024).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "an empty socket must not block a non-blocking splice: {err}"
        );

        a.write_all(b"through the pipe").unwrap();
        let mut moved = 0;
        for _ in 0..1000 {
            match splice(&b, &pipe.write, 1024) {
                Ok(n) => moved += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => panic!("splice into the pipe failed: {err}"),
            }
            if moved == 16 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(moved, 16, "all 16 bytes should reach the pipe");
        assert_eq!(splice(&pipe.read, &c, moved).unwrap(), 16);
        let mut got = [0u8; 16];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the pipe", "bytes must arrive unchanged");

        drop(a);
        let mut eof = None;
        for _ in 0..1000 {
            match splice(&b, &pipe.write, 1024) {
                Ok(n) => {
                    eof = Some(n);
                    break;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(err) => panic!("splice at end of stream failed: {err}"),
            }
        }
        assert_eq!(
            eof,
            Some(0),
            "a closed peer reads as 0 bytes, end of stream"
        );
    }

    #[test]
    fn recv_control_on_a_socket_without_tls_reports_plain_data() {
        let (mut a, b) = tcp_pair();
        a.write_all(b"abc").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // Wait until the bytes are there (recv_control does not block).
        let mut peek = [0u8; 3];
        b.peek(&mut peek).unwrap();
        let mut buf = [0u8; 64];
        let (record_type, len) = recv_control(&b, &mut buf).expect("recvmsg on a TCP socket");
        assert_eq!(
            (record_type, &buf[..len]),
            (RECORD_APPLICATION_DATA, &b"abc"[..]),
            "without a TLS layer there is no record-type message: plain data"
        );
    }

    #[test]
    fn pipe_capacity_can_be_raised() {
        let pipe = Pipe::new().unwrap();
        let got = pipe.set_capacity(256 * 1024).expect("F_SETPIPE_SZ");
        assert!(got >= 256 * 1024, "asked for 256 KiB, got {got}");
        assert_eq!(pipe.capacity().unwrap(), got);
    }
}
