//! The TLS 1.3 handshake over the ring, one record at a time, ending in the hand-off.
//!
//! rustls' unbuffered connection does the protocol; this module only moves records.
//! It reads exactly one record per receive (the 5-byte header, then the body it
//! announces), so when the handshake completes no byte of the application stream has
//! left the socket: it is all still there for whoever protects records next, our
//! userspace record layer or the kernel's TLS. Then it calls
//! `dangerous_into_kernel_connection`, which yields the traffic secrets and the
//! `KernelConnection` that handles KeyUpdate and session tickets from then on.
//! Everything the session needs from the handshake (peer certificates, SNI, ALPN,
//! suite, whether it resumed) is captured in [`Established`] before rustls lets go.

use std::os::fd::AsRawFd;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{CommonState, ExtractedSecrets, HandshakeKind, SupportedCipherSuite};
use rustls_pki_types::CertificateDer;

use super::client_hello;
use super::record::{HEADER_LEN, MAX_CIPHERTEXT};
use crate::sys::uring::{self, Socket};

/// Cap on handshake bytes held at once. rustls joins a handshake message that spans
/// several records inside our buffer, so it must hold a few records (a long certificate
/// chain); it must not grow without bound on a peer's say-so.
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection during the handshake")]
    Eof,
    #[error("{0}")]
    Protocol(&'static str),
}

/// A completed handshake, handed off: the socket with nothing of the application
/// stream read, the traffic secrets, and what the session needs to know.
pub struct Established<D> {
    pub sock: Socket,
    pub secrets: ExtractedSecrets,
    pub kernel: KernelConnection<D>,
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
    /// The SNI the client sent (server side only), lower-case.
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub suite: SupportedCipherSuite,
    pub resumed: bool,
}

/// The two ends of rustls' unbuffered API, driven alike.
pub trait Unbuffered: Sized {
    type Data;
    /// The server parses the SNI out of the first record it receives.
    const SERVER: bool;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
    #[allow(clippy::type_complexity)]
    fn into_kernel(self)
    -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const SERVER: bool = true;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const SERVER: bool = false;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

/// What to do after one step of rustls.
enum Step {
    Read,
    Transmit,
    Done,
    Again,
    Fail(HandshakeError),
}

/// Runs the handshake on `sock` to completion and hands it off. On a TLS error the
/// alert rustls queued is sent first (best effort), so the peer learns why.
pub async fn handshake<C: Unbuffered>(
    sock: Socket,
    mut conn: C,
) -> Result<Established<C::Data>, HandshakeError> {
    let mut incoming: Vec<u8> = Vec::with_capacity(HEADER_LEN + MAX_CIPHERTEXT);
    let mut outgoing: Vec<u8> = Vec::with_capacity(4096);
    let mut sni = None;
    let mut first_record = C::SERVER;

    loop {
        let status = conn.process(&mut incoming);
        let discard = status.discard;
        let step = match status.state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                match encode(&mut outgoing, |buf| data.encode(buf)) {
                    Ok(()) => Step::Again,
                    Err(err) => Step::Fail(err),
                }
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done();
                Step::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                Step::Fail(HandshakeError::Eof)
            }
            Ok(_) => Step::Fail(HandshakeError::Protocol(
                "application data before the handshake completed",
            )),
            Err(err) => Step::Fail(err.into()),
        };
        incoming.drain(..discard);

        match step {
            Step::Again => {}
            Step::Transmit => transmit(&sock, &mut outgoing).await?,
            Step::Read => {
                let start = incoming.len();
                read_record(&sock, &mut incoming).await?;
                if first_record {
                    first_record = false;
                    sni = client_hello::server_name(&incoming[start..]);
                }
            }
            Step::Done => break,
            Step::Fail(err) => {
                send_alert(&sock, &mut conn, &mut outgoing).await;
                return Err(err);
            }
        }
    }

    // Everything rustls wanted sent has been sent (WriteTraffic is only reached then),
    // and no byte past the last handshake record was read: the hand-off loses nothing.
    let common = conn.common();
    let peer_certificates = common.peer_certificates().map(|certs| certs.to_vec());
    let alpn = common.alpn_protocol().map(<[u8]>::to_vec);
    let resumed = common.handshake_kind() == Some(HandshakeKind::Resumed);
    let suite = common
        .negotiated_cipher_suite()
        .ok_or(HandshakeError::Protocol(
            "no cipher suite after the handshake",
        ))?;
    let (secrets, kernel) = conn.into_kernel()?;
    Ok(Established {
        sock,
        secrets,
        kernel,
        peer_certificates,
        sni,
        alpn,
        suite,
        resumed,
    })
}

/// Appends one encoded handshake record to `out`, growing it as rustls asks.
fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), HandshakeError> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(size))
                if size.required_size <= MAX_HANDSHAKE_BUFFER =>
            {
                room = size.required_size;
            }
            Err(_) => {
                out.truncate(start);
                return Err(HandshakeError::Protocol(
                    "handshake record could not be encoded",
                ));
            }
        }
    }
}

async fn transmit(sock: &Socket, outgoing: &mut Vec<u8>) -> Result<(), HandshakeError> {
    let len = outgoing.len();
    let (res, buf) = uring::send_all(sock.as_raw_fd(), std::mem::take(outgoing), 0..len).await;
    *outgoing = buf;
    outgoing.clear();
    res?;
    Ok(())
}

/// Reads exactly one more record (header and body) onto the end of `buf`.
async fn read_record(sock: &Socket, buf: &mut Vec<u8>) -> Result<(), HandshakeError> {
    let start = buf.len();
    read_exact(sock, buf, HEADER_LEN).await?;
    // Not a TLS record header (an HTTP request, say): do not wait for a body that will
    // never come; rustls rejects the header at once and its alert goes out.
    let content_type = buf[start];
    if !(20..=23).contains(&content_type) || buf[start + 1] != 3 {
        return Ok(());
    }
    let body = usize::from(u16::from_be_bytes([buf[start + 3], buf[start + 4]]));
    if body > MAX_CIPHERTEXT {
        return Err(HandshakeError::Protocol("record larger than TLS allows"));
    }
    if buf.len() + body > MAX_HANDSHAKE_BUFFER {
        return Err(HandshakeError::Protocol(
            "handshake larger than the gateway accepts",
        ));
    }
    read_exact(sock, buf, body).await
}

async fn read_exact(sock: &Socket, buf: &mut Vec<u8>, n: usize) -> Result<(), HandshakeError> {
    let target = buf.len() + n;
    buf.reserve(n);
    while buf.len() < target {
        let want = target - buf.len();
        let (res, b) = uring::recv_limit(sock.as_raw_fd(), std::mem::take(buf), want).await;
        *buf = b;
        match res {
            Ok(0) => return Err(HandshakeError::Eof),
            Ok(_) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// After a failure: let rustls encode the alert it queued and send it, briefly.
async fn send_alert<C: Unbuffered>(sock: &Socket, conn: &mut C, outgoing: &mut Vec<u8>) {
    outgoing.clear();
    // Two steps at most: encode the alert, then transmit it.
    for _ in 0..2 {
        let status = conn.process(&mut []);
        let queued = match status.state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                encode(outgoing, |buf| data.encode(buf)).is_ok()
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done();
                false
            }
            _ => false,
        };
        if !queued {
            break;
        }
    }
    if !outgoing.is_empty() {
        let _ = uring::timeout(
            std::time::Duration::from_millis(200),
            transmit(sock, outgoing),
        )
        .await;
    }
}
