//! The command line: one module per subcommand. Each turns its raw flags into validated
//! settings once and calls into the library. Errors here are `anyhow` with short
//! lower-case context; a `UsageError` anywhere in the chain means exit code 64
//! (EX_USAGE), anything else exit code 1.

pub mod audit;
pub mod bench;
pub mod ca;
pub mod connect;
pub mod demo;
pub mod gateway;
pub mod pg_config;
pub mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for bad usage or configuration (sysexits.h EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// A mistake by whoever wrote the command line or the config file: exit 64, not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// Builds the error already wrapped in `anyhow::Error`, which is what every caller
    /// returns; hence the lint about `new` not returning `Self`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(msg: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(UsageError(msg.into()))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "pgtunnel",
    version,
    about = "Zero-trust access gateway for PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Certificate authority: root, login certificates, server certificates.
    Ca(ca::CaArgs),
    /// Print the PostgreSQL settings that make it require the login certificate.
    PgConfig(pg_config::PgConfigArgs),
    /// Run the gateway next to the database.
    Gateway(gateway::GatewayArgs),
    /// Run the local agent that wraps psql connections in the mTLS tunnel.
    Connect(connect::ConnectArgs),
    /// Read the audit trail: verify its hash chain, show its records.
    Audit(audit::AuditArgs),
    /// Show the whole flow on a throwaway PostgreSQL cluster.
    Demo(demo::DemoArgs),
    /// Measure handshakes, round trips, throughput and queries, tunnel against direct.
    Bench(Box<bench::BenchArgs>),
    /// Render bench results (JSON) into one self-contained HTML report.
    Report(report::ReportArgs),
}

pub fn main() -> ExitCode {
    // clap exits 2 on a bad command line; our contract is 64 (EX_USAGE) for every usage
    // mistake, so parse errors are printed by clap and mapped here.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Ca(args) => ca::run(args),
        Command::PgConfig(args) => pg_config::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Report(args) => report::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pgtunnel: {err:#}");
            if err.chain().any(|cause| cause.is::<UsageError>()) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Sets up the diagnostic log on stderr: `RUST_LOG` wins, else `warn,pgtunnel=info`.
/// The audit trail never goes through here (see `audit`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pgtunnel=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
