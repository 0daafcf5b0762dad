//! The userspace pump: bytes both ways between a TLS socket (decrypted by rustls in this
//! thread) and a plain socket, until both directions have finished.
//!
//! One task drives up to four ring operations at once: receive and send on each socket.
//! An operation that is in flight is never dropped while the session lives (a dropped
//! receive could swallow bytes); the loop polls all of them and handles whichever
//! completes. Backpressure is simple: a side is read only when what was read from it
//! before has been fully written to the other side, so each direction holds at most one
//! record's worth of data. Half-close is propagated: end of stream (or close_notify) on
//! one side becomes `shutdown(SHUT_WR)` (or close_notify) on the other, and the pump
//! ends when both directions are done, an error occurs, or the session is told to stop.

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::Poll;

use socket2::SockRef;

use super::stop::StopSignal;
use super::tls_stream::{TLS_RX_CAPACITY, TlsSession};
use crate::audit::CloseReason;
use crate::sys::uring::{self, BufOp, BufResult, Socket};

/// Plaintext read per receive from the plain side: one maximal TLS record's payload.
const PLAIN_RX_CAPACITY: usize = 16 * 1024;

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
    /// A side failed (reset, TLS error, ...).
    Failed { side: Side, error: PumpError },
    /// The session's owner asked it to stop.
    Stopped(CloseReason),
}

/// What failed, kept structured so that the agent can explain a TLS alert to psql.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("TLS: {0}")]
    Tls(rustls::Error),
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

enum Event {
    TlsRx(BufResult),
    TlsTx(BufResult),
    PlainRx(BufResult),
    PlainTx(BufResult),
    Stop(CloseReason),
}

/// Operations in flight; `None` = idle, and the buffer is then held by the pump.
#[derive(Default)]
struct InFlight {
    tls_rx: Option<BufOp>,
    tls_tx: Option<BufOp>,
    plain_rx: Option<BufOp>,
    plain_tx: Option<BufOp>,
}

/// Per-direction progress.
struct Pump<'a> {
    tls: &'a mut TlsSession,
    plain: &'a Socket,
    ops: InFlight,
    /// Decrypted bytes waiting to go to the plain side, `plain_out[plain_pos..]`.
    plain_out: Vec<u8>,
    plain_pos: usize,
    /// Receive buffer for the plain side.
    plain_in: Vec<u8>,
    /// Ciphertext waiting to go to the TLS side is `tls.tx[tls_pos..]`.
    tls_pos: usize,
    tls_eof: bool,
    plain_eof: bool,
    plain_shut: bool,
    tls_shut: bool,
    close_notify_sent: bool,
    first_close: Option<Side>,
    stats: PumpStats,
}

/// Moves bytes until both directions are done, a side fails, or `stop` is signalled.
pub async fn pump(tls: &mut TlsSession, plain: &Socket, stop: &StopSignal) -> (PumpEnd, PumpStats) {
    let tls_pos = tls.tx.len(); // nothing pending: the handshake flushed everything
    let mut pump = Pump {
        tls,
        plain,
        ops: InFlight::default(),
        plain_out: Vec::with_capacity(PLAIN_RX_CAPACITY),
        plain_pos: 0,
        plain_in: Vec::with_capacity(PLAIN_RX_CAPACITY),
        tls_pos,
        tls_eof: false,
        plain_eof: false,
        plain_shut: false,
        tls_shut: false,
        close_notify_sent: false,
        first_close: None,
        stats: PumpStats::default(),
    };
    // Plaintext that arrived with the last handshake flight is already inside rustls.
    if let Err(end) = pump.drain_plaintext() {
        return (end, pump.stats);
    }
    let end = pump.run(stop).await;
    (end, pump.stats)
}

impl Pump<'_> {
    async fn run(&mut self, stop: &StopSignal) -> PumpEnd {
        loop {
            self.arm();
            if self.plain_shut && self.tls_shut {
                return PumpEnd::Closed {
                    first: self.first_close.unwrap_or(Side::Tls),
                };
            }
            let event = self.next_event(stop).await;
            if let Err(end) = self.handle(event) {
                return end;
            }
        }
    }

    /// Starts every operation that can make progress now, and propagates half-closes.
    fn arm(&mut self) {
        let tls_fd = self.tls.sock.as_raw_fd();
        let plain_fd = self.plain.as_raw_fd();

        // TLS -> plain: read ciphertext only when the previous plaintext is all sent.
        let plain_pending = self.plain_pos < self.plain_out.len();
        let plain_busy = plain_pending || self.ops.plain_tx.is_some();
        if self.ops.tls_rx.is_none() && !self.tls_eof && !plain_busy {
            if self.tls.rx.len() == self.tls.rx.capacity() {
                self.tls.rx.reserve(TLS_RX_CAPACITY);
            }
            self.ops.tls_rx = Some(uring::recv(tls_fd, std::mem::take(&mut self.tls.rx)));
        }
        if self.ops.plain_tx.is_none() && plain_pending {
            let range = self.plain_pos..self.plain_out.len();
            let buf = std::mem::take(&mut self.plain_out);
            self.ops.plain_tx = Some(uring::send(plain_fd, buf, range));
        }
        let plain_busy = self.plain_pos < self.plain_out.len() || self.ops.plain_tx.is_some();
        if self.tls_eof && !plain_busy && !self.plain_shut {
            // A peer that already closed its socket makes shutdown fail; either way
            // this direction is finished.
            let _ = SockRef::from(self.plain.as_fd()).shutdown(Shutdown::Write);
            self.plain_shut = true;
        }

        // plain -> TLS: encrypt what was read, send it, and only then read more.
        if self.plain_eof && !self.close_notify_sent {
            self.tls.conn.send_close_notify();
            self.close_notify_sent = true;
        }
        if self.ops.tls_tx.is_none() {
            if self.tls_pos == self.tls.tx.len() && self.tls.conn.wants_write() {
                self.tls.tx.clear();
                self.tls_pos = 0;
                // Writing into a Vec cannot fail.
                let _ = self.tls.conn.write_tls(&mut self.tls.tx);
            }
            if self.tls_pos < self.tls.tx.len() {
                let range = self.tls_pos..self.tls.tx.len();
                let buf = std::mem::take(&mut self.tls.tx);
                self.ops.tls_tx = Some(uring::send(tls_fd, buf, range));
            }
        }
        let tls_pending = self.ops.tls_tx.is_some() || self.tls.conn.wants_write();
        if self.ops.plain_rx.is_none() && !self.plain_eof && !tls_pending {
            self.plain_in.clear();
            let buf = std::mem::take(&mut self.plain_in);
            self.ops.plain_rx = Some(uring::recv(plain_fd, buf));
        }
        if self.close_notify_sent && !tls_pending && !self.tls_shut {
            let _ = SockRef::from(self.tls.sock.as_fd()).shutdown(Shutdown::Write);
            self.tls_shut = true;
        }
    }

    /// Waits for the first operation to complete (or the stop signal). The others stay
    /// in flight, untouched.
    async fn next_event(&mut self, stop: &StopSignal) -> Event {
        let ops = &mut self.ops;
        poll_fn(|cx| {
            if let Poll::Ready(reason) = stop.poll_stopped(cx) {
                return Poll::Ready(Event::Stop(reason));
            }
            if let Some(r) = poll_op(&mut ops.tls_rx, cx) {
                return Poll::Ready(Event::TlsRx(r));
            }
            if let Some(r) = poll_op(&mut ops.plain_tx, cx) {
                return Poll::Ready(Event::PlainTx(r));
            }
            if let Some(r) = poll_op(&mut ops.plain_rx, cx) {
                return Poll::Ready(Event::PlainRx(r));
            }
            if let Some(r) = poll_op(&mut ops.tls_tx, cx) {
                return Poll::Ready(Event::TlsTx(r));
            }
            Poll::Pending
        })
        .await
    }

    fn handle(&mut self, event: Event) -> Result<(), PumpEnd> {
        match event {
            Event::Stop(reason) => Err(PumpEnd::Stopped(reason)),
            Event::TlsRx((res, buf)) => {
                self.tls.rx = buf;
                match res.or_else(reset_is_eof) {
                    Ok(0) => {
                        self.tls_eof = true;
                        self.first_close.get_or_insert(Side::Tls);
                        Ok(())
                    }
                    Ok(_) => self.decrypt(),
                    Err(err) => Err(failed(Side::Tls, err)),
                }
            }
            Event::PlainTx((res, buf)) => {
                self.plain_out = buf;
                match res {
                    Ok(n) => {
                        self.plain_pos += n;
                        if self.plain_pos == self.plain_out.len() {
                            self.plain_out.clear();
                            self.plain_pos = 0;
                        }
                        Ok(())
                    }
                    // The plain peer already said goodbye: what it has not taken is moot.
                    Err(_) if self.plain_eof => {
                        self.discard_plain_out();
                        Ok(())
                    }
                    Err(err) => Err(failed(Side::Plain, err)),
                }
            }
            Event::PlainRx((res, buf)) => {
                self.plain_in = buf;
                match res.or_else(reset_is_eof) {
                    Ok(0) => {
                        self.plain_eof = true;
                        self.first_close.get_or_insert(Side::Plain);
                        Ok(())
                    }
                    Ok(n) => {
                        self.stats.to_tls += n as u64;
                        self.tls
                            .conn
                            .writer()
                            .write_all(&self.plain_in[..n])
                            .map_err(|err| failed(Side::Tls, err))
                    }
                    Err(err) => Err(failed(Side::Plain, err)),
                }
            }
            Event::TlsTx((res, buf)) => {
                self.tls.tx = buf;
                match res {
                    Ok(n) => {
                        self.tls_pos += n;
                        Ok(())
                    }
                    Err(_) if self.tls_eof => {
                        // The TLS peer is gone; nothing more can reach it.
                        self.tls_pos = self.tls.tx.len();
                        self.plain_eof = true;
                        self.close_notify_sent = true;
                        self.tls_shut = true;
                        Ok(())
                    }
                    Err(err) => Err(failed(Side::Tls, err)),
                }
            }
        }
    }

    /// Feeds received ciphertext to rustls and collects the plaintext for the plain side.
    fn decrypt(&mut self) -> Result<(), PumpEnd> {
        loop {
            let before = self.tls.rx.len();
            if let Err(err) = self.tls.feed() {
                // rustls queued an alert; the send loop flushes it if the session lingers,
                // but a TLS error ends the session, so this is the last word.
                return Err(PumpEnd::Failed {
                    side: Side::Tls,
                    error: PumpError::Tls(err),
                });
            }
            self.drain_plaintext()?;
            if self.tls.rx.is_empty() || self.tls.rx.len() == before {
                return Ok(());
            }
        }
    }

    /// Moves all plaintext rustls holds into `plain_out`; close_notify ends the direction.
    fn drain_plaintext(&mut self) -> Result<(), PumpEnd> {
        let before = self.plain_out.len();
        let result = self.tls.conn.reader().read_to_end(&mut self.plain_out);
        self.stats.from_tls += (self.plain_out.len() - before) as u64;
        match result {
            // Ok means close_notify: the TLS peer will send nothing more.
            Ok(_) => {
                self.tls_eof = true;
                self.first_close.get_or_insert(Side::Tls);
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Err(failed(Side::Tls, err)),
        }
    }

    fn discard_plain_out(&mut self) {
        self.plain_out.clear();
        self.plain_pos = 0;
    }
}

fn poll_op(op: &mut Option<BufOp>, cx: &mut std::task::Context<'_>) -> Option<BufResult> {
    let fut = op.as_mut()?;
    match Pin::new(fut).poll(cx) {
        Poll::Ready(result) => {
            *op = None;
            Some(result)
        }
        Poll::Pending => None,
    }
}

/// A reset while receiving counts as the end of that direction. PostgreSQL routinely
/// causes one: after a Terminate message its backend exits without reading the client's
/// final TLS close_notify, and the kernel answers the unread bytes with RST. Treating it
/// as an error would mark ordinary logouts as failures.
fn reset_is_eof(err: io::Error) -> io::Result<usize> {
    if err.kind() == io::ErrorKind::ConnectionReset {
        Ok(0)
    } else {
        Err(err)
    }
}

fn failed(side: Side, err: io::Error) -> PumpEnd {
    PumpEnd::Failed {
        side,
        error: PumpError::Io(err),
    }
}
