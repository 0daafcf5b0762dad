//! `pgtunnel connect`: the local agent.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The gateway's address, HOST:PORT.
    #[arg(long)]
    pub gateway: String,
    /// The service to reach; sent as SNI.
    #[arg(long)]
    pub service: String,
    /// Where psql connects.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub listen: String,
    /// The login certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// The login certificate's private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The CA that signed the gateway's server certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// The name the gateway's certificate must carry (default: the host in --gateway).
    #[arg(long)]
    pub server_name: Option<String>,
}

pub fn run(_args: ConnectArgs) -> anyhow::Result<()> {
    anyhow::bail!("connect: not built yet")
}
