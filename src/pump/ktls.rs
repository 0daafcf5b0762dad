//! The kernel TLS pump: once rustls has finished the handshake and the kernel holds the
//! traffic keys (`hand_off`), bytes move socket → pipe → socket with non-blocking
//! splice(2), so the payload never enters user space, in both directions, until both
//! have finished, a side fails, or the session is told to stop.
//!
//! The worker thread makes every splice call itself, when a multishot poll on the ring
//! says a socket is ready; IORING_OP_SPLICE is not used because the kernel runs it on an
//! io-wq thread, one per waiting splice (docs/design.md, "The data path"). Each
//! direction owns a pipe and alternates: fill the pipe from its source, drain it into
//! its destination, until the source is empty or the destination full. A direction
//! stalled on a full destination reads nothing more, which is the backpressure.
//!
//! Records that are not application data stop the kernel's splice (EINVAL) at the head
//! of the receive queue; they are read with `recvmsg` and handled here: close_notify ends
//! the direction, other alerts end the session, a KeyUpdate installs the next receive
//! key (and, if asked, sends ours and installs the next transmit key), and a
//! NewSessionTicket goes to rustls on the client side. Kernels before Linux 6.14 cannot
//! take new keys: a KeyUpdate there ends the session cleanly, with close_notify and
//! [`CloseReason::KeyUpdateUnsupported`]. rustls computes every secret; `sys::ktls` does
//! the system calls.

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::task::Poll;

use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use socket2::SockRef;

use super::stop::StopSignal;
use super::userspace::{PumpEnd, PumpError, PumpStats, Side};
use crate::audit::CloseReason;
use crate::sys::ktls::{self, Pipe};
use crate::sys::uring::{self, PollMulti, Socket};
use crate::tls::record::{RecordError, TicketSink};

/// Fill-and-drain rounds one direction may run per wake-up before the worker yields to
/// its other sessions; with 64 KiB pipes that is up to 1 MiB at a time.
const ROUNDS_PER_WAKE: usize = 16;

/// Splices into the pipe per round. Each moves at least one byte or stops the round,
/// and a kTLS socket gives one record per call, so four fill a 64 KiB pipe.
const FILLS_PER_ROUND: usize = 16;

/// Non-data records handled per wake-up before yielding (a peer could send many).
const CONTROL_RECORDS_PER_WAKE: usize = 16;

/// Room for the largest record plaintext the kernel hands back (2^14 bytes, RFC 8446
/// section 5.1) with slack.
const CONTROL_CAPACITY: usize = 16 * 1024 + 256;

/// What each socket's multishot poll watches. POLLRDHUP because the kernel's TLS layer
/// hides POLLIN while no whole record is queued, which includes end of stream.
const POLL_EVENTS: i16 = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP;

/// Alert levels and the descriptions we act on (RFC 8446 section 6).
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// Handshake message types that may follow the handshake (RFC 8446 section 4).
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Our KeyUpdate answer: msg_type, a 24-bit length of 1, update_not_requested.
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// What the pump needs from rustls after the hand-off: the next traffic secrets when
/// either side re-keys, and somewhere to put session tickets (client side). rustls'
/// `KernelConnection` is the real one; tests use stand-ins.
pub trait KernelKeys {
    fn next_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn next_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error>;
}

impl<D> KernelKeys for KernelConnection<D>
where
    KernelConnection<D>: TicketSink,
{
    fn next_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }

    fn next_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }

    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error> {
        TicketSink::new_session_ticket(self, payload)
    }
}

/// Hands the finished TLS 1.3 connection on `sock` to the kernel (see
/// `sys::ktls::enable`). Takes the secrets by value: they are wiped when this returns.
/// On error the socket is unusable for TLS (the kernel may hold one direction's key);
/// close it.
///
/// Known gap: from here on nobody counts records against the AEAD's usage limit (for
/// AES-GCM about 2^24.5 records per key). The kernel does not, and this pump starts no
/// KeyUpdate of its own; the userspace record layer does (docs/limitations.md).
pub fn hand_off(sock: &Socket, secrets: ExtractedSecrets) -> io::Result<()> {
    ktls::enable(sock.as_fd(), &secrets)
}

/// Last words on a socket already handed to the kernel: `message` (a PostgreSQL
/// ErrorResponse, say) as application data, which the kernel encrypts, then
/// close_notify and a write shutdown.
pub async fn farewell(sock: &Socket, message: Vec<u8>) -> io::Result<()> {
    let len = message.len();
    let (res, _) = uring::send_all(sock.as_raw_fd(), message, 0..len).await;
    res?;
    ktls::send_control(
        sock.as_fd(),
        ktls::RECORD_ALERT,
        &[ALERT_WARNING, CLOSE_NOTIFY],
    )?;
    let _ = SockRef::from(sock.as_fd()).shutdown(Shutdown::Write);
    Ok(())
}

/// Moves bytes between `tls` (already handed to the kernel with [`hand_off`]) and
/// `plain` until both directions are done, a side fails, or `stop` is signalled. On a
/// stop (including a KeyUpdate this kernel cannot follow) it sends close_notify; on a
/// TLS error of the peer's making it sends the matching alert. Both sockets are put in
/// non-blocking mode.
pub async fn pump_ktls<K: KernelKeys>(
    tls: &Socket,
    kernel: &mut K,
    plain: &Socket,
    stop: &StopSignal,
) -> (PumpEnd, PumpStats) {
    let mut pump = match KtlsPump::new(tls, kernel, plain) {
        Ok(pump) => pump,
        Err(end) => return (end, PumpStats::default()),
    };
    let end = pump.run(stop).await;
    match &end {
        PumpEnd::Stopped(_) => pump.send_close_notify(),
        PumpEnd::Failed {
            side: Side::Tls,
            error: PumpError::Record(err),
        } => {
            if let Some(alert) = err.alert() {
                // A record that failed authentication leaves its error on the socket
                // (the kernel's tls_err_abort), and every later send would fail with it;
                // reading it with SO_ERROR clears it, so that the alert can go out.
                let _ = SockRef::from(tls.as_fd()).take_error();
                let _ = ktls::send_control(tls.as_fd(), ktls::RECORD_ALERT, &[ALERT_FATAL, alert]);
            }
        }
        _ => {}
    }
    (end, pump.stats())
}

/// One direction: a source socket, a pipe, a destination socket.
struct Flow {
    pipe: Pipe,
    capacity: usize,
    /// Bytes in the pipe, not yet spliced to the destination.
    in_pipe: usize,
    /// The source will send nothing more (end of stream, reset, close_notify).
    eof: bool,
    /// The end was passed on (shutdown, or close_notify then shutdown).
    finished: bool,
    /// Hints from the ring: the source may have data, the destination may take some.
    /// Cleared by EAGAIN, set by poll reports.
    readable: bool,
    writable: bool,
    /// Payload bytes delivered to the destination.
    moved: u64,
}

/// Why a direction stopped moving for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Waiting for the source to have data.
    Read,
    /// Waiting for the destination to take data.
    Write,
    /// The source ended and the pipe is empty.
    Eof,
    /// Its share of this wake-up is used up; more may be ready.
    Budget,
}

/// A failed splice, by which end failed.
enum FlowError {
    Read(io::Error),
    Write(io::Error),
}

impl Flow {
    fn new() -> io::Result<Flow> {
        let pipe = Pipe::new()?;
        // The default 64 KiB holds four full records. A bigger pipe would not move
        // bytes faster here (each kTLS splice is one record) and costs memory per
        // session while data waits.
        let capacity = pipe.capacity()?;
        Ok(Flow {
            pipe,
            capacity,
            in_pipe: 0,
            eof: false,
            finished: false,
            readable: true,
            writable: true,
            moved: 0,
        })
    }

    /// Moves bytes from `src` to `dst` until one of them blocks, the source ends, or the
    /// round budget is used.
    fn advance(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<Stall, FlowError> {
        for _ in 0..ROUNDS_PER_WAKE {
            self.fill(src).map_err(FlowError::Read)?;
            self.drain(dst).map_err(FlowError::Write)?;
            if self.in_pipe > 0 {
                return Ok(Stall::Write);
            }
            if self.eof {
                return Ok(Stall::Eof);
            }
            if !self.readable {
                return Ok(Stall::Read);
            }
        }
        Ok(Stall::Budget)
    }

    /// Splices from the source into the pipe while both allow. EAGAIN with an empty pipe
    /// means the source is empty; with bytes in the pipe it may only mean the pipe is
    /// full (it counts buffers, not bytes), so the source is tried again once drained.
    fn fill(&mut self, src: BorrowedFd<'_>) -> io::Result<()> {
        for _ in 0..FILLS_PER_ROUND {
            if !self.readable || self.eof || self.in_pipe >= self.capacity {
                return Ok(());
            }
            match ktls::splice(src, self.pipe.write.as_fd(), self.capacity - self.in_pipe) {
                Ok(0) => self.eof = true,
                Ok(n) => self.in_pipe += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if self.in_pipe == 0 {
                        self.readable = false;
                    }
                    return Ok(());
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Splices from the pipe into the destination until the pipe is empty or the
    /// destination is full. Bounded: each call moves at least one byte or stops.
    fn drain(&mut self, dst: BorrowedFd<'_>) -> io::Result<()> {
        for _ in 0..=FILLS_PER_ROUND {
            if self.in_pipe == 0 || !self.writable {
                return Ok(());
            }
            match ktls::splice(self.pipe.read.as_fd(), dst, self.in_pipe) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.in_pipe -= n;
                    self.moved += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Forgets what is in the pipe: its destination is gone. The pipe is closed with the
    /// session, so the bytes need not be read out.
    fn discard(&mut self) {
        self.in_pipe = 0;
        self.eof = true;
    }
}

/// What the pump does after a round of syscalls.
enum Next {
    /// Every direction is blocked: wait for the ring.
    Wait,
    /// Some direction used its budget: let other sessions run, then go on.
    Yield,
    /// Both directions finished.
    Done,
}

struct KtlsPump<'a, K> {
    tls: &'a Socket,
    plain: &'a Socket,
    kernel: &'a mut K,
    /// TLS side → plain side (decrypted by the kernel).
    from_tls: Flow,
    /// Plain side → TLS side (encrypted by the kernel).
    to_tls: Flow,
    /// Buffer for non-data records; allocated on first use, since most sessions never
    /// see one.
    control: Vec<u8>,
    /// The peer asked us to re-key: our KeyUpdate must go out before any more data.
    key_update_due: bool,
    /// Our transmit key no longer matches what the peer expects (a KeyUpdate went out
    /// but the new key could not be installed): send nothing more.
    tx_broken: bool,
    close_notify_sent: bool,
    first_close: Option<Side>,
}

impl<'a, K: KernelKeys> KtlsPump<'a, K> {
    fn new(tls: &'a Socket, kernel: &'a mut K, plain: &'a Socket) -> Result<Self, PumpEnd> {
        for (sock, side) in [(tls, Side::Tls), (plain, Side::Plain)] {
            // splice(2) honours O_NONBLOCK on the socket end; SPLICE_F_NONBLOCK alone
            // does not cover it on every kernel we support.
            SockRef::from(sock.as_fd())
                .set_nonblocking(true)
                .map_err(|err| failed(side, err))?;
        }
        // A pipe that cannot be made is our shortage (descriptors), not the peer's; it is
        // reported against the plain side so that it is not mistaken for a TLS problem.
        let from_tls = Flow::new().map_err(|err| failed(Side::Plain, err))?;
        let to_tls = Flow::new().map_err(|err| failed(Side::Plain, err))?;
        Ok(KtlsPump {
            tls,
            plain,
            kernel,
            from_tls,
            to_tls,
            control: Vec::new(),
            key_update_due: false,
            tx_broken: false,
            close_notify_sent: false,
            first_close: None,
        })
    }

    fn stats(&self) -> PumpStats {
        PumpStats {
            from_tls: self.from_tls.moved,
            to_tls: self.to_tls.moved,
        }
    }

    async fn run(&mut self, stop: &StopSignal) -> PumpEnd {
        let mut tls_ready = PollMulti::new(self.tls.as_raw_fd(), POLL_EVENTS);
        let mut plain_ready = PollMulti::new(self.plain.as_raw_fd(), POLL_EVENTS);
        loop {
            match self.advance() {
                Err(end) => return end,
                Ok(Next::Done) => {
                    return PumpEnd::Closed {
                        first: self.first_close.unwrap_or(Side::Tls),
                    };
                }
                Ok(Next::Yield) => {
                    uring::yield_now().await;
                    if let Some(reason) = stop.reason() {
                        return PumpEnd::Stopped(reason);
                    }
                    continue;
                }
                Ok(Next::Wait) => {}
            }

            // Sleep until the ring reports readiness on either socket, or a stop.
            let woke = poll_fn(|cx| {
                if let Poll::Ready(reason) = stop.poll_stopped(cx) {
                    return Poll::Ready(Err(PumpEnd::Stopped(reason)));
                }
                let tls = tls_ready.poll_next(cx);
                let plain = plain_ready.poll_next(cx);
                if tls.is_pending() && plain.is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Ok((tls, plain)))
            })
            .await;
            let (tls, plain) = match woke {
                Ok(reports) => reports,
                Err(end) => return end,
            };
            if let Poll::Ready(report) = tls {
                let revents = report.map_err(|err| failed(Side::Tls, err));
                match revents {
                    Ok(revents) => self.on_tls_ready(revents),
                    Err(end) => return end,
                }
            }
            if let Poll::Ready(report) = plain {
                match report {
                    Ok(revents) => self.on_plain_ready(revents),
                    Err(err) => return failed(Side::Plain, err),
                }
            }
        }
    }

    fn on_tls_ready(&mut self, revents: u32) {
        if revents & (in_events() | problem_events()) != 0 {
            self.from_tls.readable = true;
        }
        if revents & (libc::POLLOUT as u32 | problem_events()) != 0 {
            self.to_tls.writable = true;
        }
    }

    fn on_plain_ready(&mut self, revents: u32) {
        if revents & (in_events() | problem_events()) != 0 {
            self.to_tls.readable = true;
        }
        if revents & (libc::POLLOUT as u32 | problem_events()) != 0 {
            self.from_tls.writable = true;
        }
    }

    /// Runs both directions as far as they go now.
    fn advance(&mut self) -> Result<Next, PumpEnd> {
        let from_tls = self.advance_from_tls()?;
        let to_tls = self.advance_to_tls()?;
        if self.from_tls.finished && self.to_tls.finished {
            return Ok(Next::Done);
        }
        if from_tls == Stall::Budget || to_tls == Stall::Budget {
            return Ok(Next::Yield);
        }
        Ok(Next::Wait)
    }

    /// TLS side → plain side, handling the non-data records the kernel stops at.
    fn advance_from_tls(&mut self) -> Result<Stall, PumpEnd> {
        let (tls, plain) = (self.tls.as_fd().as_fd(), self.plain.as_fd().as_fd());
        for _ in 0..CONTROL_RECORDS_PER_WAKE {
            if self.from_tls.finished {
                return Ok(Stall::Eof);
            }
            match self.from_tls.advance(tls, plain) {
                Ok(Stall::Eof) => {
                    self.first_close.get_or_insert(Side::Tls);
                    // A plain peer that already closed makes this fail; the direction is
                    // finished either way.
                    let _ = SockRef::from(self.plain.as_fd()).shutdown(Shutdown::Write);
                    self.from_tls.finished = true;
                    return Ok(Stall::Eof);
                }
                Ok(stall) => return Ok(stall),
                Err(FlowError::Read(err)) if is_control_record(&err) => {
                    // The record waits at the head of the queue; what was spliced before
                    // it goes first, so that the order of the stream is kept.
                    self.from_tls
                        .drain(plain)
                        .map_err(|err| failed(Side::Plain, err))?;
                    if self.from_tls.in_pipe > 0 {
                        return Ok(Stall::Write);
                    }
                    self.read_control()?;
                }
                Err(FlowError::Read(err)) if is_reset(&err) => self.from_tls.eof = true,
                Err(FlowError::Read(err)) => return Err(tls_read_failed(err)),
                // The plain peer is gone after saying goodbye: nothing more can reach it.
                Err(FlowError::Write(_)) if self.to_tls.eof => self.from_tls.discard(),
                Err(FlowError::Write(err)) => return Err(failed(Side::Plain, err)),
            }
        }
        Ok(Stall::Budget)
    }

    /// Plain side → TLS side; our KeyUpdate first if one is due, close_notify last.
    fn advance_to_tls(&mut self) -> Result<Stall, PumpEnd> {
        let (tls, plain) = (self.tls.as_fd().as_fd(), self.plain.as_fd().as_fd());
        // Two passes at most: a reset on the plain side turns into end of stream.
        for _ in 0..2 {
            if self.to_tls.finished {
                return Ok(Stall::Eof);
            }
            if self.key_update_due {
                self.send_key_update()?;
                if self.key_update_due {
                    return Ok(Stall::Write);
                }
            }
            match self.to_tls.advance(plain, tls) {
                Ok(Stall::Eof) => {
                    self.first_close.get_or_insert(Side::Plain);
                    return self.finish_to_tls();
                }
                Ok(stall) => return Ok(stall),
                Err(FlowError::Read(err)) if is_reset(&err) => self.to_tls.eof = true,
                Err(FlowError::Read(err)) => return Err(failed(Side::Plain, err)),
                // The TLS peer is gone after saying goodbye: nothing more can reach it.
                Err(FlowError::Write(_)) if self.from_tls.eof => {
                    self.to_tls.discard();
                    self.to_tls.finished = true;
                    self.close_notify_sent = true;
                    return Ok(Stall::Eof);
                }
                Err(FlowError::Write(err)) => return Err(failed(Side::Tls, err)),
            }
        }
        Ok(Stall::Budget)
    }

    /// The plain side ended and everything it sent is out: close_notify, then FIN.
    fn finish_to_tls(&mut self) -> Result<Stall, PumpEnd> {
        if !self.close_notify_sent {
            let alert = [ALERT_WARNING, CLOSE_NOTIFY];
            match ktls::send_control(self.tls.as_fd(), ktls::RECORD_ALERT, &alert) {
                Ok(()) => self.close_notify_sent = true,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.to_tls.writable = false;
                    return Ok(Stall::Write);
                }
                // The TLS peer left first; it cannot hear the alert.
                Err(_) if self.from_tls.eof => self.close_notify_sent = true,
                Err(err) => return Err(failed(Side::Tls, err)),
            }
        }
        let _ = SockRef::from(self.tls.as_fd()).shutdown(Shutdown::Write);
        self.to_tls.finished = true;
        Ok(Stall::Eof)
    }

    /// Reads and acts on the non-data record at the head of the TLS socket's queue.
    fn read_control(&mut self) -> Result<(), PumpEnd> {
        if self.control.len() < CONTROL_CAPACITY {
            self.control.resize(CONTROL_CAPACITY, 0);
        }
        let (record_type, len) = match ktls::recv_control(self.tls.as_fd(), &mut self.control) {
            Ok(record) => record,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.from_tls.readable = false;
                return Ok(());
            }
            Err(err) if is_reset(&err) => {
                self.from_tls.eof = true;
                return Ok(());
            }
            Err(err) => return Err(tls_read_failed(err)),
        };
        let control = std::mem::take(&mut self.control);
        let result = self.on_record(record_type, &control[..len]);
        self.control = control;
        result
    }

    fn on_record(&mut self, record_type: u8, body: &[u8]) -> Result<(), PumpEnd> {
        match record_type {
            ktls::RECORD_APPLICATION_DATA if body.is_empty() => {
                self.from_tls.eof = true;
                Ok(())
            }
            // Only reached if the kernel handed back data where splice had refused a
            // record; forward it in order through the (empty) pipe.
            ktls::RECORD_APPLICATION_DATA => match self.from_tls.pipe.write(body) {
                Ok(n) if n == body.len() => {
                    self.from_tls.in_pipe += n;
                    Ok(())
                }
                Ok(_) => Err(failed(
                    Side::Plain,
                    io::Error::other("pipe full with a record to forward"),
                )),
                Err(err) => Err(failed(Side::Plain, err)),
            },
            ktls::RECORD_ALERT => self.on_alert(body),
            ktls::RECORD_HANDSHAKE => self.on_handshake(body),
            _ => Err(tls_failed(RecordError::Unexpected(
                "record type other than data, alert or handshake",
            ))),
        }
    }

    fn on_alert(&mut self, body: &[u8]) -> Result<(), PumpEnd> {
        let &[_level, description] = body else {
            return Err(tls_failed(RecordError::Unexpected("malformed alert")));
        };
        match description {
            CLOSE_NOTIFY => {
                self.from_tls.eof = true;
                Ok(())
            }
            // "This alert should be followed by a close_notify" (RFC 8446 section 6.1).
            USER_CANCELED => Ok(()),
            other => Err(tls_failed(RecordError::PeerAlert(other))),
        }
    }

    /// Handles the handshake messages in one record (several may share it).
    fn on_handshake(&mut self, mut rest: &[u8]) -> Result<(), PumpEnd> {
        // A record holds at most 2^14 bytes and each message at least 4, so this ends.
        while !rest.is_empty() {
            let &[msg_type, a, b, c, ref after @ ..] = rest else {
                return Err(fragmented());
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if after.len() < len {
                return Err(fragmented());
            }
            let (body, after) = after.split_at(len);
            rest = after;
            match msg_type {
                KEY_UPDATE => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => {
                            return Err(tls_failed(RecordError::Unexpected("malformed KeyUpdate")));
                        }
                    };
                    // A KeyUpdate must end its record: what follows is under the new key
                    // (RFC 8446 section 5.1).
                    if !rest.is_empty() {
                        return Err(tls_failed(RecordError::Unexpected(
                            "KeyUpdate not at the end of its record",
                        )));
                    }
                    self.on_key_update(requested)?;
                }
                NEW_SESSION_TICKET => self
                    .kernel
                    .new_session_ticket(body)
                    .map_err(|err| tls_failed(RecordError::Ticket(err)))?,
                _ => {
                    return Err(tls_failed(RecordError::Unexpected(
                        "handshake message other than KeyUpdate or NewSessionTicket",
                    )));
                }
            }
        }
        Ok(())
    }

    /// The peer re-keyed its direction: install the next receive key. Where the kernel
    /// refuses (EBUSY before Linux 6.14) the session cannot go on: whatever follows is
    /// under a key the kernel does not have.
    fn on_key_update(&mut self, requested: bool) -> Result<(), PumpEnd> {
        let secrets = self
            .kernel
            .next_rx_secret()
            .map_err(|err| tls_failed(RecordError::KeyUpdate(err)))?;
        match ktls::update_rx(self.tls.as_fd(), &secrets) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                tracing::debug!("kernel TLS cannot re-key: closing the session");
                return Err(PumpEnd::Stopped(CloseReason::KeyUpdateUnsupported));
            }
            Err(err) => return Err(failed(Side::Tls, err)),
        }
        tracing::debug!(
            update_requested = requested,
            "kernel TLS receive key updated"
        );
        if requested {
            self.key_update_due = true;
        }
        Ok(())
    }

    /// Sends our KeyUpdate under the current key, then installs the next transmit key.
    /// Leaves `key_update_due` set if the socket is full.
    fn send_key_update(&mut self) -> Result<(), PumpEnd> {
        let tls = self.tls.as_fd();
        match ktls::send_control(tls, ktls::RECORD_HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.to_tls.writable = false;
                return Ok(());
            }
            Err(err) => return Err(failed(Side::Tls, err)),
        }
        self.key_update_due = false;
        let secrets = self.kernel.next_tx_secret().map_err(|err| {
            self.tx_broken = true;
            tls_failed(RecordError::KeyUpdate(err))
        })?;
        match ktls::update_tx(tls, &secrets) {
            Ok(()) => {
                tracing::debug!("kernel TLS transmit key updated");
                Ok(())
            }
            Err(err) => {
                self.tx_broken = true;
                if err.raw_os_error() == Some(libc::EBUSY) {
                    Err(PumpEnd::Stopped(CloseReason::KeyUpdateUnsupported))
                } else {
                    Err(failed(Side::Tls, err))
                }
            }
        }
    }

    /// Best effort, never waits: the session is ending.
    fn send_close_notify(&mut self) {
        if self.close_notify_sent || self.tx_broken {
            return;
        }
        let alert = [ALERT_WARNING, CLOSE_NOTIFY];
        if ktls::send_control(self.tls.as_fd(), ktls::RECORD_ALERT, &alert).is_ok() {
            self.close_notify_sent = true;
            let _ = SockRef::from(self.tls.as_fd()).shutdown(Shutdown::Write);
        }
    }
}

fn in_events() -> u32 {
    (libc::POLLIN | libc::POLLRDHUP) as u32
}

/// Reported whether asked for or not; the next syscall tells what happened.
fn problem_events() -> u32 {
    (libc::POLLERR | libc::POLLHUP) as u32
}

/// splice(2) refuses a non-data record with EINVAL; read(2) and recv(2) with EIO.
fn is_control_record(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIO))
}

/// A reset while receiving ends that direction, as in the userspace pump: PostgreSQL
/// resets after a Terminate without reading the client's last bytes.
fn is_reset(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionReset
}

/// A failed read on the TLS socket. EBADMSG is the kernel's word for a record that did
/// not authenticate (it has then stopped decrypting for good).
fn tls_read_failed(err: io::Error) -> PumpEnd {
    if err.raw_os_error() == Some(libc::EBADMSG) {
        tls_failed(RecordError::BadRecordMac)
    } else {
        failed(Side::Tls, err)
    }
}

fn tls_failed(err: RecordError) -> PumpEnd {
    PumpEnd::Failed {
        side: Side::Tls,
        error: PumpError::Record(err),
    }
}

fn failed(side: Side, err: io::Error) -> PumpEnd {
    PumpEnd::Failed {
        side,
        error: PumpError::Io(err),
    }
}

/// A post-handshake message split across records: legal TLS, but nobody sends a
/// KeyUpdate or a NewSessionTicket that way, and joining them is not worth the state.
fn fragmented() -> PumpEnd {
    tls_failed(RecordError::Unexpected("truncated handshake message"))
}

/// The pump's plumbing on any kernel: without the TLS layer the "TLS" socket carries
/// plain bytes, so what the pump splices arrives unchanged, and its close_notify shows
/// up as the two raw alert bytes. Records, keys and alerts are tested under a kernel
/// that has TLS (tests/ktls_in_vm.rs, run by scripts/ktls-vm).
#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::OwnedFd;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::sys::uring::Runtime;

    /// No rustls behind it: any re-key or ticket is refused.
    struct NoKernel;

    impl KernelKeys for NoKernel {
        fn next_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            Err(rustls::Error::General(
                "no kernel connection in this test".into(),
            ))
        }
        fn next_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
            Err(rustls::Error::General(
                "no kernel connection in this test".into(),
            ))
        }
        fn new_session_ticket(&mut self, _payload: &[u8]) -> Result<(), rustls::Error> {
            Err(rustls::Error::General(
                "no kernel connection in this test".into(),
            ))
        }
    }

    fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        (far, Socket::from_owned(OwnedFd::from(near)))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
            .collect()
    }

    /// Writes `data` then shuts down writing; reads everything until end of stream,
    /// after `read_delay` (a slow reader makes the pump wait on a full socket).
    fn peer(
        mut stream: TcpStream,
        data: Vec<u8>,
        read_delay: Duration,
    ) -> thread::JoinHandle<Vec<u8>> {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            writer.write_all(&data).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        thread::spawn(move || {
            thread::sleep(read_delay);
            let mut got = Vec::new();
            stream
                .read_to_end(&mut got)
                .expect("reading until the pump closes");
            sender.join().unwrap();
            got
        })
    }

    #[test]
    fn splice_pump_moves_bytes_both_ways_and_passes_on_each_half_close() {
        let (tls_far, tls) = pair();
        let (plain_far, plain) = pair();
        let from_client = pattern(3 << 20, 1);
        let from_upstream = pattern(2 << 20, 2);
        // The upstream reads late, so the TLS → plain direction stalls on a full socket
        // while the other keeps going.
        let client = peer(tls_far, from_client.clone(), Duration::ZERO);
        let upstream = peer(plain_far, from_upstream.clone(), Duration::from_millis(300));

        let rt = Runtime::new().unwrap();
        let (end, stats) = rt
            .block_on(async move {
                let stop = StopSignal::default();
                pump_ktls(&tls, &mut NoKernel, &plain, &stop).await
            })
            .unwrap();

        assert!(
            matches!(end, PumpEnd::Closed { .. }),
            "both sides closed cleanly, got {end:?}"
        );
        let at_upstream = upstream.join().unwrap();
        let at_client = client.join().unwrap();
        assert!(
            at_upstream == from_client,
            "upstream got {} bytes, not the client's {} bytes unchanged",
            at_upstream.len(),
            from_client.len()
        );
        let (data, alert) = at_client.split_at(at_client.len().saturating_sub(2));
        assert!(
            data == from_upstream.as_slice(),
            "client got {} bytes before the alert, not upstream's {} unchanged",
            data.len(),
            from_upstream.len()
        );
        assert_eq!(
            alert,
            [ALERT_WARNING, CLOSE_NOTIFY],
            "close_notify must be the last thing sent to the TLS side"
        );
        assert_eq!(
            stats.from_tls,
            from_client.len() as u64,
            "bytes counted from TLS"
        );
        assert_eq!(
            stats.to_tls,
            from_upstream.len() as u64,
            "bytes counted to TLS"
        );
    }

    #[test]
    fn a_stopped_splice_pump_sends_close_notify_and_reports_the_reason() {
        let (mut tls_far, tls) = pair();
        let (_plain_far, plain) = pair();
        let rt = Runtime::new().unwrap();
        let end = rt
            .block_on(async move {
                let stop = std::rc::Rc::new(StopSignal::default());
                let stopper = stop.clone();
                uring::spawn(async move {
                    uring::sleep(Duration::from_millis(50)).await;
                    stopper.stop(CloseReason::Revoked);
                });
                pump_ktls(&tls, &mut NoKernel, &plain, &stop).await.0
            })
            .unwrap();
        assert!(
            matches!(end, PumpEnd::Stopped(CloseReason::Revoked)),
            "an idle session told to stop ends with that reason, got {end:?}"
        );
        tls_far
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        tls_far.read_to_end(&mut got).unwrap();
        assert_eq!(
            got,
            [ALERT_WARNING, CLOSE_NOTIFY],
            "the TLS peer hears close_notify, then end of stream"
        );
    }

    #[test]
    fn a_reset_on_the_plain_side_ends_that_direction_not_the_session() {
        let (tls_far, tls) = pair();
        let (plain_far, plain) = pair();
        // The upstream sends a little and resets (SO_LINGER 0) without reading.
        let sock = socket2::Socket::from(plain_far);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        let mut upstream = TcpStream::from(sock);
        upstream.write_all(b"bye").unwrap();
        thread::sleep(Duration::from_millis(50));
        drop(upstream);
        let client = peer(tls_far, Vec::new(), Duration::ZERO);

        let rt = Runtime::new().unwrap();
        let (end, _) = rt
            .block_on(async move {
                let stop = StopSignal::default();
                pump_ktls(&tls, &mut NoKernel, &plain, &stop).await
            })
            .unwrap();
        assert!(
            matches!(end, PumpEnd::Closed { .. }),
            "a reset after the last bytes is a close, got {end:?}"
        );
        let got = client.join().unwrap();
        assert!(
            got.ends_with(&[ALERT_WARNING, CLOSE_NOTIFY]),
            "the client still gets close_notify, got {got:?}"
        );
    }
}
