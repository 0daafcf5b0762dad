//! Placeholder until the pki branch lands: the types the gateway consumes.

/// Who a verified client certificate says it is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub subject: String,
    pub serial_hex: String,
    pub sha256_hex: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let err = |reason: String| PkiError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate".into()));
    }
    Ok(certs)
}

pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Identity {
    /// Placeholder extraction until the pki branch lands.
    pub fn from_der(der: &[u8]) -> Result<Identity, PkiError> {
        use sha2::Digest;
        use x509_parser::prelude::*;
        let err = |reason: String| PkiError::Pem {
            path: PathBuf::from("<peer>"),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| err(e.to_string()))?;
        let user = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| err("no CN".into()))?
            .to_string();
        let groups = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok().map(str::to_string))
            .collect();
        let ts = |t: ASN1Time| {
            ::time::OffsetDateTime::from_unix_timestamp(t.timestamp())
                .map_err(|e| err(e.to_string()))
        };
        Ok(Identity {
            user,
            groups,
            subject: cert.subject().to_string(),
            serial_hex: cert.raw_serial_as_string().replace(':', ""),
            sha256_hex: sha2::Sha256::digest(der)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_before: ts(cert.validity().not_before)?,
            not_after: ts(cert.validity().not_after)?,
        })
    }
}
