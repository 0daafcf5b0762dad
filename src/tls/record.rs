//! Our TLS 1.3 record layer for the userspace data path (RFC 8446 section 5).
//!
//! After the handshake rustls hands us the traffic secrets and a `KernelConnection`
//! (the same hand-off kernel TLS uses). From then on this module protects records itself,
//! in place, in buffers the pump owns: `open` decrypts a received record where it lies
//! and returns where its plaintext is; `seal` encrypts plaintext that was received
//! straight into a record-shaped slot. No allocation and no copy per record. rustls 0.23's
//! own unbuffered API decrypts into a fresh `Vec` per record, which is why we do not
//! leave the record layer to it.
//!
//! What rustls still does for us, through `KernelConnection`: computing the next traffic
//! secret on KeyUpdate, and (client side) storing NewSessionTickets for resumption. What
//! we do: nonces, AEAD, content types, alerts, answering a KeyUpdate that requests one,
//! and re-keying before a cipher's confidentiality limit (the kernel would not).

use std::ops::Range;

#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs::aead;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use ring::aead;

use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Record header: content type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// AEAD tag length of every TLS 1.3 cipher suite.
pub const TAG_LEN: usize = 16;
/// Largest plaintext in one record (RFC 8446 section 5.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest protected record body: plaintext, content type, tag, and the padding a peer
/// may add (section 5.2 allows up to 2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Bytes a sealed record adds around its plaintext: header in front; content type and
/// tag behind.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
/// Alert descriptions we send (RFC 8446 section 6).
pub const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
pub const ALERT_BAD_RECORD_MAC: u8 = 20;
pub const ALERT_RECORD_OVERFLOW: u8 = 22;
pub const ALERT_DECODE_ERROR: u8 = 50;

/// What a received record turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Application data at this range of the buffer passed to `open`.
    Data(Range<usize>),
    /// The peer's close_notify: it will send no more data.
    CloseNotify,
    /// A post-handshake message (KeyUpdate, NewSessionTicket) was handled; check
    /// [`RecordLayer::take_control`] for a reply to send.
    Handled,
}

/// Why the record stream cannot continue. `alert` is what to send the peer, if anything.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("record too large ({0} bytes)")]
    Overflow(usize),
    #[error("unexpected or malformed message: {0}")]
    Unexpected(&'static str),
    #[error("peer sent fatal alert {0}")]
    PeerAlert(u8),
    #[error("key update failed: {0}")]
    KeyUpdate(rustls::Error),
    #[error("new session ticket refused: {0}")]
    Ticket(rustls::Error),
    #[error("unsupported cipher suite for the userspace record layer")]
    Suite,
}

impl RecordError {
    /// The alert this error calls for, if the peer should be told.
    pub fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(ALERT_BAD_RECORD_MAC),
            RecordError::Overflow(_) => Some(ALERT_RECORD_OVERFLOW),
            RecordError::Unexpected(_) | RecordError::Ticket(_) => Some(ALERT_UNEXPECTED_MESSAGE),
            RecordError::PeerAlert(_) | RecordError::KeyUpdate(_) | RecordError::Suite => None,
        }
    }
}

/// One direction's AEAD key, static IV and sequence number.
struct Direction {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Direction, RecordError> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::Suite),
        };
        let unbound =
            aead::UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::Suite)?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| RecordError::Suite)?;
        Ok(Direction {
            key: aead::LessSafeKey::new(unbound),
            iv,
            seq,
        })
    }

    /// The per-record nonce: the static IV XOR the sequence number (section 5.3).
    fn next_nonce(&mut self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        aead::Nonce::assume_unique_for_key(nonce)
    }
}

/// Record protection for one connection, both directions.
pub struct RecordLayer<D> {
    tx: Direction,
    rx: Direction,
    kernel: KernelConnection<D>,
    /// Sealed control records (KeyUpdate) waiting to go out before any later data.
    control: Vec<u8>,
    /// Records after which we re-key our sending direction ourselves.
    tx_limit: u64,
}

/// The part of the hand-off that differs between the two ends: only a client stores
/// session tickets.
pub trait TicketSink {
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error>;
}

impl TicketSink for KernelConnection<rustls::client::ClientConnectionData> {
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error> {
        self.handle_new_session_ticket(payload)
    }
}

impl TicketSink for KernelConnection<rustls::server::ServerConnectionData> {
    fn new_session_ticket(&mut self, _payload: &[u8]) -> Result<(), rustls::Error> {
        Err(rustls::Error::General(
            "a client sent a NewSessionTicket".into(),
        ))
    }
}

impl<D> RecordLayer<D>
where
    KernelConnection<D>: TicketSink,
{
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<D>,
    ) -> Result<Self, RecordError> {
        let tx = Direction::new(secrets.tx.0, &secrets.tx.1)?;
        let rx = Direction::new(secrets.rx.0, &secrets.rx.1)?;
        // Re-key well before the limit rustls would enforce itself (it counts records
        // too); an eighth of the way short leaves room for records already in flight.
        let limit = match kernel.negotiated_cipher_suite().tls13() {
            Some(suite) => suite.common.confidentiality_limit,
            None => return Err(RecordError::Suite),
        };
        let tx_limit = limit - limit / 8;
        Ok(RecordLayer {
            tx,
            rx,
            kernel,
            control: Vec::with_capacity(64),
            tx_limit,
        })
    }

    /// Decrypts the whole record in `record` (header included) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, RecordError> {
        if record.len() < HEADER_LEN {
            return Err(RecordError::Unexpected("short record"));
        }
        let body_len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        if body_len > MAX_CIPHERTEXT || record.len() != HEADER_LEN + body_len {
            return Err(RecordError::Overflow(body_len));
        }
        if record[0] != CONTENT_APPLICATION_DATA || body_len < TAG_LEN + 1 {
            return Err(RecordError::Unexpected(
                "record is not protected application data",
            ));
        }

        let (header, body) = record.split_at_mut(HEADER_LEN);
        let nonce = self.rx.next_nonce();
        let aad = aead::Aad::from(
            <[u8; HEADER_LEN]>::try_from(&*header).map_err(|_| RecordError::BadRecordMac)?,
        );
        let plain_len = self
            .rx
            .key
            .open_in_place(nonce, aad, body)
            .map_err(|_| RecordError::BadRecordMac)?
            .len();

        // TLSInnerPlaintext: content, then the real content type, then zero padding.
        let Some(type_at) = body[..plain_len].iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Unexpected("record with no content type"));
        };
        let content = HEADER_LEN..HEADER_LEN + type_at;
        match body[type_at] {
            CONTENT_APPLICATION_DATA => Ok(Opened::Data(content)),
            CONTENT_ALERT => self.alert(&record[content]),
            CONTENT_HANDSHAKE => {
                let message = record[content].to_vec();
                self.handshake(&message)?;
                Ok(Opened::Handled)
            }
            _ => Err(RecordError::Unexpected("unknown inner content type")),
        }
    }

    /// Seals `record[HEADER_LEN..HEADER_LEN + len]` (plaintext already in place) as an
    /// application data record: writes the header, the content type and the tag around
    /// it. `record` must have room for [`RECORD_OVERHEAD`] more bytes than `len`.
    /// Returns the record's total length.
    pub fn seal_data(&mut self, record: &mut [u8], len: usize) -> usize {
        self.seal(record, len, CONTENT_APPLICATION_DATA)
    }

    /// Seals an alert (close_notify when `description` is 0) into `out`; returns its length.
    pub fn seal_alert(&mut self, out: &mut [u8], description: u8) -> usize {
        // Level: close_notify is a warning (1), everything else we send is fatal (2).
        let level = if description == ALERT_CLOSE_NOTIFY {
            1
        } else {
            2
        };
        out[HEADER_LEN] = level;
        out[HEADER_LEN + 1] = description;
        self.seal(out, 2, CONTENT_ALERT)
    }

    /// True when our sending direction should re-key before sealing more.
    pub fn needs_rekey(&self) -> bool {
        self.tx.seq >= self.tx_limit
    }

    /// Sends a KeyUpdate (not requesting one back) and switches to the next key.
    pub fn rekey(&mut self) -> Result<(), RecordError> {
        self.send_key_update(false)
    }

    /// Control records (KeyUpdate) to send before anything sealed after them.
    pub fn take_control(&mut self) -> Option<Vec<u8>> {
        (!self.control.is_empty()).then(|| std::mem::take(&mut self.control))
    }

    fn seal(&mut self, record: &mut [u8], len: usize, content_type: u8) -> usize {
        let body_len = len + 1 + TAG_LEN;
        let total = HEADER_LEN + body_len;
        record[HEADER_LEN + len] = content_type;
        let header = [
            CONTENT_APPLICATION_DATA,
            0x03,
            0x03,
            (body_len >> 8) as u8,
            body_len as u8,
        ];
        record[..HEADER_LEN].copy_from_slice(&header);
        let nonce = self.tx.next_nonce();
        let (_, rest) = record.split_at_mut(HEADER_LEN);
        let (plain, tail) = rest.split_at_mut(len + 1);
        // Sealing cannot fail for a plaintext under the AEAD's size limit, which a TLS
        // record always is; a failure would be a bug, and sending garbage is the safe
        // outcome (the peer rejects it) compared with panicking the worker.
        if let Ok(tag) =
            self.tx
                .key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(header), plain)
        {
            tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        }
        total
    }

    fn alert(&mut self, body: &[u8]) -> Result<Opened, RecordError> {
        match body {
            [_, ALERT_CLOSE_NOTIFY] => Ok(Opened::CloseNotify),
            [_, description] => Err(RecordError::PeerAlert(*description)),
            _ => Err(RecordError::Unexpected("malformed alert")),
        }
    }

    /// Post-handshake messages; several may share a record (RFC 8446 section 5.1).
    fn handshake(&mut self, mut messages: &[u8]) -> Result<(), RecordError> {
        while !messages.is_empty() {
            let [kind, a, b, c, rest @ ..] = messages else {
                return Err(RecordError::Unexpected("truncated handshake message"));
            };
            let len = (usize::from(*a) << 16) | (usize::from(*b) << 8) | usize::from(*c);
            if rest.len() < len {
                return Err(RecordError::Unexpected("truncated handshake message"));
            }
            let (body, next) = rest.split_at(len);
            messages = next;
            match *kind {
                HANDSHAKE_KEY_UPDATE => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(RecordError::Unexpected("malformed KeyUpdate")),
                    };
                    let (seq, secrets) = self
                        .kernel
                        .update_rx_secret()
                        .map_err(RecordError::KeyUpdate)?;
                    self.rx = Direction::new(seq, &secrets)?;
                    if requested {
                        self.send_key_update(false)?;
                    }
                }
                HANDSHAKE_NEW_SESSION_TICKET => {
                    self.kernel
                        .new_session_ticket(body)
                        .map_err(RecordError::Ticket)?;
                }
                _ => {
                    return Err(RecordError::Unexpected(
                        "handshake message after the handshake",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Seals a KeyUpdate under the current key into `control`, then moves to the next
    /// sending key: everything sealed from now on uses it.
    fn send_key_update(&mut self, request: bool) -> Result<(), RecordError> {
        let start = self.control.len();
        self.control.resize(start + HEADER_LEN + 5 + 1 + TAG_LEN, 0);
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request)];
        self.control[start + HEADER_LEN..start + HEADER_LEN + 5].copy_from_slice(&message);
        let mut slot = std::mem::take(&mut self.control);
        self.seal(&mut slot[start..], 5, CONTENT_HANDSHAKE);
        self.control = slot;
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(RecordError::KeyUpdate)?;
        self.tx = Direction::new(seq, &secrets)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
    use rustls::server::{ServerConnectionData, UnbufferedServerConnection};

    use super::*;
    use crate::pki::{Ca, Validity};
    use crate::tls::handshake::in_memory;

    pub(crate) type Pair = (
        RecordLayer<ClientConnectionData>,
        RecordLayer<ServerConnectionData>,
        Vec<u8>,
    );

    /// A client and a server record layer after a real in-memory mTLS handshake.
    pub(crate) fn pair(suite: Option<rustls::SupportedCipherSuite>, tickets: bool) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path()).unwrap();
        let day = Validity::starting_now(Duration::from_secs(3600));
        let server = ca.issue_server(&["localhost".into()], &[], day).unwrap();
        let login = ca
            .issue_login(
                "alice",
                &[],
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = tickets.then(|| {
            Arc::new(
                crate::tls::tickets::RotatingTicketer::random(Duration::from_secs(3600)).unwrap(),
            ) as _
        });
        let server_config = crate::tls::server_config(
            vec![server.cert_der().clone()],
            server.private_key_der(),
            roots.clone(),
            Vec::new(),
            ticketer,
        )
        .unwrap();
        let mut provider = (*crate::tls::provider()).clone();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![login.cert_der().clone()], login.private_key_der())
            .unwrap();
        client_config.enable_secret_extraction = true;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let client = UnbufferedClientConnection::new(Arc::new(client_config), name).unwrap();
        let server = UnbufferedServerConnection::new(Arc::new(server_config)).unwrap();
        let done = in_memory(client, server).unwrap();
        let client = RecordLayer::new(done.client.0, done.client.1).unwrap();
        let server = RecordLayer::new(done.server.0, done.server.1).unwrap();
        (client, server, done.to_client)
    }

    /// Seals `data` as one record.
    fn sealed<D>(layer: &mut RecordLayer<D>, data: &[u8]) -> Vec<u8>
    where
        KernelConnection<D>: TicketSink,
    {
        let mut record = vec![0u8; data.len() + RECORD_OVERHEAD];
        record[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        let len = layer.seal_data(&mut record, data.len());
        record.truncate(len);
        record
    }

    #[test]
    fn records_sealed_by_one_side_open_in_place_on_the_other_for_every_suite() {
        let provider = crate::tls::provider();
        let suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied()
            .collect();
        assert_eq!(suites.len(), 3, "expected the three TLS 1.3 suites");
        for suite in suites {
            let (mut client, mut server, _) = pair(Some(suite), false);
            for size in [1, 64, 1000, MAX_PLAINTEXT] {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let mut record = sealed(&mut client, &data);
                let opened = server.open(&mut record).unwrap();
                let Opened::Data(range) = opened else {
                    panic!("{suite:?}: expected data")
                };
                assert_eq!(
                    &record[range],
                    &data[..],
                    "{suite:?} size {size}: plaintext differs"
                );
            }
            let mut reply = sealed(&mut server, b"pong");
            assert_eq!(
                client.open(&mut reply).unwrap(),
                Opened::Data(HEADER_LEN..HEADER_LEN + 4)
            );
        }
    }

    #[test]
    fn a_tampered_or_replayed_record_is_bad_record_mac() {
        let (mut client, mut server, _) = pair(None, false);
        let record = sealed(&mut client, b"select 1");
        let mut bent = record.clone();
        bent[HEADER_LEN + 2] ^= 1;
        assert!(matches!(
            server.open(&mut bent),
            Err(RecordError::BadRecordMac)
        ));
        let (mut client, mut server, _) = pair(None, false);
        let record = sealed(&mut client, b"select 1");
        server.open(&mut record.clone()).unwrap();
        assert!(
            matches!(
                server.open(&mut record.clone()),
                Err(RecordError::BadRecordMac)
            ),
            "replay must fail"
        );
    }

    #[test]
    fn key_update_rekeys_both_ways_and_data_keeps_flowing() {
        let (mut client, mut server, _) = pair(None, false);
        client.send_key_update(true).unwrap();
        let mut update = client.take_control().expect("a KeyUpdate record");
        assert_eq!(server.open(&mut update).unwrap(), Opened::Handled);
        // The server answers (it was asked to), then both use new keys.
        let mut answer = server.take_control().expect("the answering KeyUpdate");
        assert_eq!(client.open(&mut answer).unwrap(), Opened::Handled);
        let mut up = sealed(&mut client, b"after the update");
        assert!(matches!(server.open(&mut up).unwrap(), Opened::Data(_)));
        let mut down = sealed(&mut server, b"back");
        assert!(matches!(client.open(&mut down).unwrap(), Opened::Data(_)));
    }

    #[test]
    fn close_notify_and_alerts_are_recognised() {
        let (mut client, mut server, _) = pair(None, false);
        let mut buf = [0u8; 32];
        let len = client.seal_alert(&mut buf, ALERT_CLOSE_NOTIFY);
        assert_eq!(server.open(&mut buf[..len]).unwrap(), Opened::CloseNotify);
        let len = server.seal_alert(&mut buf, 44);
        assert!(matches!(
            client.open(&mut buf[..len]),
            Err(RecordError::PeerAlert(44))
        ));
    }

    #[test]
    fn the_client_stores_the_servers_session_ticket() {
        let (mut client, _server, mut to_client) = pair(None, true);
        assert!(
            !to_client.is_empty(),
            "the server should have sent a NewSessionTicket"
        );
        let len = HEADER_LEN + usize::from(u16::from_be_bytes([to_client[3], to_client[4]]));
        assert_eq!(client.open(&mut to_client[..len]).unwrap(), Opened::Handled);
    }

    #[test]
    fn garbage_records_are_errors_not_panics() {
        let (_, mut server, _) = pair(None, false);
        for mut junk in [
            vec![],
            vec![23, 3, 3],
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
            vec![21, 3, 3, 0, 2, 2, 40],
        ] {
            assert!(server.open(&mut junk).is_err(), "{junk:?} must be refused");
        }
    }
}
