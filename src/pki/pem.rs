//! Reading certificates and private keys from PEM files for rustls. A file that holds
//! nothing of the kind asked for is an error naming the file, never an empty result a
//! caller could mistake for "no client authentication". The PEM parsing itself is
//! rustls-pki-types'; this module adds the file names and the refusals.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PkiError;

/// Every certificate in `path`, in file order (end-entity first, for a chain file).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `path` (PKCS#8, SEC1 or PKCS#1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        pem::Error::NoItemsFound => PkiError::NoPrivateKey {
            path: path.to_owned(),
        },
        other => pem_error(path, other),
    })
}

fn pem_error(path: &Path, err: pem::Error) -> PkiError {
    match err {
        pem::Error::Io(source) => super::files::io_error(path, source),
        other => PkiError::BadFile {
            path: path.to_owned(),
            reason: format!("not a valid PEM file: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty.crt");
        std::fs::write(&path, "just some text\n").expect("writing");

        let err = load_certs(&path).expect_err("an empty certificate list was accepted");
        assert!(
            matches!(err, PkiError::NoCertificate { .. }) && err.to_string().contains("empty.crt"),
            "expected a no-certificate error naming the file, got: {err}"
        );
        let err = load_private_key(&path).expect_err("a missing key was accepted");
        assert!(
            matches!(err, PkiError::NoPrivateKey { .. }),
            "expected a no-private-key error, got: {err}"
        );
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let path = Path::new("/nonexistent/pgtunnel/ca.crt");
        let err = load_certs(path).expect_err("a missing file loaded");
        assert!(
            matches!(err, PkiError::Io { .. })
                && err.to_string().starts_with(path.to_str().unwrap()),
            "expected an I/O error starting with the path, got: {err}"
        );
    }

    #[test]
    fn a_broken_pem_block_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broken.crt");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("writing");
        let err = load_certs(&path).expect_err("broken base64 accepted");
        assert!(
            matches!(err, PkiError::BadFile { .. }),
            "expected a bad-file error, got: {err}"
        );
    }
}
