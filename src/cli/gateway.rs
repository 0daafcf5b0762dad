//! `pgtunnel gateway`: load and check the configuration, then run the workers until a
//! stop signal. Configuration and file problems are usage errors (exit 64), each one line.

use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::config::GatewayConfig;
use crate::gateway::{self, GatewayError, Shared};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration (and the files it names) and exit.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    super::init_logging();
    let config =
        GatewayConfig::load(&args.config).map_err(|err| UsageError::new(err.to_string()))?;
    let file = args.config.display().to_string();
    let shared = Shared::load(config).map_err(|err| UsageError::new(format!("{file}: {err}")))?;

    let audit_dir = shared
        .config
        .audit_log
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    if !audit_dir.as_os_str().is_empty() && !audit_dir.is_dir() {
        return Err(UsageError::new(format!(
            "{file}: gateway.audit_log: {:?}: folder does not exist",
            shared.config.audit_log.display().to_string()
        )));
    }

    if args.check {
        println!(
            "{file}: ok: listen {}, {} service(s), {} worker(s), {}",
            shared.config.listen,
            shared.config.services.len(),
            shared.config.workers,
            shared.data_path
        );
        return Ok(());
    }
    gateway::run(shared).map_err(|err| match err {
        GatewayError::Bind { .. } | GatewayError::Audit(_) => UsageError::new(err.to_string()),
        other => anyhow::Error::new(other),
    })
}
