//! Revocation: the CA's signed X.509 CRL at `DIR/crl.pem`, and reading it back.
//!
//! `revoke` adds a serial to the list and re-signs it with the CA key (CRL number + 1),
//! writing the file atomically so a gateway watching it never reads half a CRL. The same
//! file serves PostgreSQL's `ssl_crl_file` and the gateway's `crl` setting. Free-text
//! reasons, which X.509 cannot carry, go to `DIR/revocations.jsonl` beside it.
//!
//! `RevocationList::load` gives the gateway both forms it needs: the DER for rustls'
//! verifier (checked at every handshake, including the CRL's signature) and the set of
//! revoked serials, for ending live sessions whose certificate was revoked after they
//! started. Trusting that set without checking the signature is safe in one direction
//! only, and that is the direction it is used in: it can only close sessions, never admit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::files::{self, PUBLIC_MODE};
use super::{Ca, PkiError};

/// The CRL's file name inside the CA folder.
pub const CRL_FILE: &str = "crl.pem";
/// The free-text revocation log beside it.
pub const REVOCATION_LOG_FILE: &str = "revocations.jsonl";
/// How long a CRL stays fresh by default. OpenSSL (and so PostgreSQL) rejects every
/// client once a CRL's nextUpdate has passed, so the CA must re-sign before then
/// (`pgtunnel ca revoke --refresh`).
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// A loaded CRL.
#[derive(Debug, Clone)]
pub struct RevocationList {
    pub der: CertificateRevocationListDer<'static>,
    /// Revoked serials, lower-case hex without sign padding (as in `Identity`).
    pub serials: HashSet<String>,
    pub number: Option<u64>,
    pub next_update: Option<OffsetDateTime>,
}

/// One entry, as read back from an existing CRL.
#[derive(Debug, Clone)]
struct Entry {
    serial: Vec<u8>,
    revoked_at: OffsetDateTime,
    reason: Option<RevocationReason>,
}

impl RevocationList {
    /// Reads a PEM (or DER) CRL. Errors name the file.
    ///
    /// Neither the signature nor nextUpdate is checked here: rustls checks the signature
    /// at each handshake, and a CRL from the wrong CA then covers no client certificate,
    /// which refuses every session (fail closed) although the reload said ok. A stale
    /// CRL stays in use by the gateway, while PostgreSQL refuses all clients with it.
    /// Both are in docs/limitations.md.
    pub fn load(path: &Path) -> Result<RevocationList, PkiError> {
        let bytes = files::read(path)?;
        let der = match CertificateRevocationListDer::from_pem_slice(&bytes) {
            Ok(der) => der,
            Err(_) if bytes.first() == Some(&0x30) => CertificateRevocationListDer::from(bytes),
            Err(err) => return Err(bad(path, format!("not a PEM CRL: {err}"))),
        };
        let (serials, number, next_update) = {
            let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
                .map_err(|err| bad(path, format!("not a valid CRL: {err}")))?;
            let serials = crl
                .iter_revoked_certificates()
                .map(|r| serial_hex(r.raw_serial()))
                .collect();
            let number = crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok());
            let next_update = crl.next_update().and_then(|t| to_time(t.timestamp()));
            (serials, number, next_update)
        };
        let der = CertificateRevocationListDer::from(der.as_ref().to_vec());
        Ok(RevocationList {
            der,
            serials,
            number,
            next_update,
        })
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.serials.contains(serial_hex)
    }
}

/// What `revoke` did.
#[derive(Debug)]
pub struct RevokeOutcome {
    pub path: PathBuf,
    pub number: u64,
    pub revoked: usize,
    pub already_listed: bool,
}

/// Adds `serial` (hex) to the CA's CRL (creating it if needed) and re-signs it. With
/// `serial` = None, only re-signs (refreshes nextUpdate). `reason` is a RFC 5280 reason
/// name (see `parse_reason`) or free text, which goes to the revocation log.
pub fn revoke(
    ca_dir: &Path,
    serial: Option<&str>,
    reason: Option<&str>,
    validity: Duration,
) -> Result<RevokeOutcome, PkiError> {
    let ca = Ca::load(ca_dir)?;
    let path = ca_dir.join(CRL_FILE);
    let (mut entries, previous_number) = if path.exists() {
        read_entries(&path)?
    } else {
        (Vec::new(), 0)
    };

    let now = OffsetDateTime::now_utc();
    let mut already_listed = false;
    if let Some(serial) = serial {
        let raw = parse_serial(serial)?;
        let hex = serial_hex(&raw);
        already_listed = entries.iter().any(|e| serial_hex(&e.serial) == hex);
        if !already_listed {
            entries.push(Entry {
                serial: raw,
                revoked_at: now,
                reason: reason.and_then(parse_reason),
            });
        }
        append_log(ca_dir, &hex, reason, now)?;
    }

    let number = previous_number + 1;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + validity,
        crl_number: SerialNumber::from(number.to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from(e.serial.clone()),
                revocation_time: e.revoked_at,
                reason_code: e.reason,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(ca.issuer())?;
    let pem = crl.pem()?;
    files::replace(&path, pem.as_bytes(), PUBLIC_MODE)?;
    Ok(RevokeOutcome {
        path,
        number,
        revoked: entries.len(),
        already_listed,
    })
}

/// RFC 5280 section 5.3.1 reason names, spelled the way operators type them.
pub fn parse_reason(text: &str) -> Option<RevocationReason> {
    let normal: String = text
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(match normal.as_str() {
        "unspecified" => RevocationReason::Unspecified,
        "keycompromise" => RevocationReason::KeyCompromise,
        "cacompromise" => RevocationReason::CaCompromise,
        "affiliationchanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationofoperation" => RevocationReason::CessationOfOperation,
        "certificatehold" => RevocationReason::CertificateHold,
        "privilegewithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

fn read_entries(path: &Path) -> Result<(Vec<Entry>, u64), PkiError> {
    let list = RevocationList::load(path)?;
    let (_, crl) = CertificateRevocationList::from_der(list.der.as_ref())
        .map_err(|err| bad(path, format!("not a valid CRL: {err}")))?;
    let mut entries = Vec::new();
    for revoked in crl.iter_revoked_certificates() {
        let revoked_at = to_time(revoked.revocation_date.timestamp())
            .ok_or_else(|| bad(path, "revocation date out of range".into()))?;
        let reason = revoked
            .reason_code()
            .and_then(|(_, code)| reason_from_code(code.0));
        entries.push(Entry {
            serial: revoked.raw_serial().to_vec(),
            revoked_at,
            reason,
        });
    }
    Ok((entries, list.number.unwrap_or(0)))
}

fn reason_from_code(code: u8) -> Option<RevocationReason> {
    Some(match code {
        0 => RevocationReason::Unspecified,
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        9 => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

fn append_log(
    ca_dir: &Path,
    serial: &str,
    reason: Option<&str>,
    at: OffsetDateTime,
) -> Result<(), PkiError> {
    use std::io::Write;
    let path = ca_dir.join(REVOCATION_LOG_FILE);
    let line = serde_json::json!({
        "ts": super::rfc3339(at),
        "serial": serial,
        "reason": reason,
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| files::io_error(&path, source))?;
    writeln!(file, "{line}").map_err(|source| files::io_error(&path, source))
}

/// Accepts `8f01`, `8F:01`, `0x8f01`; returns the DER magnitude with a sign byte if the
/// top bit is set (serials are positive).
fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        field: "--serial",
        value: text.to_string(),
        reason,
    };
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid("expected a hexadecimal serial of at most 20 bytes"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| invalid("expected a hexadecimal serial"))?;
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes.drain(..first);
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    Ok(bytes)
}

fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if first == raw.len() {
        return "00".into();
    }
    super::inspect::hex(&raw[first..])
}

fn to_time(unix: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).ok()
}

fn bad(path: &Path, reason: String) -> PkiError {
    PkiError::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Identity, Validity};

    #[test]
    fn revoking_a_login_cert_puts_its_serial_in_a_signed_crl_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path()).unwrap();
        let cert = ca
            .issue_login(
                "alice",
                &[],
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .unwrap();
        let identity = Identity::from_der(cert.cert_der().as_ref()).unwrap();

        let first = revoke(
            dir.path(),
            Some(&identity.serial_hex),
            Some("key compromise"),
            DEFAULT_CRL_VALIDITY,
        )
        .unwrap();
        assert_eq!(
            (first.number, first.revoked),
            (1, 1),
            "first CRL lists one serial"
        );
        let list = RevocationList::load(&first.path).unwrap();
        assert!(
            list.is_revoked(&identity.serial_hex),
            "serial {} missing",
            identity.serial_hex
        );

        let again = revoke(
            dir.path(),
            Some(&identity.serial_hex.to_uppercase()),
            None,
            DEFAULT_CRL_VALIDITY,
        )
        .unwrap();
        assert!(
            again.already_listed,
            "revoking twice must not add a second entry"
        );
        assert_eq!(
            (again.number, again.revoked),
            (2, 1),
            "CRL number grows, list does not"
        );
    }

    #[test]
    fn the_crl_is_accepted_by_rustls_and_refuses_the_revoked_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path()).unwrap();
        let cert = ca
            .issue_login(
                "bob",
                &[],
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .unwrap();
        let identity = Identity::from_der(cert.cert_der().as_ref()).unwrap();
        revoke(
            dir.path(),
            Some(&identity.serial_hex),
            None,
            DEFAULT_CRL_VALIDITY,
        )
        .unwrap();
        let list = RevocationList::load(&dir.path().join(CRL_FILE)).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .with_crls([list.der.clone()])
        .build()
        .expect("rustls must accept our CRL");
        let now = rustls_pki_types::UnixTime::now();
        let err = verifier
            .verify_client_cert(cert.cert_der(), &[], now)
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "expected Revoked, got {err:?}"
        );
    }

    #[test]
    fn serials_parse_in_the_forms_people_paste() {
        assert_eq!(parse_serial("8f:01").unwrap(), vec![0, 0x8f, 0x01]);
        assert_eq!(parse_serial("0x7F00").unwrap(), vec![0x7f, 0x00]);
        assert!(parse_serial("xyz").is_err(), "non-hex must be refused");
        assert_eq!(serial_hex(&parse_serial("008f01").unwrap()), "8f01");
    }
}
