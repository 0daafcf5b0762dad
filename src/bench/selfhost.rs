//! The self-hosted set-up of `pgtunnel bench` with no target flags: a throwaway PKI made
//! with our own CA code, the gateway and agents started as child processes of this very
//! binary, the upstream and the TLS terminator in-process, and a throwaway PostgreSQL
//! cluster when PostgreSQL is installed and the pg scenario is wanted. Everything lives
//! in one temporary folder and is stopped and removed when `SelfHosted` is dropped.
//!
//! The gateway and agents do not announce readiness: we pick free loopback ports and
//! wait until the port shows as listening in /proc/net/tcp (a probing connection would
//! be a session the gateway audits).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cpu::ThreadGroup;
use super::servers::Server;
use crate::pg::cluster::{self, Cluster, ClusterOptions};
use crate::pki::{Ca, Validity};
use crate::tls;

/// The login certificate's user and group; the gateway allows them.
pub const BENCH_USER: &str = "bench";
const BENCH_GROUP: &str = "bench";
/// Gateway services: one whose upstream is the echo server, one for PostgreSQL.
pub const ECHO_SERVICE: &str = "echo";
pub const PG_SERVICE: &str = "pg";

/// The gateway's default ticket key rotation (docs/config.md), mirrored by the terminator.
const TICKET_ROTATION: Duration = Duration::from_secs(3600);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificate and key files of the throwaway PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub login_cert: PathBuf,
    pub login_key: PathBuf,
}

impl Pki {
    /// Makes a CA, a server certificate for localhost/127.0.0.1 and a login
    /// certificate for `bench`, under `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        let ca_dir = dir.join("ca");
        let ca = Ca::init(&ca_dir).context("creating the bench CA")?;
        let day = Validity::starting_now(Duration::from_secs(24 * 3600));
        // Login certificates are short-lived; the gateway refuses long ones
        // (max_cert_lifetime), so this one is like any user's.
        let login_ttl = Validity::starting_now(Duration::from_secs(8 * 3600));
        let server = ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                day,
            )
            .context("issuing the server certificate")?;
        let (server_cert, server_key) = server
            .write(&dir.join("server"))
            .context("writing the server certificate")?;
        let login = ca
            .issue_login(BENCH_USER, &[BENCH_GROUP.to_owned()], login_ttl)
            .context("issuing the login certificate")?;
        let (login_cert, login_key) = login
            .write(&dir.join(BENCH_USER))
            .context("writing the login certificate")?;
        Ok(Pki {
            ca: ca_dir.join(crate::pki::CA_CERT_FILE),
            server_cert,
            server_key,
            login_cert,
            login_key,
        })
    }

    /// The gateway's rustls server configuration with its default session tickets,
    /// for the in-process terminator.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let chain = crate::pki::load_certs(&self.server_cert)?;
        let key = crate::pki::load_private_key(&self.server_key)?;
        let roots = tls::load_roots(&self.ca)?;
        let ticketer = tls::tickets::RotatingTicketer::random(TICKET_ROTATION)
            .context("making session ticket keys")?;
        Ok(tls::server_config(
            chain,
            key,
            roots,
            Vec::new(),
            Some(Arc::new(ticketer)),
        )?)
    }
}

/// Everything the bench started; dropping it stops and removes it all.
pub struct SelfHosted {
    // Field order is drop order: children first, then PostgreSQL, servers, the folder.
    pub gateway: Supervised,
    pub agents: Vec<(String, Supervised)>,
    pub cluster: Option<Cluster>,
    pub upstream: Server,
    pub pki: Pki,
    pub workers: usize,
    dir: tempfile::TempDir,
}

impl SelfHosted {
    /// Starts upstream, PostgreSQL (when `with_pg` and installed), gateway and agents.
    /// A PostgreSQL that cannot start is not fatal: `pg_error` says why, and the pg
    /// scenario is skipped with that reason.
    pub fn start(
        workers: usize,
        with_pg: bool,
        servers_cpu: Arc<ThreadGroup>,
    ) -> anyhow::Result<(SelfHosted, Option<String>)> {
        let dir = tempfile::Builder::new()
            .prefix("pgtunnel-bench-")
            .tempdir()
            .context("creating a temporary folder")?;
        let pki = Pki::create(dir.path())?;
        let upstream = Server::upstream(loopback(0), servers_cpu)
            .context("starting the upstream echo server")?;

        let (cluster, pg_error) = if with_pg {
            match start_cluster(&pki) {
                Ok(c) => (Some(c), None),
                Err(err) => (None, Some(format!("{err:#}"))),
            }
        } else {
            (None, None)
        };

        let gateway = start_gateway(dir.path(), &pki, workers, upstream.addr(), cluster.as_ref())?;
        let mut agents = vec![(
            ECHO_SERVICE.to_owned(),
            start_agent(dir.path(), &pki, gateway.port, ECHO_SERVICE)?,
        )];
        if cluster.is_some() {
            agents.push((
                PG_SERVICE.to_owned(),
                start_agent(dir.path(), &pki, gateway.port, PG_SERVICE)?,
            ));
        }
        let hosted = SelfHosted {
            gateway,
            agents,
            cluster,
            upstream,
            pki,
            workers,
            dir,
        };
        Ok((hosted, pg_error))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn agent(&self, service: &str) -> Option<&Supervised> {
        self.agents
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, a)| a)
    }
}

fn start_cluster(pki: &Pki) -> anyhow::Result<Cluster> {
    cluster::postgres_bin_dir().context("PostgreSQL is not installed")?;
    let options = ClusterOptions::new(&pki.ca, &pki.server_cert, &pki.server_key).user(BENCH_USER);
    Cluster::start(options).context("starting a throwaway PostgreSQL")
}

fn start_gateway(
    dir: &Path,
    pki: &Pki,
    workers: usize,
    upstream: SocketAddr,
    cluster: Option<&Cluster>,
) -> anyhow::Result<Supervised> {
    let port = cluster::free_loopback_port().context("finding a port for the gateway")?;
    let mut text = format!(
        "# written by pgtunnel bench\n\
         [gateway]\n\
         listen = \"127.0.0.1:{port}\"\n\
         cert = {}\n\
         key = {}\n\
         client_ca = {}\n\
         audit_log = \"audit.jsonl\"\n\
         workers = {workers}\n\
         # sessions are closed by the bench before it stops the gateway\n\
         drain_timeout = \"2s\"\n\
         {}",
        toml_path(&pki.server_cert),
        toml_path(&pki.server_key),
        toml_path(&pki.ca),
        service_toml(ECHO_SERVICE, &upstream.to_string()),
    );
    if let Some(cluster) = cluster {
        text.push_str(&service_toml(PG_SERVICE, &cluster.addr().to_string()));
    }
    let config = dir.join("gateway.toml");
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(std::env::current_exe().context("finding our own binary")?);
    cmd.arg("gateway").arg("--config").arg(&config);
    Supervised::start("gateway", cmd, &dir.join("gateway.log"), port)
}

fn service_toml(name: &str, upstream: &str) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n\
         allow_users = [\"{BENCH_USER}\"]\n"
    )
}

fn start_agent(
    dir: &Path,
    pki: &Pki,
    gateway_port: u16,
    service: &str,
) -> anyhow::Result<Supervised> {
    let port = cluster::free_loopback_port().context("finding a port for the agent")?;
    let mut cmd = Command::new(std::env::current_exe().context("finding our own binary")?);
    cmd.arg("connect")
        .arg("--gateway")
        .arg(format!("127.0.0.1:{gateway_port}"))
        .arg("--service")
        .arg(service)
        .arg("--listen")
        .arg(loopback(port).to_string())
        .arg("--cert")
        .arg(&pki.login_cert)
        .arg("--key")
        .arg(&pki.login_key)
        .arg("--ca")
        .arg(&pki.ca);
    let log = dir.join(format!("agent-{service}.log"));
    Supervised::start("agent", cmd, &log, port)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A TOML basic string holding a path.
fn toml_path(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A child process of ours that listens on a port; stopped with SIGTERM on drop.
pub struct Supervised {
    name: &'static str,
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Supervised {
    fn start(name: &'static str, mut cmd: Command, log: &Path, port: u16) -> anyhow::Result<Self> {
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .env("RUST_LOG", "warn,pgtunnel=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let mut me = Supervised {
            name,
            child,
            port,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !is_listening(port) {
            if let Ok(Some(status)) = me.child.try_wait() {
                bail!("the {name} exited ({status}):\n{}", me.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the {name} did not listen on port {port} within {READY_TIMEOUT:?}:\n{}",
                    me.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Still running? If not, its log's last lines say why.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the {} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {} log ({})\n{tail}", self.name, self.log.display())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // kill(1) rather than kill(2), so `unsafe` stays in src/sys; if it cannot run,
        // the bounded wait ends in SIGKILL.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something listens on 127.0.0.1:`port` or *:`port` (state 0A, LISTEN, in
/// /proc/net/tcp; addresses are hex, little-endian for the IP on x86).
fn is_listening(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
    })
}
