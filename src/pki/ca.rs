//! The root CA on disk and the certificates it issues. A CA is a folder with `ca.crt`
//! and `ca.key` (mode 0600), an ECDSA P-256 root with path length 0: it signs login and
//! server certificates directly and nothing else. Login certificates name the PostgreSQL
//! user in the CN and the groups in OUs, carry only the clientAuth EKU and a random
//! 16-byte serial; server certificates carry DNS/IP SANs and only serverAuth. Issuing
//! never writes outside the paths it is given; `IssuedCert::write` replaces the target
//! files atomically so that renewing a certificate in place is safe while the agent runs.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use super::inspect::{CertInfo, CertKind};
use super::{PkiError, Validity, der, names, rfc3339};

/// The CA certificate's file name inside the CA folder.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key's file name inside the CA folder.
pub const CA_KEY_FILE: &str = "ca.key";
/// The start of a root's CN unless `pgtunnel ca init --name` says otherwise; see
/// `unique_ca_name` for the rest.
pub const DEFAULT_CA_NAME: &str = "pgtunnel root CA";
/// How long a root made by `Ca::init` lasts: ten years of 365 days.
pub const DEFAULT_CA_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// Serial numbers are 16 random bytes: well over the 64 bits of entropy the CA/Browser
/// Forum asks for, and under RFC 5280's limit of 20 octets (section 4.1.2.2).
const SERIAL_LEN: usize = 16;

/// A root certificate with its private key, ready to issue.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: time::OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its private key, held in memory until written.
pub struct IssuedCert {
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Ca {
    /// Makes a new root named by `unique_ca_name`, valid for ten years, in `dir`: writes
    /// DIR/ca.crt and DIR/ca.key (0600). Refuses to overwrite either file.
    pub fn init(dir: &Path) -> Result<Ca, PkiError> {
        let name = unique_ca_name()?;
        Ca::init_with(dir, &name, Validity::starting_now(DEFAULT_CA_TTL))
    }

    /// Like `init`, with the root's CN and validity chosen by the caller.
    pub fn init_with(dir: &Path, name: &str, validity: Validity) -> Result<Ca, PkiError> {
        names::validate_ca_name(name)?;
        validity.check()?;

        // Refuse before generating or writing anything, so a refusal changes nothing.
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if path.symlink_metadata().is_ok() {
                return Err(PkiError::Exists { path: path.clone() });
            }
        }
        // The folder stays traversable (0755): ca.crt inside it is public and PostgreSQL's
        // ssl_ca_file may point straight at it; ca.key is protected by its own 0600.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| files::io_error(dir, source))?;

        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;

        // The key goes first: if writing the certificate then fails, the key is removed
        // again so no half CA is left behind to confuse the next `init`.
        files::create_new(&key_path, key.serialize_pem().as_bytes(), PRIVATE_MODE)?;
        if let Err(err) = files::create_new(&cert_path, cert.pem().as_bytes(), PUBLIC_MODE) {
            let _ = std::fs::remove_file(&key_path);
            return Err(err);
        }
        Ca::from_parts(cert.pem(), cert.der().clone(), key, &cert_path)
    }

    /// Reads the CA in `dir`. The key must match the certificate and must not be readable
    /// by other users (a CA key that others can read is refused, as ssh refuses such keys).
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() {
            return Err(PkiError::CaMissing {
                dir: dir.to_owned(),
            });
        }

        let mode = files::mode(&key_path)?;
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyReadableByOthers {
                path: key_path,
                mode,
            });
        }

        let cert_der = super::pem::load_certs(&cert_path)?.swap_remove(0);
        let key_pem = String::from_utf8(files::read(&key_path)?)
            .map_err(|_| bad_file(&key_path, "not a PEM file (it is not even text)".to_owned()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|err| bad_file(&key_path, format!("not a usable private key: {err}")))?;
        let cert_pem = pem_of(&cert_der);
        Ca::from_parts(cert_pem, cert_der, key, &cert_path)
    }

    /// The root certificate, PEM-encoded: what gateways, agents and PostgreSQL trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER-encoded, for building rustls root stores.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The signing half, for the CRL (`crl::revoke`).
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// When the root expires; nothing it issues may outlive it.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }

    /// Issues a login certificate: CN = `user`, one OU per group (in the order given),
    /// EKU clientAuth only, a random serial.
    pub fn issue_login(
        &self,
        user: &str,
        groups: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        names::validate_user(user)?;
        for (i, group) in groups.iter().enumerate() {
            names::validate_group(group)?;
            if groups[..i].contains(group) {
                return Err(PkiError::InvalidName {
                    field: "group",
                    value: group.clone(),
                    reason: "given more than once",
                });
            }
        }
        self.check_validity(validity)?;

        let key = new_key()?;
        let mut params = leaf_params(validity)?;
        params.distinguished_name = common_name(user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;

        // rcgen can hold only one OU; the real subject is put in afterwards (see `der`).
        let subject = der::login_subject(user, groups);
        let cert_der = der::replace_subject(cert.der(), &subject, self.issuer.key())?;
        Ok(IssuedCert::new(CertificateDer::from(cert_der), &key))
    }

    /// Issues a server certificate with these DNS and IP SANs, EKU serverAuth only. The CN
    /// is the first DNS name (the first IP address if there is none), for tools that still
    /// show the CN; clients match the SANs.
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let cn = match (dns.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err(PkiError::InvalidName {
                    field: "server names",
                    value: String::new(),
                    reason: "a server certificate needs at least one DNS name or IP address",
                });
            }
        };
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for name in dns {
            names::validate_dns_name(name)?;
            let ia5 = name.as_str().try_into()?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.check_validity(validity)?;

        let key = new_key()?;
        let mut params = leaf_params(validity)?;
        params.distinguished_name = common_name(&cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert::new(cert.der().clone(), &key))
    }

    /// The root's signing key, for tests that build unusual certificates by hand.
    #[cfg(test)]
    pub(crate) fn issuer_key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Checks that the loaded pieces belong together and builds the issuer.
    fn from_parts(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
        cert_path: &Path,
    ) -> Result<Ca, PkiError> {
        let info = CertInfo::from_der(&cert_der).map_err(|err| bad_file(cert_path, err))?;
        if info.kind != CertKind::Authority {
            return Err(bad_file(cert_path, "not a CA certificate"));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|err| bad_file(cert_path, format!("cannot parse: {err}")))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            let key_path = cert_path.with_file_name(CA_KEY_FILE);
            return Err(bad_file(&key_path, "does not belong to the CA certificate"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            cert_pem,
            cert_der,
            not_after: info.not_after,
            issuer,
        })
    }

    /// A leaf must have a sane span and must not outlive the root that vouches for it.
    fn check_validity(&self, validity: Validity) -> Result<(), PkiError> {
        validity.check()?;
        // Certificates carry whole seconds; compare what will actually be written.
        let not_after = validity
            .not_after
            .replace_nanosecond(0)
            .unwrap_or(validity.not_after);
        if not_after > self.not_after {
            return Err(PkiError::InvalidValidity(format!(
                "it would end {}, after the CA certificate expires ({})",
                rfc3339(validity.not_after),
                rfc3339(self.not_after)
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Ca {
    /// Shows the certificate's expiry only; the key stays out of every log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    fn new(cert_der: CertificateDer<'static>, key: &KeyPair) -> IssuedCert {
        IssuedCert {
            cert_pem: pem_of(&cert_der),
            cert_der,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// The private key, PEM-encoded PKCS#8. Handle with care: never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key as rustls takes it.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes PREFIX.crt (0644) and PREFIX.key (0600, created with that mode, never
    /// readable by others even briefly) and returns both paths. Existing files are
    /// replaced atomically, key first; a reader that picks up the pair between the two
    /// renames sees a new key with the old certificate and must retry.
    pub fn write(&self, prefix: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
        let with_suffix = |suffix: &str| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let cert_path = with_suffix(".crt");
        let key_path = with_suffix(".key");
        files::replace(&key_path, self.key_pem.as_bytes(), PRIVATE_MODE)?;
        files::replace(&cert_path, self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        Ok((cert_path, key_path))
    }
}

impl std::fmt::Debug for IssuedCert {
    /// Shows the certificate only; the key stays out of every log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// "pgtunnel root CA" and eight random hex digits. Verifiers find a certificate's issuer
/// by name, so two roots with the same name make a certificate from the wrong one look
/// like a forgery (webpki reports a bad signature) instead of "unknown issuer"; a
/// distinct name per root keeps that diagnosis, and the gateway's audit reason, right.
pub fn unique_ca_name() -> Result<String, PkiError> {
    let mut tag = [0u8; 4];
    super::fill_random(&mut tag)?;
    Ok(format!("{DEFAULT_CA_NAME} {}", super::inspect::hex(&tag)))
}

/// What login and server certificates share: not a CA, signing only, a random serial,
/// and an authority key identifier that points at the root.
fn leaf_params(validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 16 random bytes with the top bit cleared (so the INTEGER is positive without a padding
/// byte) and the next bit set (so it never shrinks to fewer bytes): always 32 hex digits.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_LEN];
    super::fill_random(&mut bytes)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let block = pem::Pem::new("CERTIFICATE", der.as_ref());
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn bad_file(path: &Path, reason: impl ToString) -> PkiError {
    PkiError::BadFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use sha2::Digest;

    use super::*;
    use crate::pki::Identity;

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    fn new_ca() -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::init(dir.path()).expect("making a CA");
        (dir, ca)
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|g| (*g).to_owned()).collect()
    }

    #[test]
    fn init_writes_a_p256_root_and_a_key_only_the_owner_can_read() {
        let (dir, ca) = new_ca();

        let key_mode = files::mode(&dir.path().join(CA_KEY_FILE)).expect("key mode");
        assert_eq!(key_mode, 0o600, "ca.key must be 0600");
        let info = CertInfo::from_der(ca.cert_der()).expect("parsing the root");
        assert_eq!(info.kind, CertKind::Authority, "the root must be a CA");
        assert_eq!(info.public_key, "ECDSA P-256", "the root's key type");
        assert!(
            info.subject.starts_with("CN=pgtunnel root CA ") && info.subject.len() == 28,
            "the default root name plus eight hex digits: {}",
            info.subject
        );
        assert_eq!(
            info.key_usage,
            ["keyCertSign", "cRLSign"],
            "a root only signs"
        );
        let on_disk = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("ca.crt");
        assert_eq!(on_disk, ca.cert_pem(), "ca.crt holds the root's PEM");
    }

    #[test]
    fn two_default_roots_have_different_names() {
        let (_a_dir, a) = new_ca();
        let (_b_dir, b) = new_ca();
        let name = |ca: &Ca| CertInfo::from_der(ca.cert_der()).expect("parsing").subject;
        assert_ne!(name(&a), name(&b), "default root names must not collide");
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_ca_and_changes_nothing() {
        let (dir, ca) = new_ca();
        let key_before = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("ca.key");

        let err = Ca::init(dir.path()).expect_err("a second init overwrote the CA");
        assert!(
            matches!(err, PkiError::Exists { .. }) && err.to_string().contains("ca.crt"),
            "the refusal should name the existing file: {err}"
        );
        let key_after = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("ca.key");
        assert_eq!(key_before, key_after, "the CA key must be untouched");
        let reloaded = Ca::load(dir.path()).expect("loading the CA");
        assert_eq!(
            reloaded.cert_pem(),
            ca.cert_pem(),
            "the CA certificate must be untouched"
        );
    }

    #[test]
    fn init_refuses_when_only_the_key_is_left_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(CA_KEY_FILE), "old key").expect("seeding a key");
        let err = Ca::init(dir.path()).expect_err("init overwrote a stray key");
        assert!(
            err.to_string().contains("ca.key"),
            "should name ca.key: {err}"
        );
    }

    #[test]
    fn load_of_a_folder_without_a_ca_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Ca::load(&dir.path().join("nothing")).expect_err("loaded a missing CA");
        assert!(
            matches!(err, PkiError::CaMissing { .. }) && err.to_string().contains("ca init"),
            "expected a no-CA error that says how to make one: {err}"
        );
    }

    #[test]
    fn load_refuses_a_ca_key_other_users_can_read() {
        let (dir, _ca) = new_ca();
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        let err = Ca::load(dir.path()).expect_err("loaded a world-readable CA key");
        assert!(
            matches!(err, PkiError::KeyReadableByOthers { mode: 0o644, .. }),
            "expected a key-permission error, got: {err}"
        );
    }

    #[test]
    fn load_refuses_a_key_that_belongs_to_another_root() {
        let (dir, _ca) = new_ca();
        let (other_dir, _other) = new_ca();
        std::fs::copy(
            other_dir.path().join(CA_KEY_FILE),
            dir.path().join(CA_KEY_FILE),
        )
        .expect("swapping in another CA's key");

        let err = Ca::load(dir.path()).expect_err("loaded a mismatched key");
        assert!(
            err.to_string().contains("does not belong"),
            "expected a mismatch error: {err}"
        );
    }

    #[test]
    fn a_login_certificate_round_trips_into_the_identity_it_was_issued_for() {
        let (_dir, ca) = new_ca();
        let validity = Validity::starting_now(8 * HOUR);
        let cert = ca
            .issue_login("alice", &groups(&["dba", "ops team"]), validity)
            .expect("issuing");

        let id = Identity::from_der(cert.cert_der()).expect("reading the identity");
        assert_eq!(id.user, "alice", "user is the CN");
        assert_eq!(
            id.groups,
            ["dba", "ops team"],
            "groups are the OUs, in order"
        );
        assert_eq!(
            id.subject, "CN=alice,OU=ops team,OU=dba",
            "RFC 4514 subject"
        );
        // X.509 times have whole seconds.
        let whole = |t: time::OffsetDateTime| t.replace_nanosecond(0).expect("0 is valid");
        assert_eq!(
            id.not_before,
            whole(validity.not_before),
            "not-before as issued"
        );
        assert_eq!(
            id.not_after,
            whole(validity.not_after),
            "not-after as issued"
        );
        let digest = super::super::inspect::hex(&sha2::Sha256::digest(cert.cert_der()));
        assert_eq!(id.sha256_hex, digest, "fingerprint is SHA-256 of the DER");
    }

    #[test]
    fn login_certificates_have_distinct_random_serials_of_sixteen_bytes() {
        let (_dir, ca) = new_ca();
        let serials: Vec<String> = (0..8)
            .map(|_| {
                let cert = ca
                    .issue_login("alice", &[], Validity::starting_now(HOUR))
                    .expect("issuing");
                Identity::from_der(cert.cert_der())
                    .expect("identity")
                    .serial_hex
            })
            .collect();
        for serial in &serials {
            assert_eq!(serial.len(), 32, "16 bytes is 32 hex digits: {serial}");
            assert!(
                serial
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "lower-case hex without separators: {serial}"
            );
            assert!(!serial.starts_with("00"), "no padding byte: {serial}");
        }
        let mut unique = serials.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), serials.len(), "serials repeat: {serials:?}");
    }

    #[test]
    fn a_login_certificate_is_for_client_authentication_only() {
        let (_dir, ca) = new_ca();
        let cert = ca
            .issue_login("alice", &[], Validity::starting_now(HOUR))
            .expect("issuing");
        let info = CertInfo::from_der(cert.cert_der()).expect("parsing");
        assert_eq!(info.kind, CertKind::Login, "kind");
        assert_eq!(info.extended_key_usage, ["clientAuth"], "EKU");
        assert_eq!(info.key_usage, ["digitalSignature"], "key usage");
        assert!(
            info.dns_names.is_empty() && info.ip_addresses.is_empty(),
            "no SANs"
        );
        let root = CertInfo::from_der(ca.cert_der()).expect("parsing the root");
        assert_eq!(info.issuer, root.subject, "issued by our root");
    }

    #[test]
    fn issuing_refuses_bad_names_and_repeated_groups() {
        let (_dir, ca) = new_ca();
        let v = Validity::starting_now(HOUR);
        let cases = [
            ("", groups(&[]), "user"),
            ("al\u{0}ice", groups(&[]), "user"),
            ("alice", groups(&["dba", ""]), "group"),
            ("alice", groups(&["dba", "dba"]), "more than once"),
        ];
        for (user, groups, expected) in cases {
            let err = ca
                .issue_login(user, &groups, v)
                .expect_err("bad input was issued");
            assert!(
                err.to_string().contains(expected),
                "issuing {user:?} {groups:?}: error should mention {expected:?}: {err}"
            );
        }
    }

    #[test]
    fn a_certificate_may_not_outlive_its_root() {
        let (_dir, ca) = new_ca();
        let too_long = Validity::starting_now(DEFAULT_CA_TTL + HOUR);
        let err = ca
            .issue_login("alice", &[], too_long)
            .expect_err("a leaf outliving the root was issued");
        assert!(
            matches!(err, PkiError::InvalidValidity(_)) && err.to_string().contains("CA"),
            "expected a lifetime error naming the CA: {err}"
        );
    }

    #[test]
    fn a_server_certificate_carries_its_sans_and_server_auth_only() {
        let (_dir, ca) = new_ca();
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
        let cert = ca
            .issue_server(
                &["db.example".to_owned(), "*.db.example".to_owned()],
                &ips,
                Validity::starting_now(HOUR),
            )
            .expect("issuing");

        let info = CertInfo::from_der(cert.cert_der()).expect("parsing");
        assert_eq!(info.kind, CertKind::Server, "kind");
        assert_eq!(info.dns_names, ["db.example", "*.db.example"], "DNS SANs");
        assert_eq!(info.ip_addresses, ips, "IP SANs");
        assert_eq!(
            info.common_names,
            ["db.example"],
            "CN is the first DNS name"
        );
        assert_eq!(info.extended_key_usage, ["serverAuth"], "EKU");
    }

    #[test]
    fn a_server_certificate_needs_a_valid_name() {
        let (_dir, ca) = new_ca();
        let v = Validity::starting_now(HOUR);
        assert!(
            ca.issue_server(&[], &[], v).is_err(),
            "no names at all was accepted"
        );
        let err = ca
            .issue_server(&["bad name".to_owned()], &[], v)
            .expect_err("a DNS name with a space was accepted");
        assert!(
            err.to_string().contains("bad name"),
            "should quote the name: {err}"
        );
    }

    #[test]
    fn written_keys_are_0600_and_rewriting_replaces_both_files() {
        let (dir, ca) = new_ca();
        let prefix = dir.path().join("alice");
        let first = ca
            .issue_login("alice", &[], Validity::starting_now(HOUR))
            .expect("issuing");
        let (cert_path, key_path) = first.write(&prefix).expect("writing");
        assert_eq!(cert_path, dir.path().join("alice.crt"), "PREFIX.crt");
        assert_eq!(key_path, dir.path().join("alice.key"), "PREFIX.key");
        assert_eq!(files::mode(&key_path).expect("mode"), 0o600, "key mode");
        assert_eq!(
            files::mode(&cert_path).expect("mode"),
            0o644,
            "certificate mode"
        );

        let second = ca
            .issue_login("alice", &[], Validity::starting_now(HOUR))
            .expect("issuing again");
        second.write(&prefix).expect("rewriting in place");
        let key_on_disk = std::fs::read_to_string(&key_path).expect("reading key");
        let cert_on_disk = std::fs::read_to_string(&cert_path).expect("reading cert");
        assert_eq!(
            key_on_disk,
            second.key_pem(),
            "the new key replaced the old one"
        );
        assert_eq!(
            cert_on_disk, second.cert_pem,
            "the new certificate replaced the old one"
        );
        assert!(
            crate::pki::load_private_key(&key_path).is_ok(),
            "the written key loads back for rustls"
        );
    }

    #[test]
    fn debug_output_never_contains_the_private_key() {
        let (_dir, ca) = new_ca();
        let cert = ca
            .issue_login("alice", &[], Validity::starting_now(HOUR))
            .expect("issuing");
        let shown = format!("{cert:?} {ca:?}");
        assert!(
            !shown.contains("PRIVATE KEY"),
            "Debug leaked a key: {shown}"
        );
        assert!(
            !shown.contains(cert.key_pem().lines().nth(1).expect("key body")),
            "key body"
        );
    }
}
