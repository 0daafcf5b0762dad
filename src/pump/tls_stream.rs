//! A rustls connection driven by the ring: the handshake, and writing a last message
//! before closing. The pump (`userspace`) takes over the same buffers afterwards.
//!
//! Ciphertext is received into a buffer the session owns and fed to rustls with
//! `read_tls`; whatever rustls wants to send is written into another owned buffer with
//! `write_tls` and sent with one ring operation. Both buffers are reused for the whole
//! session.

use std::io::{self, Write};
use std::os::fd::AsRawFd;

use crate::sys::uring::{self, Socket};

/// Receive buffer size: one maximal TLS record (16 KiB payload + header + tag + padding)
/// fits, so a full record never needs two reads.
pub const TLS_RX_CAPACITY: usize = 16 * 1024 + 512;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection during the handshake")]
    Eof,
}

/// A socket and the TLS connection that runs over it.
pub struct TlsSession {
    pub sock: Socket,
    pub conn: rustls::Connection,
    pub(crate) rx: Vec<u8>,
    pub(crate) tx: Vec<u8>,
}

impl TlsSession {
    pub fn new(sock: Socket, conn: rustls::Connection) -> TlsSession {
        TlsSession {
            sock,
            conn,
            rx: Vec::with_capacity(TLS_RX_CAPACITY),
            tx: Vec::with_capacity(TLS_RX_CAPACITY),
        }
    }

    /// Runs the handshake to completion. On a TLS error the alert rustls queued is sent
    /// (best effort) before returning, so the peer learns why.
    pub async fn handshake(&mut self) -> Result<(), HandshakeError> {
        loop {
            self.flush().await?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            let (res, buf) = uring::recv(self.sock.as_raw_fd(), std::mem::take(&mut self.rx)).await;
            self.rx = buf;
            match res {
                Ok(0) => return Err(HandshakeError::Eof),
                Ok(_) => {}
                Err(err) => return Err(HandshakeError::Io(err)),
            }
            if let Err(err) = self.feed() {
                let _ = self.flush().await;
                return Err(err.into());
            }
        }
    }

    /// Hands every received byte in `rx` to rustls and processes the records. Plaintext
    /// stays in rustls until the caller reads it.
    pub(crate) fn feed(&mut self) -> Result<(), rustls::Error> {
        let mut offset = 0;
        while offset < self.rx.len() {
            let mut input = &self.rx[offset..];
            match self.conn.read_tls(&mut input) {
                Ok(0) => break,
                Ok(n) => offset += n,
                // rustls refuses more input while its plaintext buffer is full; the caller
                // drains plaintext and comes back, so keep the rest for then.
                Err(_) => break,
            }
            self.conn.process_new_packets()?;
        }
        self.rx.drain(..offset);
        Ok(())
    }

    /// Sends everything rustls has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.tx.clear();
            self.conn.write_tls(&mut self.tx)?;
            let len = self.tx.len();
            let (res, buf) =
                uring::send_all(self.sock.as_raw_fd(), std::mem::take(&mut self.tx), 0..len).await;
            self.tx = buf;
            res?;
        }
        Ok(())
    }

    /// Sends `message` as application data, then close_notify. Used to tell the far end
    /// (psql, through the agent) why it is being turned away.
    pub async fn send_and_close(&mut self, message: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(message)?;
        self.conn.send_close_notify();
        self.flush().await?;
        let _ = socket2::SockRef::from(self.sock.as_fd()).shutdown(std::net::Shutdown::Write);
        Ok(())
    }
}
