//! TLS 1.3 session tickets whose keys rotate on a clock and can be shared.
//!
//! A ticket lets the agent resume instead of running a full certificate handshake. The
//! key that protects tickets is derived from a master secret and the current epoch
//! (`now / rotation`): HKDF-SHA256(master, "pgtunnel ticket key" || epoch) gives an
//! AES-256-GCM key. Tickets carry their epoch; the current and the previous epoch are
//! accepted, so a ticket lives at most two rotation periods, and keys are never stored,
//! only recomputed. Gateways given the same key file (and clocks within a rotation
//! period of each other) accept each other's tickets. Without a key file the master
//! secret is random per process: tickets then work only against the gateway that
//! issued them, until it restarts.
//!
//! A resumed session skips certificate verification in rustls, so the gateway checks
//! expiry, revocation and lifetime of the identity in the ticket itself after every
//! handshake (see `gateway::session::admit`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs::{aead, hkdf, rand};
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use ring::{aead, hkdf, rand};

use rand::SecureRandom;

const KEY_LABEL: &[u8] = b"pgtunnel ticket key";
const EPOCH_LEN: usize = 8;
const NONCE_LEN: usize = 12;
/// Smallest master secret we accept from a key file.
const MIN_SECRET: usize = 32;

/// Why a ticket key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no randomness available for the ticket key")]
    Random,
}

/// Produces and opens session tickets; see the module docs.
pub struct RotatingTicketer {
    master: hkdf::Prk,
    rotation: Duration,
}

impl std::fmt::Debug for RotatingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The master secret is never printed.
        f.debug_struct("RotatingTicketer")
            .field("rotation", &self.rotation)
            .finish()
    }
}

impl RotatingTicketer {
    /// A ticketer with a fresh random master secret (tickets valid on this process only).
    pub fn random(rotation: Duration) -> Result<RotatingTicketer, TicketKeyError> {
        let mut secret = [0u8; MIN_SECRET];
        rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TicketKeyError::Random)?;
        Ok(Self::from_secret(&secret, rotation))
    }

    /// A ticketer whose master secret is in `path`: at least 32 bytes written as hex
    /// (what `pgtunnel ca ticket-key` writes). The file must not be readable by others.
    pub fn from_file(path: &Path, rotation: Duration) -> Result<RotatingTicketer, TicketKeyError> {
        use std::os::unix::fs::MetadataExt;
        let err = |reason: String| TicketKeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:04o} lets other users read the ticket key; chmod 600 it",
                meta.mode() & 0o7777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let secret = decode_hex(text.trim()).ok_or_else(|| err("not a hex string".into()))?;
        if secret.len() < MIN_SECRET {
            return Err(err(format!(
                "{} bytes; at least {MIN_SECRET} are needed",
                secret.len()
            )));
        }
        Ok(Self::from_secret(&secret, rotation))
    }

    fn from_secret(secret: &[u8], rotation: Duration) -> RotatingTicketer {
        let master = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_LABEL).extract(secret);
        RotatingTicketer {
            master,
            rotation: rotation.max(Duration::from_secs(60)),
        }
    }

    fn epoch_at(&self, now: SystemTime) -> u64 {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        secs / self.rotation.as_secs().max(1)
    }

    fn key(&self, epoch: u64) -> Option<aead::LessSafeKey> {
        let info = epoch.to_be_bytes();
        let info = [KEY_LABEL, &info[..]];
        let okm = self.master.expand(&info, &aead::AES_256_GCM).ok()?;
        Some(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
    }

    fn seal_at(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let epoch = self.epoch_at(now);
        let key = self.key(epoch)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(EPOCH_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        out.extend_from_slice(plain);
        let aad = aead::Aad::from(epoch.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aad,
                &mut out[header_len..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open_at(&self, ticket: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if ticket.len() < EPOCH_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (epoch_bytes, rest) = ticket.split_at(EPOCH_LEN);
        let epoch = u64::from_be_bytes(epoch_bytes.try_into().ok()?);
        let current = self.epoch_at(now);
        if epoch != current && epoch.checked_add(1) != Some(current) {
            return None; // too old, or from the future: either way not ours to honour
        }
        let key = self.key(epoch)?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, aead::Aad::from(epoch.to_be_bytes()), &mut buf)
            .ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

impl rustls::server::ProducesTickets for RotatingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // A ticket issued late in an epoch is still accepted through the next one.
        u32::try_from(self.rotation.as_secs() * 2).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, SystemTime::now())
    }
}

/// Writes a new random master secret as hex to `path`, mode 0600, refusing to overwrite.
pub fn write_new_key(path: &Path) -> Result<(), TicketKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |reason: String| TicketKeyError::File {
        path: path.display().to_string(),
        reason,
    };
    let mut secret = [0u8; MIN_SECRET];
    rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| TicketKeyError::Random)?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    writeln!(file, "{hex}").map_err(|e| err(e.to_string()))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_ticket_opens_in_its_epoch_and_the_next_but_not_after() {
        let t = RotatingTicketer::from_secret(&[7u8; 32], HOUR);
        let ticket = t.seal_at(b"session state", at(10 * 3600 + 5)).unwrap();
        assert_eq!(
            t.open_at(&ticket, at(10 * 3600 + 100)).as_deref(),
            Some(&b"session state"[..])
        );
        assert!(
            t.open_at(&ticket, at(11 * 3600 + 100)).is_some(),
            "previous epoch must still open"
        );
        assert!(
            t.open_at(&ticket, at(12 * 3600 + 100)).is_none(),
            "two epochs later must not"
        );
        assert!(
            t.open_at(&ticket, at(9 * 3600)).is_none(),
            "a ticket from the future must not"
        );
    }

    #[test]
    fn gateways_sharing_a_key_file_accept_each_others_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickets.key");
        write_new_key(&path).unwrap();
        let a = RotatingTicketer::from_file(&path, HOUR).unwrap();
        let b = RotatingTicketer::from_file(&path, HOUR).unwrap();
        let other = RotatingTicketer::random(HOUR).unwrap();
        let now = SystemTime::now();
        let ticket = a.seal_at(b"x", now).unwrap();
        assert!(
            b.open_at(&ticket, now).is_some(),
            "same key file must open the ticket"
        );
        assert!(
            other.open_at(&ticket, now).is_none(),
            "another key must not"
        );
    }

    #[test]
    fn tampered_or_short_tickets_are_refused_without_panicking() {
        let t = RotatingTicketer::from_secret(&[1u8; 32], HOUR);
        let now = SystemTime::now();
        let ticket = t.seal_at(b"state", now).unwrap();
        for i in 0..ticket.len() {
            let mut bent = ticket.clone();
            bent[i] ^= 0x40;
            assert!(
                t.open_at(&bent, now).is_none(),
                "flipped byte {i} must be refused"
            );
            assert!(
                t.open_at(&ticket[..i], now).is_none(),
                "truncated at {i} must be refused"
            );
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickets.key");
        write_new_key(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = RotatingTicketer::from_file(&path, HOUR)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "got: {err}");
    }
}
