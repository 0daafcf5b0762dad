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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Validity, der};

    fn ca() -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::init(dir.path()).expect("making a CA");
        (dir, ca)
    }

    /// A login certificate whose subject is replaced by `subject` (a DER Name).
    fn with_subject(ca: &Ca, subject: &[u8]) -> Vec<u8> {
        let cert = ca
            .issue_login(
                "placeholder",
                &[],
                Validity::starting_now(std::time::Duration::from_secs(60)),
            )
            .expect("issuing");
        der::replace_subject(cert.cert_der(), subject, ca.issuer_key()).expect("re-signing")
    }

    #[test]
    fn a_login_certificate_without_groups_has_an_empty_group_list() {
        let (_dir, ca) = ca();
        let cert = ca
            .issue_login(
                "bob",
                &[],
                Validity::starting_now(std::time::Duration::from_secs(60)),
            )
            .expect("issuing");
        let id = Identity::from_der(cert.cert_der()).expect("identity");
        assert_eq!(id.user, "bob", "user");
        assert!(
            id.groups.is_empty(),
            "no groups were issued: {:?}",
            id.groups
        );
        assert_eq!(id.subject, "CN=bob", "subject");
        assert!(id.is_valid_at(time::OffsetDateTime::now_utc()), "valid now");
        assert!(
            id.lifetime() <= time::Duration::minutes(6),
            "one minute plus the skew allowance: {}",
            id.lifetime()
        );
    }

    #[test]
    fn a_subject_without_exactly_one_cn_is_refused() {
        let (_dir, ca) = ca();
        let no_cn = der::tlv(0x30, &[]);
        let err = Identity::from_der(&with_subject(&ca, &no_cn)).expect_err("no CN accepted");
        assert!(err.to_string().contains("no CN"), "no-CN error: {err}");

        let mut two = der::login_subject("alice", &[]);
        let second = der::login_subject("bob", &[]);
        // Splice bob's RDN into alice's Name: both are one short SEQUENCE of one RDN.
        let mut rdns = two.split_off(2);
        rdns.extend_from_slice(&second[2..]);
        let two_cns = der::tlv(0x30, &rdns);
        let err = Identity::from_der(&with_subject(&ca, &two_cns)).expect_err("two CNs");
        assert!(
            err.to_string().contains("more than one CN"),
            "ambiguity error: {err}"
        );
    }

    #[test]
    fn a_cn_the_ca_would_not_issue_is_refused() {
        let (_dir, ca) = ca();
        let subject = der::login_subject("eve\nadmin", &[]);
        let err = Identity::from_der(&with_subject(&ca, &subject)).expect_err("control char");
        assert!(
            err.to_string().contains("control"),
            "control character error: {err}"
        );
    }

    #[test]
    fn a_ca_certificate_is_not_an_identity() {
        let (_dir, ca) = ca();
        let err = Identity::from_der(ca.cert_der()).expect_err("the root became an identity");
        assert!(
            err.to_string().contains("CA certificate"),
            "CA refusal: {err}"
        );
    }

    #[test]
    fn trailing_bytes_after_the_certificate_are_refused() {
        let (_dir, ca) = ca();
        let cert = ca
            .issue_login(
                "alice",
                &[],
                Validity::starting_now(std::time::Duration::from_secs(60)),
            )
            .expect("issuing");
        let mut der = cert.cert_der().to_vec();
        der.push(0);
        assert!(
            Identity::from_der(&der).is_err(),
            "trailing garbage was accepted"
        );
    }
}
