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
use crate::audit::{AuditRecord, AuditWriter, ReloadOutcome};
use crate::config::{FileStamp, GatewayConfig};

pub struct Reloader {
    cell: SharedCell,
    crl_stamp: Option<FileStamp>,
    /// The stamp of a CRL version that failed to load, so the failure is logged once.
    failed_crl_stamp: Option<FileStamp>,
}

impl Reloader {
    pub fn new(cell: SharedCell) -> Reloader {
        let crl_stamp = cell
            .load()
            .config
            .crl
            .as_ref()
            .and_then(|p| FileStamp::of(p));
        Reloader {
            cell,
            crl_stamp,
            failed_crl_stamp: None,
        }
    }

    /// SIGHUP: re-read the config file, certificates, client CA, CRL and policy.
    pub fn reload_all(&mut self, audit: &AuditWriter) {
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
                let audit_changed = next.config.audit_log != current.config.audit_log
                    || next.config.audit != current.config.audit;
                let mut detail = format!("{}: new configuration in use", path.display());
                if restart_needed || audit_changed {
                    tracing::warn!(
                        "reload: listen, workers and audit settings take effect only after a restart"
                    );
                    detail.push_str("; listen, workers and audit settings need a restart");
                }
                self.crl_stamp = next.config.crl.as_ref().and_then(|p| FileStamp::of(p));
                self.install(next, &current);
                tracing::info!(config = %path.display(), "reload: new configuration in use");
                record(audit, ReloadOutcome::Ok, detail);
            }
            Err(err) => {
                tracing::error!(
                    config = %path.display(),
                    error = %err,
                    "reload refused; the previous configuration stays in use"
                );
                record(audit, ReloadOutcome::Refused, err);
            }
        }
    }

    /// Called periodically: reloads the CRL alone when its file changed.
    pub fn poll_crl(&mut self, audit: &AuditWriter) {
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
                let detail = format!("{}: CRL changed, {revoked} revoked", path.display());
                record(audit, ReloadOutcome::Ok, detail);
            }
            Err(err) => {
                self.failed_crl_stamp = now;
                tracing::error!(
                    crl = %path.display(),
                    error = %err,
                    "CRL changed but cannot be used; the previous one stays in force"
                );
                record(audit, ReloadOutcome::Refused, err.to_string());
            }
        }
    }

    fn install(&self, mut next: Shared, current: &Shared) {
        next.generation = current.generation + 1;
        if next.data_path != current.data_path {
            tracing::info!(data_path = %next.data_path, "new sessions get another pump");
        }
        self.cell.store(Arc::new(next));
    }
}

/// Writes the `gateway.reload` record; a reload that cannot be recorded is still in
/// effect (it changes no session by itself), so the failure is only logged.
fn record(audit: &AuditWriter, outcome: ReloadOutcome, detail: String) {
    if let Err(err) = audit.record(AuditRecord::reload(outcome, detail)) {
        tracing::error!(error = %err, "gateway.reload record lost");
    }
}
