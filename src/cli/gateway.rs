//! `pgtunnel gateway`: load and check the config, then run the workers until a signal.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway's TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration (and the files it names) and exit.
    #[arg(long)]
    pub check: bool,
}

pub fn run(_args: GatewayArgs) -> anyhow::Result<()> {
    anyhow::bail!("gateway: not built yet")
}
