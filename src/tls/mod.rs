//! rustls configurations for both ends of the tunnel, and the translation of rustls'
//! handshake errors into audit reasons.
//!
//! Both ends speak TLS 1.3 only, with ALPN `pgtunnel`. The gateway requires a client
//! certificate that chains to `client_ca`; the agent verifies the gateway's certificate
//! against its `--ca`, for a name that may differ from the SNI it sends (the SNI carries
//! the service name). The crypto provider is aws-lc-rs, or ring with the `ring` feature.
//! Loading PEM files is `pki`'s job; what to do with a finished handshake is the
//! gateway's and the agent's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

pub mod client_hello;
pub mod handshake;
pub mod record;
pub mod tickets;

use crate::audit::DenyReason;
use crate::pki;

/// The ALPN protocol id both ends of the tunnel agree on.
pub const ALPN_PGTUNNEL: &[u8] = b"pgtunnel";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{path}: no usable CA certificate: {reason}")]
    Roots { path: PathBuf, reason: String },
    #[error("{cert} / {key}: {reason}")]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// The crypto provider this build uses, with TLS 1.3's AES-128-GCM-SHA256 first.
///
/// Both crypto libraries list AES-256-GCM-SHA384 first. Its SHA-384 is the costlier
/// half of that choice: the handshake's transcript hash, HKDF and Finished MACs all run
/// on it, and aws-lc has no SHA-512 code for AMD's CPUs beyond the generic one (a
/// profile of the gateway under handshake load: 10 % of its CPU in
/// `sha512_block_data_order_nohw`), while SHA-256 runs on the SHA extensions most x86
/// and ARM server CPUs have. AES-128 is also the faster cipher for bulk data. The keys
/// come from X25519 or P-256 either way, which are 128-bit-strength, so AES-256 would
/// add no strength to the connection. The gateway insists on this order
/// (`ignore_client_order`); a client that offers only the others still gets them.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Loads the CA certificates in `path` into a root store; fails if none is usable.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = pki::load_certs(path)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Roots {
            path: path.to_path_buf(),
            reason: "no certificate in it parses as a CA".into(),
        });
    }
    Ok(roots)
}

/// The gateway's server configuration: TLS 1.3, client certificate required. Takes
/// loaded material so that the caller can name the config field of a file that fails.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = provider();
    // With a CRL, a certificate whose revocation status it cannot establish (issued by
    // another CA in client_ca than the CRL's) is refused: fail closed.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
            .with_crls(crls)
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_PGTUNNEL.to_vec()];
    // Our order of cipher suites, not the client's: see `provider`.
    config.ignore_client_order = true;
    // The record layer after the handshake is ours (or the kernel's): rustls must hand
    // over the traffic secrets.
    config.enable_secret_extraction = true;
    // One ticket per connection is all an agent needs to resume its next tunnel.
    match ticketer {
        Some(ticketer) => {
            config.ticketer = ticketer;
            config.send_tls13_tickets = 1;
        }
        None => config.send_tls13_tickets = 0,
    }
    Ok(config)
}

/// The agent's client configuration: TLS 1.3, login certificate presented, gateway
/// certificate verified against `ca` for `server_name`.
pub fn client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
    server_name: &str,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(ca)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|err| TlsError::Roots {
            path: ca.to_path_buf(),
            reason: err.to_string(),
        })?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
    let verifier = Arc::new(FixedNameVerifier { inner, name });
    let chain = pki::load_certs(cert)?;
    let private_key = pki::load_private_key(key)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| cert_key_error(cert, key, err))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, private_key)
        .map_err(|err| cert_key_error(cert, key, err))?;
    config.alpn_protocols = vec![ALPN_PGTUNNEL.to_vec()];
    config.enable_secret_extraction = true;
    Ok(config)
}

fn cert_key_error(cert: &Path, key: &Path, err: rustls::Error) -> TlsError {
    TlsError::CertKey {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: err.to_string(),
    }
}

/// Verifies the gateway's certificate for a fixed name instead of the SNI. The agent
/// sends the service name as SNI (that is how the gateway routes), but the certificate
/// names the gateway host; full WebPKI verification still runs, only the name differs.
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl fmt::Debug for FixedNameVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedNameVerifier")
            .field("name", &self.name)
            .finish()
    }
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Maps a rustls error from a server-side handshake to the audit reason an operator
/// acts on. Anything not about the client certificate is `handshake_failed`.
pub fn deny_reason(err: &rustls::Error) -> DenyReason {
    use rustls::Error as E;
    match err {
        E::NoCertificatesPresented => DenyReason::NoClientCert,
        E::InvalidCertificate(cert_err) => match cert_err {
            CertificateError::UnknownIssuer => DenyReason::UnknownCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                DenyReason::CertExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                DenyReason::CertNotYetValid
            }
            CertificateError::Revoked => DenyReason::Revoked,
            _ => DenyReason::BadCert,
        },
        _ => DenyReason::HandshakeFailed,
    }
}
