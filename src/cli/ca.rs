//! `pgtunnel ca`: init, issue, server, show.

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root CA in DIR.
    Init {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

pub fn run(_args: CaArgs) -> anyhow::Result<()> {
    anyhow::bail!("ca: not built yet")
}
