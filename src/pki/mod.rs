//! The certificate authority and everything pgtunnel knows about certificates.
//!
//! This module owns the root CA on disk (`Ca`), the certificates it issues (`IssuedCert`:
//! short-lived login certificates and server certificates), reading PEM files (`pem`),
//! and turning a client certificate into an `Identity` the gateway's policy and audit
//! trail can use. It does not verify chains or check signatures on peer certificates:
//! rustls does that before `Identity::from_der` ever sees the bytes. TLS configurations
//! live in `tls`; the PostgreSQL settings that trust this CA live in `pg::settings`.
//!
//! Where a login certificate records its groups is a choice documented in
//! docs/certificates.md: one subject OU attribute per group, after which comes the CN.

mod ca;
pub mod crl;
mod der;
mod files;
mod identity;
mod inspect;
mod names;
pub mod pem;

#[cfg(test)]
mod handshake_tests;

use std::path::PathBuf;
use std::sync::Arc;

pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, Ca, DEFAULT_CA_NAME, DEFAULT_CA_TTL, IssuedCert, unique_ca_name,
};
pub use identity::Identity;
pub use inspect::{CertInfo, CertKind};
pub use names::{
    MAX_GROUP_LEN, MAX_USER_LEN, validate_ca_name, validate_dns_name, validate_group, validate_user,
};
pub use pem::{load_certs, load_private_key};

/// How far back a certificate's not-before is set so that a peer whose clock runs a
/// little behind ours does not see a fresh certificate as "not yet valid".
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Everything that can go wrong issuing, reading or inspecting certificates. Each message
/// names the file it is about when there is one.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    // The I/O error is part of the message rather than a `source`, so that a report
    // that prints the whole chain does not repeat it.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: already exists; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error(
        "{}: no CA here ({} is missing); create one with `pgtunnel ca init --dir {}`",
        dir.display(),
        CA_CERT_FILE,
        dir.display()
    )]
    CaMissing { dir: PathBuf },
    #[error(
        "{}: mode {mode:04o} lets other users read the CA private key; run `chmod 600` on it",
        path.display()
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{}: no certificate found (expected a PEM \"CERTIFICATE\" block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found (expected a PEM \"PRIVATE KEY\" block)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("certificate: {0}")]
    BadCertificate(String),
    #[error("{field} {value:?}: {reason}")]
    InvalidName {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("certificate lifetime: {0}")]
    InvalidValidity(String),
    #[error("generating certificate: {0}")]
    Generate(rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
}

impl From<rcgen::Error> for PkiError {
    fn from(err: rcgen::Error) -> PkiError {
        PkiError::Generate(err)
    }
}

/// When a certificate is valid: `[not_before, not_after]`, both inclusive as in RFC 5280.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// not_before = now - 5 minutes (clock skew), not_after = now + ttl.
    pub fn starting_now(ttl: std::time::Duration) -> Validity {
        let now = time::OffsetDateTime::now_utc();
        Validity {
            not_before: now.saturating_sub(to_time(CLOCK_SKEW)),
            not_after: now.saturating_add(to_time(ttl)),
        }
    }

    /// `[not_before, not_before + ttl]`, with no allowance for skew: for backdating, and
    /// for tests that need a certificate that is already expired or not valid yet.
    pub fn starting_at(not_before: time::OffsetDateTime, ttl: std::time::Duration) -> Validity {
        Validity {
            not_before,
            not_after: not_before.saturating_add(to_time(ttl)),
        }
    }

    /// The whole span from not-before to not-after.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }

    /// Refuses spans that are empty or backwards, and spans outside what an X.509
    /// GeneralizedTime can carry (years 0000 to 9999, RFC 5280 section 4.1.2.5).
    fn check(&self) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::InvalidValidity(format!(
                "not-after {} is not later than not-before {}",
                rfc3339(self.not_after),
                rfc3339(self.not_before)
            )));
        }
        for t in [self.not_before, self.not_after] {
            if !(0..=9999).contains(&t.year()) {
                return Err(PkiError::InvalidValidity(format!(
                    "{} is outside the years an X.509 certificate can carry",
                    rfc3339(t)
                )));
            }
        }
        Ok(())
    }
}

/// A UTC timestamp in RFC 3339 form with whole seconds, as `ca show` and errors print it.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A duration the way people read it: "8h", "89d 23h 59m", "4m 10s". Seconds are shown
/// only while under a day; the sign is dropped (callers say "ago" or "left").
pub fn human_duration(d: time::Duration) -> String {
    let total = d.whole_seconds().unsigned_abs();
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total % 86_400 / 3_600,
        total % 3_600 / 60,
        total % 60,
    );
    let mut parts = Vec::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "m")] {
        if value > 0 {
            parts.push(format!("{value}{unit}"));
        }
    }
    if days == 0 && (seconds > 0 || parts.is_empty()) {
        parts.push(format!("{seconds}s"));
    }
    parts.join(" ")
}

/// Converts, saturating at the largest span `time` can represent (far beyond year 9999,
/// which `Validity::check` refuses anyway).
fn to_time(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The crypto provider for randomness: the process default if one is installed,
/// otherwise the one this build was compiled with (aws-lc-rs unless the `ring` feature
/// replaced it).
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        return Arc::clone(provider);
    }
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// Fills `buf` from the provider's CSPRNG.
fn fill_random(buf: &mut [u8]) -> Result<(), PkiError> {
    crypto_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| PkiError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_now_backdates_by_the_clock_skew_and_lasts_the_ttl() {
        let before = time::OffsetDateTime::now_utc();
        let v = Validity::starting_now(std::time::Duration::from_secs(8 * 3600));
        let after = time::OffsetDateTime::now_utc();

        let skew = to_time(CLOCK_SKEW);
        assert!(
            v.not_before >= before - skew && v.not_before <= after - skew,
            "not_before {} should be five minutes before now",
            v.not_before
        );
        let expected = time::Duration::hours(8) + skew;
        assert!(
            (v.lifetime() - expected).abs() < time::Duration::seconds(1),
            "lifetime {} should be 8h plus the 5 minute skew allowance",
            v.lifetime()
        );
    }

    #[test]
    fn backwards_or_empty_validity_is_refused() {
        let t = time::macros::datetime!(2030-01-01 0:00 UTC);
        let empty = Validity {
            not_before: t,
            not_after: t,
        };
        assert!(
            matches!(empty.check(), Err(PkiError::InvalidValidity(_))),
            "an empty validity span must be refused"
        );
        let ancient = Validity::starting_at(
            time::macros::datetime!(-0001-06-01 0:00 UTC),
            std::time::Duration::from_secs(365 * 86_400),
        );
        assert!(
            matches!(ancient.check(), Err(PkiError::InvalidValidity(_))),
            "a validity before year 0 cannot be written in a certificate"
        );
    }

    #[test]
    fn an_enormous_ttl_saturates_instead_of_panicking() {
        let v = Validity::starting_now(std::time::Duration::from_secs(u64::MAX));
        assert!(
            v.not_after.year() >= 9999,
            "not_after should saturate at the last representable year, got {}",
            v.not_after
        );
    }

    #[test]
    fn human_duration_reads_like_the_ttl_flags() {
        let cases = [
            (time::Duration::hours(8), "8h"),
            (time::Duration::seconds(90 * 86_400 - 60), "89d 23h 59m"),
            (time::Duration::seconds(250), "4m 10s"),
            (time::Duration::ZERO, "0s"),
            (time::Duration::seconds(-3700), "1h 1m 40s"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "formatting {d}");
        }
    }
}
