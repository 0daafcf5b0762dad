//! `pgtunnel pg-config`: the PostgreSQL settings that require the login certificate.

use clap::Args;

#[derive(Debug, Args)]
pub struct PgConfigArgs {
    #[arg(long)]
    pub ca: std::path::PathBuf,
    #[arg(long)]
    pub cert: std::path::PathBuf,
    #[arg(long)]
    pub key: std::path::PathBuf,
}

pub fn run(_args: PgConfigArgs) -> anyhow::Result<()> {
    anyhow::bail!("pg-config: not built yet")
}
