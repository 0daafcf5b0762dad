//! Who a verified client certificate says it is. The gateway calls `Identity::from_der`
//! on the end-entity certificate after rustls has checked its chain, validity and EKU;
//! this module only reads names and numbers out of it, for policy and audit. It still
//! fails closed on anything it would not have issued: no CN or more than one, a CN or
//! group that breaks the naming rules, a CA certificate.

use super::inspect::{CertInfo, CertKind};
use super::{PkiError, names};

/// Who a verified client certificate says it is. Built by the gateway from the DER of
/// the end-entity certificate that rustls already verified.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The subject CN: the PostgreSQL user name.
    pub user: String,
    /// The subject OUs, in certificate order (see docs/certificates.md).
    pub groups: Vec<String>,
    /// The subject DN in RFC 4514 form, e.g. `CN=alice,OU=dba`.
    pub subject: String,
    /// Lower-case hex, no colons, no leading "00" padding byte.
    pub serial_hex: String,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256_hex: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Identity {
    /// Reads the identity out of one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Identity, PkiError> {
        let info = CertInfo::from_der(der)?;
        if info.kind == CertKind::Authority {
            return Err(PkiError::BadCertificate(
                "a CA certificate cannot be used to log in".to_owned(),
            ));
        }

        let user = match info.common_names.as_slice() {
            [cn] => cn.clone(),
            [] => {
                return Err(PkiError::BadCertificate(
                    "the subject has no CN, so it names no user".to_owned(),
                ));
            }
            _ => {
                return Err(PkiError::BadCertificate(
                    "the subject has more than one CN, so the user is ambiguous".to_owned(),
                ));
            }
        };
        names::validate_user(&user)?;
        for group in &info.organizational_units {
            names::validate_group(group)?;
        }

        Ok(Identity {
            user,
            groups: info.organizational_units,
            subject: info.subject,
            serial_hex: info.serial_hex,
            sha256_hex: info.sha256_hex,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// The whole span the certificate was issued for; the gateway compares it with its
    /// `max_cert_lifetime` so that short-lived is enforced, not hoped for.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }

    /// Whether `t` lies within `[not_before, not_after]`.
    pub fn is_valid_at(&self, t: time::OffsetDateTime) -> bool {
        self.not_before <= t && t <= self.not_after
    }
}
