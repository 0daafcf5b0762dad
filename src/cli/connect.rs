//! `pgtunnel connect`: check the login certificate and key, then run the local agent.
//! Every start-up problem is one line and exit 64: an agent that starts with a
//! certificate the gateway will refuse only moves the error somewhere harder to read.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::UsageError;
use crate::agent::{Agent, AgentConfig, LoginFiles};

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

pub fn run(args: ConnectArgs) -> anyhow::Result<()> {
    super::init_logging();
    let gateway = resolve("--gateway", &args.gateway)?;
    let listen: SocketAddr = args
        .listen
        .parse()
        .map_err(|_| UsageError::new(format!("--listen {:?}: expected IP:PORT", args.listen)))?;
    let server_name = match &args.server_name {
        Some(name) => name.clone(),
        None => host_part(&args.gateway).to_string(),
    };

    let login = LoginFiles {
        cert: args.cert.clone(),
        key: args.key.clone(),
        ca: args.ca.clone(),
        server_name,
    };
    let loaded = login.load().map_err(UsageError::new)?;
    if let Some(why) = loaded.unusable_at(time::OffsetDateTime::now_utc(), &args.cert) {
        return Err(UsageError::new(format!("{}: {why}", args.cert.display())));
    }

    let agent = Agent::bind(AgentConfig {
        gateway,
        service: args.service.clone(),
        listen,
        login,
        loaded,
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(10),
    })
    .map_err(|err| UsageError::new(err.to_string()))?;
    tracing::info!(
        listen.addr = %agent.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        gateway.addr = %gateway,
        service = %args.service,
        "agent listening"
    );
    agent.run()?;
    Ok(())
}

fn resolve(flag: &str, value: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|err| UsageError::new(format!("{flag} {value:?}: {err}")))?;
    addrs
        .next()
        .ok_or_else(|| UsageError::new(format!("{flag} {value:?}: no address")))
}

/// The host in HOST:PORT or [V6]:PORT.
fn host_part(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}
