//! Reading what a certificate says, for `pgtunnel ca show` and for `Identity`. Parsing is
//! x509-parser's; this module picks out the fields an operator or the gateway acts on and
//! renders names the way PostgreSQL and OpenSSL print them (RFC 4514: most specific
//! attribute first, `CN=alice,OU=dba`). It checks no signature and no chain: it describes
//! a certificate, it does not vouch for it.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use super::PkiError;

/// What a certificate is for, judged from its basic constraints and extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// May sign certificates (basicConstraints cA = TRUE).
    Authority,
    /// A login certificate: clientAuth and not serverAuth.
    Login,
    /// A server certificate: serverAuth and not clientAuth.
    Server,
    /// Anything else, including certificates that claim both or neither purpose.
    Other,
}

impl CertKind {
    pub fn describe(self) -> &'static str {
        match self {
            CertKind::Authority => "certificate authority",
            CertKind::Login => "login certificate (client)",
            CertKind::Server => "server certificate",
            CertKind::Other => "other",
        }
    }
}

/// The fields of one certificate that pgtunnel shows or decides on.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The subject in RFC 4514 form.
    pub subject: String,
    /// The issuer in RFC 4514 form.
    pub issuer: String,
    /// Every CN in the subject, in certificate order (a login certificate has exactly one).
    pub common_names: Vec<String>,
    /// Every OU in the subject, in certificate order: a login certificate's groups.
    pub organizational_units: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    /// Lower-case hex of the serial's magnitude: no colons, no leading zero padding byte.
    pub serial_hex: String,
    /// Lower-case hex SHA-256 of the whole DER certificate.
    pub sha256_hex: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    pub kind: CertKind,
    /// Key usage bits by their RFC 5280 names, e.g. `digitalSignature`.
    pub key_usage: Vec<&'static str>,
    /// Extended key usages by name (`serverAuth`, `clientAuth`, ...) or dotted OID.
    pub extended_key_usage: Vec<String>,
    /// The subject public key, e.g. "ECDSA P-256".
    pub public_key: String,
}

impl CertInfo {
    /// Parses one DER certificate. Trailing bytes after it are an error: a certificate
    /// that carries extra data is not one we issued.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| PkiError::BadCertificate(format!("cannot parse: {err}")))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCertificate(format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            )));
        }

        let subject = cert.subject();
        let mut info = CertInfo {
            subject: rfc4514(subject),
            issuer: rfc4514(cert.issuer()),
            common_names: text_values(subject.iter_common_name(), "CN")?,
            organizational_units: text_values(subject.iter_organizational_unit(), "OU")?,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            emails: Vec::new(),
            uris: Vec::new(),
            serial_hex: serial_hex(cert.raw_serial()),
            sha256_hex: hex(&Sha256::digest(der)),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            kind: CertKind::Other,
            key_usage: Vec::new(),
            extended_key_usage: Vec::new(),
            public_key: public_key(&cert),
        };
        info.read_extensions(&cert)?;
        Ok(info)
    }

    /// Subject alternative names, key usage, extended key usage and the kind they imply.
    fn read_extensions(&mut self, cert: &X509Certificate<'_>) -> Result<(), PkiError> {
        let bad = |what: &str, err| PkiError::BadCertificate(format!("{what}: {err}"));

        let sans = cert
            .subject_alternative_name()
            .map_err(|e| bad("subject alternative name", e))?;
        for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => self.dns_names.push((*dns).to_owned()),
                GeneralName::RFC822Name(email) => self.emails.push((*email).to_owned()),
                GeneralName::URI(uri) => self.uris.push((*uri).to_owned()),
                GeneralName::IPAddress(bytes) => self.ip_addresses.push(ip_address(bytes)?),
                _ => {}
            }
        }

        if let Some(ku) = cert.key_usage().map_err(|e| bad("key usage", e))? {
            let ku = ku.value;
            let bits = [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
                (ku.encipher_only(), "encipherOnly"),
                (ku.decipher_only(), "decipherOnly"),
            ];
            self.key_usage = bits.iter().filter(|b| b.0).map(|b| b.1).collect();
        }

        let mut server_auth = false;
        let mut client_auth = false;
        if let Some(eku) = cert
            .extended_key_usage()
            .map_err(|e| bad("extended key usage", e))?
        {
            let eku = eku.value;
            (server_auth, client_auth) = (eku.server_auth, eku.client_auth);
            let named = [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ];
            self.extended_key_usage = named
                .iter()
                .filter(|n| n.0)
                .map(|n| n.1.to_owned())
                .chain(eku.other.iter().map(|oid| oid.to_id_string()))
                .collect();
        }

        let is_ca = cert
            .basic_constraints()
            .map_err(|e| bad("basic constraints", e))?
            .is_some_and(|bc| bc.value.ca);
        self.kind = match (is_ca, server_auth, client_auth) {
            (true, _, _) => CertKind::Authority,
            (false, false, true) => CertKind::Login,
            (false, true, false) => CertKind::Server,
            _ => CertKind::Other,
        };
        Ok(())
    }
}

/// Lower-case hex without separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing into a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The serial as lower-case hex of its magnitude: DER puts a 0x00 in front of a positive
/// INTEGER whose top bit is set; that byte is encoding, not number, so it is dropped.
fn serial_hex(raw: &[u8]) -> String {
    let first_significant = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let magnitude = &raw[first_significant..];
    if magnitude.is_empty() {
        return "00".to_owned();
    }
    hex(magnitude)
}

/// The text of every attribute `values` yields. A CN or OU that is not a string type is
/// an error: such a name could not be compared with a user or group name honestly.
fn text_values<'a>(
    values: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<Vec<String>, PkiError> {
    values
        .map(|attr| {
            attr.as_str().map(str::to_owned).map_err(|_| {
                PkiError::BadCertificate(format!("the subject's {what} is not a text string"))
            })
        })
        .collect()
}

fn ip_address(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(PkiError::BadCertificate(format!(
        "an IP address SAN of {} bytes",
        bytes.len()
    )))
}

/// A short description of the subject public key.
fn public_key(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "ECDSA P-256".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "ECDSA P-521".to_owned(),
        ("1.3.101.112", _) => "Ed25519".to_owned(),
        ("1.2.840.113549.1.1.1", _) => match spki.parsed() {
            Ok(key) => format!("RSA {} bits", key.key_size()),
            Err(_) => "RSA".to_owned(),
        },
        (other, _) => format!("algorithm {other}"),
    }
}

/// A distinguished name as RFC 4514 writes it: RDNs from last to first, separated by
/// commas; attributes within an RDN joined by '+'.
pub(crate) fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| format!("{}={}", attribute_type(attr), attribute_value(attr)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// The short names RFC 4514 section 3 lists; any other type is its dotted OID.
fn attribute_type(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return oid,
    };
    short.to_owned()
}

/// A string value escaped per RFC 4514 section 2.4; a value of any other type as '#' and
/// the hex of its encoding (section 2.4, first rule).
fn attribute_value(attr: &AttributeTypeAndValue<'_>) -> String {
    let Ok(text) = attr.as_str() else {
        let value = attr.attr_value();
        // Universal-class tags below 31 fit the one-byte form; anything else falls back
        // to the content octets alone, which is still unambiguous for display.
        let encoded = match u8::try_from(value.tag().0) {
            Ok(tag) if tag < 0x1f => {
                let constructed = if value.header.is_constructed() {
                    0x20
                } else {
                    0
                };
                super::der::tlv(tag | constructed, value.as_bytes())
            }
            _ => value.as_bytes().to_vec(),
        };
        return format!("#{}", hex(&encoded));
    };

    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_drops_the_sign_padding_byte_only() {
        assert_eq!(
            serial_hex(&[0x00, 0x8f, 0x01]),
            "8f01",
            "padding byte dropped"
        );
        assert_eq!(
            serial_hex(&[0x7f, 0x00]),
            "7f00",
            "trailing zeros are digits"
        );
        assert_eq!(serial_hex(&[0x00]), "00", "zero stays visible");
    }

    #[test]
    fn rfc4514_reverses_rdns_and_escapes_specials() {
        let der = super::super::der::login_subject(
            "alice, admin",
            &["dba".to_owned(), "#ops".to_owned(), " x ".to_owned()],
        );
        let (_, name) =
            <X509Name as x509_parser::prelude::FromDer<_>>::from_der(&der).expect("parse");
        assert_eq!(
            rfc4514(&name),
            r"CN=alice\, admin,OU=\ x\ ,OU=\#ops,OU=dba",
            "most specific first, commas, leading '#' and edge spaces escaped"
        );
    }

    #[test]
    fn garbage_is_a_bad_certificate_error() {
        for junk in [&b""[..], b"\x30\x03\x02\x01\x01", &[0xff; 64]] {
            let err = CertInfo::from_der(junk).expect_err("garbage parsed as a certificate");
            assert!(
                matches!(err, PkiError::BadCertificate(_)),
                "expected BadCertificate for {junk:02x?}, got {err:?}"
            );
        }
    }
}
