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
/// The root's CN unless `pgtunnel ca init --name` says otherwise.
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
    /// Makes a new root named "pgtunnel root CA", valid for ten years, in `dir`: writes
    /// DIR/ca.crt and DIR/ca.key (0600). Refuses to overwrite either file.
    pub fn init(dir: &Path) -> Result<Ca, PkiError> {
        Ca::init_with(dir, DEFAULT_CA_NAME, Validity::starting_now(DEFAULT_CA_TTL))
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
        if validity.not_after > self.not_after {
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
