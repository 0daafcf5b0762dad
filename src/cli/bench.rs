//! `pgtunnel bench`: turn the flags into validated `bench::settings::Settings` (every
//! mistake is one line naming the flag and value, exit 64) and run. With no target flag
//! the bench starts its own gateway, agent and upstream; `--serve-upstream` instead runs
//! only the upstream (echo, sink, source) for benching a gateway elsewhere.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;

use super::UsageError;
use crate::bench::cpu::ThreadGroup;
use crate::bench::run;
use crate::bench::servers::Server;
use crate::bench::settings::{
    Dsn, External, MAX_CONNECTIONS, ScenarioKind, Settings, Target, parse_size,
};
use crate::bench::targets::resolve;

/// Longest `--duration` accepted: a bench run is minutes, not days.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Largest `--size`: a round trip of more is bulk, not echo.
const MAX_SIZE: usize = 16 << 20;
/// Highest `--rate` per connection: beyond this, sleeping between sends is noise.
const MAX_RATE_PER_CONNECTION: f64 = 100_000.0;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenario to run: handshake, echo, bulk or pg (repeatable; default: all).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Measured time per route and scenario, split into interleaved rounds.
    #[arg(long, default_value = "2s")]
    pub duration: String,
    /// Unmeasured time per route before measuring.
    #[arg(long, default_value = "500ms")]
    pub warmup: String,
    /// Length of one measured round; routes alternate round by round.
    #[arg(long, default_value = "500ms")]
    pub round: String,
    /// Closed loop: connections (one load thread each) that send as fast as answered.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Open loop: operations per second over all connections, latency measured from
    /// each operation's intended start (corrected for coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Echo message size, e.g. 64, 16KiB (repeatable; default: 64 and 16KiB).
    #[arg(long = "size", value_name = "BYTES")]
    pub sizes: Vec<String>,
    /// The pg scenario's query.
    #[arg(long, default_value = "SELECT 1")]
    pub query: String,

    /// Measure an existing gateway (HOST:PORT) instead of starting one.
    #[arg(long)]
    pub gateway: Option<String>,
    /// The gateway service (SNI) whose upstream is an echo server.
    #[arg(long, default_value = "echo")]
    pub service: String,
    /// Name the gateway's certificate carries (default: the host in --gateway).
    #[arg(long)]
    pub server_name: Option<String>,
    /// An existing agent (HOST:PORT) whose service reaches the echo upstream.
    #[arg(long)]
    pub connect: Option<String>,
    /// The echo upstream itself (HOST:PORT), for the direct baseline; bulk needs
    /// `pgtunnel bench --serve-upstream` there.
    #[arg(long)]
    pub upstream: Option<String>,
    /// PostgreSQL directly, as "host=... port=... user=... dbname=... sslrootcert=...
    /// sslcert=... sslkey=...".
    #[arg(long)]
    pub dsn: Option<String>,
    /// An existing agent (HOST:PORT) in front of the --dsn PostgreSQL.
    #[arg(long)]
    pub pg_connect: Option<String>,
    /// Login certificate for --gateway (and --dsn unless it names one).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The CA of the gateway's (and PostgreSQL's) server certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PID of the existing gateway, to report its CPU per operation.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// PID of the existing agent, to report its CPU per operation.
    #[arg(long)]
    pub agent_pid: Option<u32>,
    /// Worker threads of the gateway the bench starts itself.
    #[arg(long, default_value_t = 1)]
    pub gateway_workers: usize,

    /// Write all results, histograms included, to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram percentile distributions (.hgrm) into this folder.
    #[arg(long, value_name = "DIR")]
    pub hgrm: Option<PathBuf>,
    /// Show the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Only run the upstream (echo, sink, source) on ADDR until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    pub serve_upstream: Option<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::init_logging();
    if let Some(addr) = &args.serve_upstream {
        return serve_upstream(addr);
    }
    let settings = settings(args)?;
    run::run(&settings)?;
    Ok(())
}

fn settings(args: BenchArgs) -> anyhow::Result<Settings> {
    let duration = parse_duration("--duration", &args.duration)?;
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(UsageError::new(format!(
            "--duration {:?}: must be more than 0 and at most 1h",
            args.duration
        )));
    }
    let warmup = parse_duration("--warmup", &args.warmup)?;
    if warmup > MAX_DURATION {
        return Err(UsageError::new(format!(
            "--warmup {:?}: at most 1h",
            args.warmup
        )));
    }
    let round = parse_duration("--round", &args.round)?;
    if round < Duration::from_millis(50) {
        return Err(UsageError::new(format!(
            "--round {:?}: at least 50ms, or switching routes costs more than it measures",
            args.round
        )));
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(UsageError::new(format!(
            "--connections {}: must be 1 to {MAX_CONNECTIONS}",
            args.connections
        )));
    }
    if let Some(rate) = args.rate {
        let most = MAX_RATE_PER_CONNECTION * args.connections as f64;
        if !(rate.is_finite() && rate > 0.0 && rate <= most) {
            return Err(UsageError::new(format!(
                "--rate {rate}: must be above 0 and at most {most} ({MAX_RATE_PER_CONNECTION} \
                 per connection)"
            )));
        }
    }

    let mut sizes = Vec::new();
    for text in &args.sizes {
        let size = parse_size(text).map_err(|e| UsageError::new(format!("--size {e}")))?;
        if size > MAX_SIZE {
            return Err(UsageError::new(format!("--size {text:?}: at most 16MiB")));
        }
        sizes.push(size);
    }
    if sizes.is_empty() {
        sizes = vec![64, 16 << 10];
    }
    if args.query.trim().is_empty() || args.query.contains('\0') {
        return Err(UsageError::new(
            "--query: must be SQL text without NUL bytes",
        ));
    }

    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        let kind = ScenarioKind::parse(name).ok_or_else(|| {
            UsageError::new(format!(
                "--scenario {name:?}: expected handshake, echo, bulk or pg"
            ))
        })?;
        if !scenarios.contains(&kind) {
            scenarios.push(kind);
        }
    }
    let explicit_scenarios = !scenarios.is_empty();
    if !explicit_scenarios {
        scenarios = ScenarioKind::ALL.to_vec();
    }

    let target = target(&args)?;
    Ok(Settings {
        scenarios,
        explicit_scenarios,
        duration,
        warmup,
        round,
        connections: args.connections,
        rate: args.rate,
        sizes,
        query: args.query,
        target,
        json: args.json,
        hgrm: args.hgrm,
        progress: args.progress,
        command: std::env::args().collect(),
    })
}

fn target(args: &BenchArgs) -> anyhow::Result<Target> {
    let external = args.gateway.is_some()
        || args.connect.is_some()
        || args.upstream.is_some()
        || args.dsn.is_some()
        || args.pg_connect.is_some();
    if !external {
        for (flag, given) in [
            ("--gateway-pid", args.gateway_pid.is_some()),
            ("--agent-pid", args.agent_pid.is_some()),
        ] {
            if given {
                return Err(UsageError::new(format!(
                    "{flag}: only for a gateway the bench did not start (with --gateway or \
                     --connect)"
                )));
            }
        }
        if args.gateway_workers == 0 || args.gateway_workers > 1024 {
            return Err(UsageError::new(format!(
                "--gateway-workers {}: must be 1 to 1024",
                args.gateway_workers
            )));
        }
        return Ok(Target::SelfHosted {
            gateway_workers: args.gateway_workers,
        });
    }
    let addr =
        |flag: &str, value: &Option<String>| value.as_ref().map(|v| resolve(flag, v)).transpose();
    let server_name = match (&args.server_name, &args.gateway) {
        (Some(name), _) => name.clone(),
        (None, Some(gateway)) => host_part(gateway).to_owned(),
        (None, None) => String::new(),
    };
    let dsn = args
        .dsn
        .as_ref()
        .map(|text| Dsn::parse(text).map_err(|e| UsageError::new(format!("--dsn: {e}"))))
        .transpose()?;
    Ok(Target::External(Box::new(External {
        gateway: addr("--gateway", &args.gateway)?,
        service: args.service.clone(),
        server_name,
        connect: addr("--connect", &args.connect)?,
        upstream: addr("--upstream", &args.upstream)?,
        dsn,
        pg_connect: addr("--pg-connect", &args.pg_connect)?,
        cert: args.cert.clone(),
        key: args.key.clone(),
        ca: args.ca.clone(),
        gateway_pid: args.gateway_pid,
        agent_pid: args.agent_pid,
    })))
}

fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| UsageError::new(format!("{flag} {text:?}: {e} (e.g. 500ms, 3s, 1m)")))
}

/// The host in HOST:PORT or [V6]:PORT.
fn host_part(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Runs the upstream alone until SIGINT or SIGTERM.
fn serve_upstream(addr: &str) -> anyhow::Result<()> {
    let addr = resolve("--serve-upstream", addr)?;
    let server = Server::upstream(addr, ThreadGroup::new())
        .map_err(|e| UsageError::new(format!("--serve-upstream {addr}: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    println!(
        "upstream (echo; sink and source for bulk) on {}; Ctrl-C stops it",
        server.addr()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
