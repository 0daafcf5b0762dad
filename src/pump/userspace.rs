//! The userspace pump: bytes both ways between a TLS socket and a plain socket, with
//! our record layer protecting records in place.
//!
//! Readiness comes from the ring (one multishot poll per socket, so an idle session
//! holds no buffer); the moving is done by non-blocking calls from the worker thread:
//!
//! - TLS to plain: receive ciphertext into a pool buffer, open every complete record
//!   where it lies, and send the plaintext ranges with one `sendmsg` straight from that
//!   buffer. A record cut off at the end of the buffer is moved to its front (the only
//!   copy, and only of an incomplete record).
//! - plain to TLS: `readv` plaintext straight into record-shaped slots of a pool buffer
//!   (16 KiB apart, leaving room for header and tag), seal each slot in place, and send
//!   the sealed records, which then lie back to back, with one `send`.
//!
//! A direction reads only when what it read before has been sent, so each holds at most
//! one buffer. Half-close is propagated (end of stream or close_notify on one side
//! becomes shutdown or close_notify on the other), and the pump ends when both
//! directions are done, a side fails, or the session is told to stop.

use std::future::poll_fn;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::Poll;

use rustls::kernel::KernelConnection;
use socket2::SockRef;

use super::pool::{BUFFER_SIZE, PoolBuf, RECORDS_PER_BUFFER, SEALED_SLOT};
use super::stop::StopSignal;
use crate::audit::CloseReason;
use crate::sys::net;
use crate::sys::uring::{self, PollMulti, PollOnce, Socket};
use crate::tls::record::{
    HEADER_LEN, MAX_CIPHERTEXT, MAX_PLAINTEXT, Opened, RecordError, RecordLayer, TicketSink,
};

/// Which end of the pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The TLS peer (the agent, seen from the gateway; the gateway, seen from the agent).
    Tls,
    /// The plain peer (PostgreSQL, seen from the gateway; psql, seen from the agent).
    Plain,
}

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// Both directions finished; `first` is the side that closed first.
    Closed { first: Side },
    /// A side failed (reset, bad record, fatal alert, ...).
    Failed { side: Side, error: PumpError },
    /// The session's owner asked it to stop.
    Stopped(CloseReason),
}

/// What failed, kept structured so that the agent can explain a TLS alert to psql.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("TLS: {0}")]
    Record(#[from] RecordError),
    #[error("{0}")]
    Io(io::Error),
}

/// Plaintext bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct PumpStats {
    /// Decrypted bytes received from the TLS side and sent to the plain side.
    pub from_tls: u64,
    /// Bytes received from the plain side and sent, encrypted, to the TLS side.
    pub to_tls: u64,
}

/// Moves bytes until both directions are done, a side fails, or `stop` is signalled.
pub async fn pump<D>(
    tls: &Socket,
    records: &mut RecordLayer<D>,
    plain: &Socket,
    stop: &StopSignal,
) -> (PumpEnd, PumpStats)
where
    KernelConnection<D>: TicketSink,
{
    pump_watching(tls, records, plain, stop, None).await
}

/// What [`pump_watching`] shows the first data record from the TLS side.
pub type Watch<'w> = &'w mut dyn FnMut(&[u8]);

/// Like [`pump`], and shows `first_from_tls` the plaintext of the first data record
/// from the TLS side before it is passed on unchanged (the agent reads the gateway's
/// refusal there). Only that one record: the cost on the rest of the stream is one
/// test of an empty `Option` per record.
pub async fn pump_watching<D>(
    tls: &Socket,
    records: &mut RecordLayer<D>,
    plain: &Socket,
    stop: &StopSignal,
    first_from_tls: Option<Watch<'_>>,
) -> (PumpEnd, PumpStats)
where
    KernelConnection<D>: TicketSink,
{
    let mut pump = Pump::new(tls, records, plain);
    pump.first_from_tls = first_from_tls;
    for sock in [tls, plain] {
        if let Err(err) = SockRef::from(sock.as_fd()).set_nonblocking(true) {
            let side = if std::ptr::eq(sock, tls) {
                Side::Tls
            } else {
                Side::Plain
            };
            return (
                PumpEnd::Failed {
                    side,
                    error: PumpError::Io(err),
                },
                pump.stats,
            );
        }
    }
    let end = pump.run(stop).await;
    if let PumpEnd::Failed {
        side: Side::Tls,
        error: PumpError::Record(err),
    } = &end
        && let Some(alert) = err.alert()
    {
        pump.send_alert(alert);
    }
    if let PumpEnd::Stopped(_) = &end {
        pump.send_alert(0);
    }
    (end, pump.stats)
}

struct Pump<'a, 'w, D> {
    tls: &'a Socket,
    plain: &'a Socket,
    records: &'a mut RecordLayer<D>,

    /// TLS to plain: ciphertext in `rx[..rx_len]`; records before `rx_pos` are opened
    /// and their plaintext ranges wait in `plain_ranges` (first `plain_sent` bytes gone).
    rx: Option<PoolBuf>,
    rx_len: usize,
    rx_pos: usize,
    plain_ranges: Vec<Range<usize>>,
    plain_sent: usize,

    /// plain to TLS: sealed records in `tx[tx_pos..tx_end]`.
    tx: Option<PoolBuf>,
    tx_pos: usize,
    tx_end: usize,

    tls_readable: bool,
    plain_readable: bool,
    /// The peer's end of stream (or an error) has been reported on this socket; see
    /// [`HANGUP_EVENTS`].
    tls_hangup: bool,
    plain_hangup: bool,
    tls_writable: bool,
    plain_writable: bool,
    tls_eof: bool,
    plain_eof: bool,
    plain_shut: bool,
    tls_shut: bool,
    close_notify_sent: bool,
    first_close: Option<Side>,
    stats: PumpStats,
    /// Shown the first data record from the TLS side, then dropped.
    first_from_tls: Option<Watch<'w>>,
}

/// The readiness reports one wait may bring.
#[derive(Default)]
struct Ready {
    stop: Option<CloseReason>,
    tls_in: bool,
    plain_in: bool,
    tls_hangup: bool,
    plain_hangup: bool,
    tls_out: bool,
    plain_out: bool,
    error: Option<(Side, io::Error)>,
}

impl<'a, 'w, D> Pump<'a, 'w, D>
where
    KernelConnection<D>: TicketSink,
{
    fn new(tls: &'a Socket, records: &'a mut RecordLayer<D>, plain: &'a Socket) -> Self {
        Pump {
            tls,
            plain,
            records,
            rx: None,
            rx_len: 0,
            rx_pos: 0,
            plain_ranges: Vec::with_capacity(RECORDS_PER_BUFFER),
            plain_sent: 0,
            tx: None,
            tx_pos: 0,
            tx_end: 0,
            // Data may already be waiting; a read that finds none costs one EAGAIN.
            tls_readable: true,
            plain_readable: true,
            tls_hangup: false,
            plain_hangup: false,
            tls_writable: true,
            plain_writable: true,
            tls_eof: false,
            plain_eof: false,
            plain_shut: false,
            tls_shut: false,
            close_notify_sent: false,
            first_close: None,
            stats: PumpStats::default(),
            first_from_tls: None,
        }
    }

    async fn run(&mut self, stop: &StopSignal) -> PumpEnd {
        let mut tls_in = PollMulti::new(self.tls.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP);
        let mut plain_in = PollMulti::new(self.plain.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP);
        let mut tls_out: Option<PollOnce> = None;
        let mut plain_out: Option<PollOnce> = None;
        loop {
            let more = match self.drive() {
                Ok(more) => more,
                Err(end) => return end,
            };
            if self.plain_shut && self.tls_shut {
                return PumpEnd::Closed {
                    first: self.first_close.unwrap_or(Side::Tls),
                };
            }
            if more {
                // A busy session lets the worker's other sessions (and its accepts and
                // handshakes) run before it goes on; its readiness flags still hold.
                uring::yield_now().await;
                if let Some(reason) = stop.reason() {
                    return PumpEnd::Stopped(reason);
                }
                continue;
            }
            if !self.tls_writable && tls_out.is_none() {
                tls_out = Some(uring::poll(self.tls.as_raw_fd(), libc::POLLOUT));
            }
            if !self.plain_writable && plain_out.is_none() {
                plain_out = Some(uring::poll(self.plain.as_raw_fd(), libc::POLLOUT));
            }

            let ready = poll_fn(|cx| {
                let mut ready = Ready::default();
                let mut any = false;
                if let Poll::Ready(reason) = stop.poll_stopped(cx) {
                    ready.stop = Some(reason);
                    any = true;
                }
                for (poll, flag, hangup, side) in [
                    (
                        &mut tls_in,
                        &mut ready.tls_in,
                        &mut ready.tls_hangup,
                        Side::Tls,
                    ),
                    (
                        &mut plain_in,
                        &mut ready.plain_in,
                        &mut ready.plain_hangup,
                        Side::Plain,
                    ),
                ] {
                    match poll.poll_next(cx) {
                        Poll::Ready(Ok(revents)) => {
                            *flag = true;
                            *hangup = revents & HANGUP_EVENTS != 0;
                        }
                        Poll::Ready(Err(err)) => ready.error = Some((side, err)),
                        Poll::Pending => continue,
                    }
                    any = true;
                }
                for (wait, flag) in [
                    (&mut tls_out, &mut ready.tls_out),
                    (&mut plain_out, &mut ready.plain_out),
                ] {
                    if let Some(fut) = wait
                        && Pin::new(fut).poll(cx).is_ready()
                    {
                        *wait = None;
                        *flag = true;
                        any = true;
                    }
                }
                if any {
                    Poll::Ready(ready)
                } else {
                    Poll::Pending
                }
            })
            .await;

            if let Some(reason) = ready.stop {
                return PumpEnd::Stopped(reason);
            }
            if let Some((side, err)) = ready.error {
                return PumpEnd::Failed {
                    side,
                    error: PumpError::Io(err),
                };
            }
            self.tls_readable |= ready.tls_in;
            self.plain_readable |= ready.plain_in;
            self.tls_hangup |= ready.tls_hangup;
            self.plain_hangup |= ready.plain_hangup;
            self.tls_writable |= ready.tls_out;
            self.plain_writable |= ready.plain_out;
        }
    }

    /// Makes the progress possible without waiting, up to a budget of
    /// [`STEPS_PER_WAKE`]. Returns whether the budget ran out with more to do.
    fn drive(&mut self) -> Result<bool, PumpEnd> {
        for _ in 0..STEPS_PER_WAKE {
            let inbound = self.inbound()?;
            let outbound = self.outbound()?;
            if !inbound && !outbound {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// TLS to plain. Returns whether anything happened.
    fn inbound(&mut self) -> Result<bool, PumpEnd> {
        // Plaintext opened earlier goes out first.
        if !self.plain_ranges.is_empty() {
            if !self.plain_writable {
                return Ok(false);
            }
            return self.send_plaintext();
        }

        // Keep only an incomplete record, moved to the front; an empty buffer goes back.
        if self.rx_pos > 0 {
            if let Some(rx) = self.rx.as_mut() {
                rx.copy_within(self.rx_pos..self.rx_len, 0);
            }
            self.rx_len -= self.rx_pos;
            self.rx_pos = 0;
        }
        if self.rx_len == 0 {
            self.rx = None;
        }

        if self.tls_eof {
            if !self.plain_shut {
                // A peer that already closed its socket makes shutdown fail; either way
                // this direction is finished.
                let _ = SockRef::from(self.plain.as_fd()).shutdown(Shutdown::Write);
                self.plain_shut = true;
                return Ok(true);
            }
            return Ok(false);
        }
        if !self.tls_readable {
            return Ok(false);
        }

        let rx = self.rx.get_or_insert_with(PoolBuf::take);
        let space = rx.len() - self.rx_len;
        match net::recv(self.tls.as_raw_fd(), &mut rx[self.rx_len..]) {
            Ok(0) => {
                self.tls_eof = true;
                self.first_close.get_or_insert(Side::Tls);
                return Ok(true);
            }
            Ok(n) => {
                self.rx_len += n;
                // A short read drained the socket and the poll reports anything newer,
                // except an end of stream that came with the data (see HANGUP_EVENTS).
                self.tls_readable = n == space || self.tls_hangup;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.tls_readable = false;
                return Ok(false);
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                self.tls_eof = true;
                self.first_close.get_or_insert(Side::Tls);
                return Ok(true);
            }
            Err(err) => return Err(failed(Side::Tls, err)),
        }
        self.open_records()?;
        Ok(true)
    }

    /// Opens every complete record in the buffer, queueing the plaintext ranges.
    fn open_records(&mut self) -> Result<(), PumpEnd> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        let mut pos = self.rx_pos;
        while self.rx_len - pos >= HEADER_LEN && !self.tls_eof {
            let body = usize::from(u16::from_be_bytes([rx[pos + 3], rx[pos + 4]]));
            if body > MAX_CIPHERTEXT {
                return Err(PumpEnd::Failed {
                    side: Side::Tls,
                    error: PumpError::Record(RecordError::Overflow(body)),
                });
            }
            let end = pos + HEADER_LEN + body;
            if end > self.rx_len {
                break;
            }
            match self.records.open(&mut rx[pos..end]) {
                Ok(Opened::Data(range)) if !range.is_empty() => {
                    let range = pos + range.start..pos + range.end;
                    if let Some(watch) = self.first_from_tls.take() {
                        watch(&rx[range.clone()]);
                    }
                    self.plain_ranges.push(range);
                }
                Ok(Opened::Data(_) | Opened::Handled) => {}
                Ok(Opened::CloseNotify) => {
                    self.tls_eof = true;
                    self.first_close.get_or_insert(Side::Tls);
                }
                Err(err) => {
                    return Err(PumpEnd::Failed {
                        side: Side::Tls,
                        error: err.into(),
                    });
                }
            }
            pos = end;
        }
        self.rx_pos = pos;
        Ok(())
    }

    fn send_plaintext(&mut self) -> Result<bool, PumpEnd> {
        let Some(rx) = self.rx.as_ref() else {
            self.plain_ranges.clear();
            return Ok(true);
        };
        let mut slices: [IoSlice<'_>; RECORDS_PER_BUFFER * 2] =
            [IoSlice::new(&[]); RECORDS_PER_BUFFER * 2];
        let mut count = 0;
        let mut skip = self.plain_sent;
        for range in &self.plain_ranges {
            if count == slices.len() {
                break;
            }
            let len = range.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            slices[count] = IoSlice::new(&rx[range.start + skip..range.end]);
            skip = 0;
            count += 1;
        }
        match net::send_vectored(self.plain.as_raw_fd(), &slices[..count]) {
            Ok(n) => {
                self.stats.from_tls += n as u64;
                self.plain_sent += n;
                let total: usize = self.plain_ranges.iter().map(Range::len).sum();
                if self.plain_sent >= total {
                    self.plain_ranges.clear();
                    self.plain_sent = 0;
                }
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.plain_writable = false;
                Ok(false)
            }
            // The plain peer is gone after saying goodbye: what it has not taken is moot,
            // and so is everything the TLS side would still send. Reading on would pass
            // an endless stream (a download whose reader left) into a dead end forever,
            // so this direction ends as if the TLS side had, as the kTLS pump's does.
            Err(_) if self.plain_eof => {
                self.plain_ranges.clear();
                self.plain_sent = 0;
                self.tls_eof = true;
                Ok(true)
            }
            Err(err) => Err(failed(Side::Plain, err)),
        }
    }

    /// plain to TLS. Returns whether anything happened.
    fn outbound(&mut self) -> Result<bool, PumpEnd> {
        if self.tx_pos < self.tx_end {
            if !self.tls_writable {
                return Ok(false);
            }
            return self.send_records();
        }
        self.tx_pos = 0;
        self.tx_end = 0;

        // Control records (a KeyUpdate answer) go before anything sealed after them.
        if let Some(control) = self.records.take_control() {
            let tx = self.tx.get_or_insert_with(PoolBuf::take);
            tx[..control.len()].copy_from_slice(&control);
            self.tx_end = control.len();
            return Ok(true);
        }
        if self.records.needs_rekey() {
            self.records.rekey().map_err(|err| PumpEnd::Failed {
                side: Side::Tls,
                error: err.into(),
            })?;
            return Ok(true);
        }
        if self.plain_eof && !self.close_notify_sent {
            let tx = self.tx.get_or_insert_with(PoolBuf::take);
            self.tx_end = self.records.seal_alert(tx, 0);
            self.close_notify_sent = true;
            return Ok(true);
        }
        if self.close_notify_sent {
            self.tx = None;
            if !self.tls_shut {
                let _ = SockRef::from(self.tls.as_fd()).shutdown(Shutdown::Write);
                self.tls_shut = true;
                return Ok(true);
            }
            return Ok(false);
        }
        if self.plain_eof || !self.plain_readable {
            self.tx = None;
            return Ok(false);
        }

        // Read plaintext straight into record-shaped slots.
        let tx = self.tx.get_or_insert_with(PoolBuf::take);
        let n = {
            let mut slots = tx[..RECORDS_PER_BUFFER * SEALED_SLOT]
                .chunks_exact_mut(SEALED_SLOT)
                .map(|slot| IoSliceMut::new(&mut slot[HEADER_LEN..HEADER_LEN + MAX_PLAINTEXT]));
            let mut iov: [IoSliceMut<'_>; RECORDS_PER_BUFFER] =
                std::array::from_fn(|_| slots.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
            net::readv(self.plain.as_raw_fd(), &mut iov)
        };
        match n {
            Ok(0) => {
                self.plain_eof = true;
                self.first_close.get_or_insert(Side::Plain);
                Ok(true)
            }
            Ok(n) => {
                self.stats.to_tls += n as u64;
                self.plain_readable = n == RECORDS_PER_BUFFER * MAX_PLAINTEXT || self.plain_hangup;
                let (full, rest) = (n / MAX_PLAINTEXT, n % MAX_PLAINTEXT);
                for i in 0..full {
                    self.records.seal_data(
                        &mut tx[i * SEALED_SLOT..(i + 1) * SEALED_SLOT],
                        MAX_PLAINTEXT,
                    );
                }
                self.tx_end = full * SEALED_SLOT;
                if rest > 0 {
                    let start = full * SEALED_SLOT;
                    self.tx_end += self
                        .records
                        .seal_data(&mut tx[start..start + SEALED_SLOT], rest);
                }
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.plain_readable = false;
                self.tx = None;
                Ok(false)
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                self.plain_eof = true;
                self.first_close.get_or_insert(Side::Plain);
                Ok(true)
            }
            Err(err) => Err(failed(Side::Plain, err)),
        }
    }

    fn send_records(&mut self) -> Result<bool, PumpEnd> {
        let Some(tx) = self.tx.as_ref() else {
            self.tx_pos = self.tx_end;
            return Ok(true);
        };
        match net::send(self.tls.as_raw_fd(), &tx[self.tx_pos..self.tx_end]) {
            Ok(n) => {
                self.tx_pos += n;
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.tls_writable = false;
                Ok(false)
            }
            Err(_) if self.tls_eof => {
                // The TLS peer is gone; nothing more can reach it.
                self.tx_pos = self.tx_end;
                self.plain_eof = true;
                self.close_notify_sent = true;
                self.tls_shut = true;
                Ok(true)
            }
            Err(err) => Err(failed(Side::Tls, err)),
        }
    }

    /// Last words on the TLS side, best effort and without waiting: an alert (or
    /// close_notify when `description` is 0).
    fn send_alert(&mut self, description: u8) {
        if self.close_notify_sent || self.tls_shut {
            return;
        }
        let mut buf = [0u8; HEADER_LEN + 2 + 1 + crate::tls::record::TAG_LEN];
        let len = self.records.seal_alert(&mut buf, description);
        let _ = net::send(self.tls.as_raw_fd(), &buf[..len]);
        self.close_notify_sent = true;
    }
}

/// Rounds (a receive or a send each way) one session may take before it yields to the
/// worker's other sessions: at most 8 buffers of 64 KiB each way, a few hundred
/// microseconds of work. Without a bound, a session whose peers keep up (a bulk copy
/// over loopback) never gave the worker back, and its other sessions, accepts and
/// handshakes waited for it to end.
const STEPS_PER_WAKE: usize = 8;

/// Poll bits that say the peer will send nothing more (FIN, or an error such as a
/// reset). A short read normally means the socket is drained and the multishot poll
/// will report whatever arrives next; but data and the FIN that follows it can arrive
/// before the kernel evaluates the poll, and then one report covers both. The short
/// read returns the data, and no later report comes for the FIN, which was already
/// there: trusting the short read would leave the session open forever after its
/// client (psql sending Terminate and closing at once) has gone. Once one of these
/// bits has been seen, the pump reads on until the read returns 0 or fails.
const HANGUP_EVENTS: u32 = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32;

fn failed(side: Side, err: io::Error) -> PumpEnd {
    PumpEnd::Failed {
        side,
        error: PumpError::Io(err),
    }
}

const _: () = assert!(BUFFER_SIZE >= RECORDS_PER_BUFFER * SEALED_SLOT);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::OwnedFd;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::sys::uring::Runtime;
    use crate::tls::record::RECORD_OVERHEAD;
    use crate::tls::record::tests::pair;

    fn tcp_pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        (far, Socket::from_owned(OwnedFd::from(near)))
    }

    /// How a pump run on its own thread ended: `Debug` of its end, and its byte counts.
    type Outcome = io::Result<(String, PumpStats)>;

    /// Runs the server side's pump between `tls` and `plain` on a thread of its own with
    /// its own ring; the receiver gets how it ended.
    fn spawn_pump(
        server: RecordLayer<rustls::server::ServerConnectionData>,
        tls: Socket,
        plain: Socket,
    ) -> mpsc::Receiver<Outcome> {
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut server = server;
            let rt = Runtime::new().unwrap();
            let result = rt.block_on(async move {
                let stop = StopSignal::default();
                pump(&tls, &mut server, &plain, &stop).await
            });
            let _ = done_tx.send(result.map(|(end, stats)| (format!("{end:?}"), stats)));
        });
        done_rx
    }

    /// psql's last words are a Terminate message and a FIN, sent back to back. When
    /// both are queued before the worker looks, one poll report covers them and a
    /// short read takes only the data; the pump must still see the FIN and finish.
    /// Without that it waited forever (seen as a demo whose session never ended).
    #[test]
    fn data_and_fin_arriving_together_while_the_pump_waits_still_end_it() {
        for round in 0..40 {
            let (mut client, server, _) = pair(None, false);
            let (mut tls_far, tls) = tcp_pair();
            let (mut plain_far, plain) = tcp_pair();
            let done_rx = spawn_pump(server, tls, plain);

            // The TLS side says close_notify first, so only the plain side is left open.
            let mut alert = vec![0u8; 2 + RECORD_OVERHEAD];
            let len = client.seal_alert(&mut alert, 0);
            tls_far.write_all(&alert[..len]).unwrap();
            tls_far.shutdown(Shutdown::Write).unwrap();
            thread::sleep(Duration::from_millis(20));
            // Then, while the pump waits, data and FIN together.
            plain_far.write_all(b"X\0\0\0\x04").unwrap();
            plain_far.shutdown(Shutdown::Write).unwrap();

            let outcome = done_rx.recv_timeout(Duration::from_secs(10));
            let (end, stats) = match outcome {
                Ok(Ok(done)) => done,
                Ok(Err(err)) => panic!("round {round}: runtime failed: {err}"),
                Err(_) => panic!("round {round}: the pump missed the FIN that came with data"),
            };
            assert!(end.starts_with("Closed"), "round {round}: ended {end}");
            assert_eq!(stats.to_tls, 5, "round {round}: the data went through");
            let mut rest = Vec::new();
            tls_far
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            tls_far.read_to_end(&mut rest).unwrap();
            assert!(
                !rest.is_empty(),
                "round {round}: nothing reached the TLS side"
            );
            let mut plain_rest = Vec::new();
            plain_far.read_to_end(&mut plain_rest).unwrap();
        }
    }

    /// A download whose reader has gone: the plain peer closed for good while the TLS
    /// side keeps streaming. Nothing can be delivered any more, so the pump must end.
    /// It used to read and discard forever, a core busy per such session (seen after a
    /// bench run, whose download sessions never ended).
    #[test]
    fn a_stream_into_a_plain_peer_that_left_ends_the_pump() {
        let (mut client, server, _) = pair(None, false);
        let (mut tls_far, tls) = tcp_pair();
        let (plain_far, plain) = tcp_pair();
        let done_rx = spawn_pump(server, tls, plain);

        // The plain peer leaves at once: FIN, then its socket is gone.
        drop(plain_far);

        // The TLS peer streams full records until the pump closes its socket, for 10 s
        // at most. A write that fails means the pump ended and closed the connection.
        let mut record = vec![0u8; MAX_PLAINTEXT + RECORD_OVERHEAD];
        tls_far
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut outcome = None;
        while outcome.is_none() && std::time::Instant::now() < deadline {
            let len = client.seal_data(&mut record, MAX_PLAINTEXT);
            match tls_far.write_all(&record[..len]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => outcome = done_rx.recv_timeout(Duration::from_secs(5)).ok(),
            }
            if outcome.is_none() {
                outcome = done_rx.try_recv().ok();
            }
        }
        let (end, _) = outcome
            .expect("the pump still ran 10 s after its plain peer left")
            .expect("runtime ran");
        assert!(
            end.starts_with("Closed") || end.starts_with("Failed"),
            "the pump ended, but as {end}"
        );
    }
}
