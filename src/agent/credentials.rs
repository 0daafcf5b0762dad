//! The agent's login credentials, re-read when their files change.
//!
//! Certificates are renewed in place (`pgtunnel ca issue --out` replaces both files), so
//! before each new tunnel the agent compares the files' stamps with those it loaded and,
//! if they changed, builds a new TLS client configuration. A renewal caught half-way
//! (new key, old certificate) fails to load; the agent then keeps the previous pair and
//! tries again on the next connection. Sessions already open keep the credentials they
//! started with.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::config::FileStamp;
use crate::pki::{self, Identity};
use crate::tls;

/// Where the login material lives and what name the gateway's certificate must carry.
#[derive(Debug, Clone)]
pub struct LoginFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub server_name: String,
}

/// One loaded version of the credentials.
#[derive(Clone)]
pub struct Loaded {
    pub tls: Arc<rustls::ClientConfig>,
    pub user: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    stamps: [Option<FileStamp>; 3],
}

impl LoginFiles {
    /// Loads certificate, key and CA into a client configuration. The error is one line
    /// naming the file at fault.
    pub fn load(&self) -> Result<Loaded, String> {
        let stamps = self.stamps();
        let chain = pki::load_certs(&self.cert).map_err(|err| err.to_string())?;
        let identity = Identity::from_der(chain[0].as_ref())
            .map_err(|err| format!("{}: {err}", self.cert.display()))?;
        let config = tls::client_config(&self.cert, &self.key, &self.ca, &self.server_name)
            .map_err(|err| err.to_string())?;
        Ok(Loaded {
            tls: Arc::new(config),
            user: identity.user,
            not_before: identity.not_before,
            not_after: identity.not_after,
            stamps,
        })
    }

    fn stamps(&self) -> [Option<FileStamp>; 3] {
        [
            FileStamp::of(&self.cert),
            FileStamp::of(&self.key),
            FileStamp::of(&self.ca),
        ]
    }
}

impl Loaded {
    /// Why these credentials cannot be used at `now`, in words for the person at psql.
    pub fn unusable_at(&self, now: OffsetDateTime, cert: &std::path::Path) -> Option<String> {
        if now >= self.not_after {
            return Some(format!(
                "login certificate for {:?} expired at {}; ask for a new one \
                 (pgtunnel ca issue --user {} --out ...) and save it as {}",
                self.user,
                crate::audit::format_ts(self.not_after),
                self.user,
                cert.display()
            ));
        }
        if now < self.not_before {
            return Some(format!(
                "login certificate for {:?} is not valid before {}; check this computer's clock",
                self.user,
                crate::audit::format_ts(self.not_before)
            ));
        }
        None
    }
}

/// The credentials one agent thread uses, refreshed from disk when the files change.
pub struct Credentials {
    files: LoginFiles,
    current: std::cell::RefCell<Loaded>,
}

impl Credentials {
    pub fn new(files: LoginFiles, loaded: Loaded) -> Credentials {
        Credentials {
            files,
            current: std::cell::RefCell::new(loaded),
        }
    }

    pub fn files(&self) -> &LoginFiles {
        &self.files
    }

    /// The credentials to use for a new tunnel: reloaded first if the files changed.
    pub fn current(&self) -> Loaded {
        let stamps = self.files.stamps();
        if stamps != self.current.borrow().stamps {
            match self.files.load() {
                Ok(loaded) => {
                    tracing::info!(
                        user = %loaded.user,
                        not_after = %crate::audit::format_ts(loaded.not_after),
                        "login certificate reloaded"
                    );
                    *self.current.borrow_mut() = loaded;
                }
                // Mid-renewal or a bad file: keep the previous pair, look again next time.
                Err(err) => {
                    tracing::warn!(error = %err, "login files changed but cannot be used yet")
                }
            }
        }
        self.current.borrow().clone()
    }
}
