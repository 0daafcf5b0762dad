//! Reloading without dropping sessions: SIGHUP re-reads the config file and everything it
//! names; a changed CRL file is re-read on its own (with the configuration already in
//! memory, so a half-edited config file can never hold back a revocation).
//!
//! A new configuration that fails to load is refused with one log line and the old one
//! keeps serving. Listener settings (`listen`, `workers`) cannot change without a
//! restart; a reload that changes them applies everything else and says so.
//! Live sessions are re-checked by each worker's sweep against the new state (policy,
//! CRL), not here: the main thread never touches a worker's sessions.

use std::sync::Arc;

use super::{Shared, SharedCell};
use crate::audit::AuditSink;
use crate::config::{FileStamp, GatewayConfig};

pub struct Reloader {
    cell: SharedCell,
    #[allow(dead_code)] // used once the audit trail gains reload records
    audit: AuditSink,
    crl_stamp: Option<FileStamp>,
    /// The stamp of a CRL version that failed to load, so the failure is logged once.
    failed_crl_stamp: Option<FileStamp>,
}

impl Reloader {
    pub fn new(cell: SharedCell, audit: AuditSink) -> Reloader {
        let crl_stamp = cell
            .load()
            .config
            .crl
            .as_ref()
            .and_then(|p| FileStamp::of(p));
        Reloader {
            cell,
            audit,
            crl_stamp,
            failed_crl_stamp: None,
        }
    }

    /// SIGHUP: re-read the config file, certificates, client CA, CRL and policy.
    pub fn reload_all(&mut self) {
        let current = self.cell.load_full();
        let path = current.config.path.clone();
        let loaded = GatewayConfig::load(&path)
            .map_err(|err| err.to_string())
            .and_then(|config| {
                Shared::load_after(config, Some(&current)).map_err(|err| err.to_string())
            });
        match loaded {
            Ok(next) => {
                let restart_needed = next.config.listen != current.config.listen
                    || next.config.workers != current.config.workers;
                if restart_needed {
                    tracing::warn!(
                        "reload: listen and workers changes take effect only after a restart"
                    );
                }
                self.crl_stamp = next.config.crl.as_ref().and_then(|p| FileStamp::of(p));
                self.install(next, &current);
                tracing::info!(config = %path.display(), "reload: new configuration in use");
            }
            Err(err) => {
                tracing::error!(
                    config = %path.display(),
                    error = %err,
                    "reload refused; the previous configuration stays in use"
                );
            }
        }
    }

    /// Called periodically: reloads the CRL alone when its file changed.
    pub fn poll_crl(&mut self) {
        let current = self.cell.load_full();
        let Some(path) = current.config.crl.clone() else {
            return;
        };
        let now = FileStamp::of(&path);
        if now == self.crl_stamp || now.is_none() || now == self.failed_crl_stamp {
            return;
        }
        match Shared::load_after(current.config.clone(), Some(&current)) {
            Ok(next) => {
                self.crl_stamp = now;
                self.failed_crl_stamp = None;
                let revoked = next.crl.as_ref().map_or(0, |c| c.serials.len());
                self.install(next, &current);
                tracing::info!(crl = %path.display(), revoked, "CRL changed: reloaded");
            }
            Err(err) => {
                self.failed_crl_stamp = now;
                tracing::error!(
                    crl = %path.display(),
                    error = %err,
                    "CRL changed but cannot be used; the previous one stays in force"
                );
            }
        }
    }

    fn install(&self, mut next: Shared, current: &Shared) {
        next.generation = current.generation + 1;
        self.cell.store(Arc::new(next));
    }
}
