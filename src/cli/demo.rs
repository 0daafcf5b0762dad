//! `pgtunnel demo`: the whole flow on one machine, in one command.
//!
//! It makes a CA, a server certificate and a login certificate for `alice` (group
//! `dba`) in a temporary folder, starts a throwaway PostgreSQL cluster configured with
//! exactly what `pgtunnel pg-config` prints (`pg::cluster`), starts `pgtunnel gateway`
//! and `pgtunnel connect` as child processes of this binary, runs psql through the
//! tunnel, shows the result and the audit records, and prints a psql command line to
//! try. Then it waits for Ctrl-C (or SIGTERM, SIGHUP) and removes all it started, in
//! order: agent, gateway (which writes its last audit records on SIGTERM), cluster,
//! folder. It owns no part of the tunnel itself; a SIGKILL leaves the children behind.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::cli::UsageError;
use crate::pg::cluster::{self, Cluster, ClusterOptions};
use crate::pki::{Ca, Validity};

/// The demo's login: a database user and the group the gateway's policy allows.
const DEMO_USER: &str = "alice";
const DEMO_GROUP: &str = "dba";
const SERVICE: &str = "main";

/// How long the gateway or agent may take to listen, and the audit record to appear.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long psql may run through the tunnel.
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const QUERY: &str = "SELECT current_user AS db_user, client_dn, version AS tls_version, \
                     cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the agent listens for psql; a busy port falls back to a free one.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub listen: SocketAddr,
    /// Show the results and exit instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        return Err(UsageError::new(format!(
            "--listen: {}: the demo listens on loopback addresses only",
            args.listen
        )));
    }
    // From here on Ctrl-C, SIGTERM or a closed terminal (SIGHUP) asks us to clean up
    // instead of killing us and leaving the children behind; a second signal while
    // cleanup hangs still ends the process at once.
    let stop = Arc::new(AtomicBool::new(false));
    let signals = [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ];
    for signal in signals {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    // Locals drop in reverse order: agent, gateway, cluster, then the folder.
    let dir = tempfile::Builder::new()
        .prefix("pgtunnel-demo-")
        .tempdir()
        .context("creating the demo folder")?;
    println!("pgtunnel demo: the whole flow on this machine");
    println!(
        "everything lives in {} and goes away on exit",
        dir.path().display()
    );

    let files = make_certificates(dir.path())?;
    let cluster = start_cluster(&files)?;
    check_stop(&stop)?;
    let mut gateway = start_gateway(dir.path(), &files, &cluster)?;
    check_stop(&stop)?;
    let mut agent = start_agent(dir.path(), &files, &gateway, args.listen)?;
    check_stop(&stop)?;

    show_psql(&cluster, &files, agent.port, &[&agent, &gateway])?;
    show_audit(&gateway)?;
    show_try_it(&cluster, &files, agent.port, &gateway, args.no_wait);
    if args.no_wait {
        return Ok(());
    }
    println!();
    println!("Press Ctrl-C to stop; the demo then removes everything it started.");
    wait_for_stop(&stop, &mut [&mut agent, &mut gateway])?;
    println!();
    println!("stopping agent, gateway and PostgreSQL");
    Ok(())
}

/// Certificates and keys the demo made, and where.
struct Files {
    ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    login_crt: PathBuf,
    login_key: PathBuf,
}

fn make_certificates(dir: &Path) -> anyhow::Result<Files> {
    let ca_dir = dir.join("ca");
    let ca = Ca::init(&ca_dir).context("creating the demo CA")?;
    let server = ca
        .issue_server(
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Validity::starting_now(Duration::from_secs(24 * 3600)),
        )
        .context("issuing the server certificate")?;
    let (server_crt, server_key) = server
        .write(&dir.join("server"))
        .context("writing the server certificate")?;
    let login = ca
        .issue_login(
            DEMO_USER,
            &[DEMO_GROUP.to_owned()],
            Validity::starting_now(Duration::from_secs(8 * 3600)),
        )
        .context("issuing the login certificate")?;
    let (login_crt, login_key) = login
        .write(&dir.join(DEMO_USER))
        .context("writing the login certificate")?;

    println!();
    println!("1. certificate authority (pgtunnel ca)");
    println!(
        "   root CA            {}",
        ca_dir.join(crate::pki::CA_CERT_FILE).display()
    );
    println!(
        "   server certificate {} (localhost, 127.0.0.1)",
        server_crt.display()
    );
    println!(
        "   login certificate  {} (user {DEMO_USER}, group {DEMO_GROUP}, 8h)",
        login_crt.display()
    );
    Ok(Files {
        ca: ca_dir.join(crate::pki::CA_CERT_FILE),
        server_crt,
        server_key,
        login_crt,
        login_key,
    })
}

fn start_cluster(files: &Files) -> anyhow::Result<Cluster> {
    let options =
        ClusterOptions::new(&files.ca, &files.server_crt, &files.server_key).user(DEMO_USER);
    let cluster = Cluster::start(options).context("starting the throwaway PostgreSQL")?;
    println!();
    println!(
        "2. PostgreSQL on {} requiring the login certificate (as pgtunnel pg-config prints)",
        cluster.addr()
    );
    println!("   data folder {}", cluster.data_dir().display());
    for line in cluster.tls_settings().pg_hba_cert() {
        println!("   pg_hba.conf: {line}");
    }
    Ok(cluster)
}

fn start_gateway(dir: &Path, files: &Files, cluster: &Cluster) -> anyhow::Result<Supervised> {
    let port = cluster::free_loopback_port().context("finding a port for the gateway")?;
    let config = dir.join("gateway.toml");
    let audit_log = dir.join("audit.jsonl");
    let text = format!(
        "# written by pgtunnel demo\n\
         [gateway]\n\
         listen = \"127.0.0.1:{port}\"\n\
         cert = {}\n\
         key = {}\n\
         client_ca = {}\n\
         audit_log = \"audit.jsonl\"\n\
         \n\
         [[service]]\n\
         name = \"{SERVICE}\"\n\
         upstream = \"{}\"\n\
         allow_users = [\"{DEMO_USER}\"]\n\
         allow_groups = [\"{DEMO_GROUP}\"]\n",
        toml_string(&files.server_crt),
        toml_string(&files.server_key),
        toml_string(&files.ca),
        cluster.addr(),
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

    let mut cmd = Command::new(std::env::current_exe().context("finding our own binary")?);
    cmd.arg("gateway").arg("--config").arg(&config);
    let mut gateway = Supervised::start("gateway", cmd, &dir.join("gateway.log"), port)?;
    gateway.audit_log = Some(audit_log.clone());
    println!();
    println!(
        "3. gateway on 127.0.0.1:{port}: service {SERVICE:?} -> {}",
        cluster.addr()
    );
    println!("   config    {}", config.display());
    println!("   audit log {}", audit_log.display());
    Ok(gateway)
}

fn start_agent(
    dir: &Path,
    files: &Files,
    gateway: &Supervised,
    wanted: SocketAddr,
) -> anyhow::Result<Supervised> {
    let listen = pick_listen(wanted)?;
    let mut cmd = Command::new(std::env::current_exe().context("finding our own binary")?);
    cmd.arg("connect")
        .arg("--gateway")
        .arg(format!("127.0.0.1:{}", gateway.port))
        .arg("--service")
        .arg(SERVICE)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--cert")
        .arg(&files.login_crt)
        .arg("--key")
        .arg(&files.login_key)
        .arg("--ca")
        .arg(&files.ca);
    let agent = Supervised::start("agent", cmd, &dir.join("agent.log"), listen.port())?;
    println!();
    println!(
        "4. agent (pgtunnel connect) on {listen}: mTLS to the gateway as {DEMO_USER}, \
         SNI {SERVICE:?}"
    );
    Ok(agent)
}

/// The address the agent should listen on: `wanted`, or a free port beside it if
/// something already listens there (often a local PostgreSQL on 5432).
fn pick_listen(wanted: SocketAddr) -> anyhow::Result<SocketAddr> {
    if wanted.port() != 0 && TcpListener::bind(wanted).is_ok() {
        return Ok(wanted);
    }
    let free = TcpListener::bind(SocketAddr::new(wanted.ip(), 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for the agent")?;
    if wanted.port() != 0 {
        println!();
        println!("   note: {wanted} is busy, so the agent listens on {free} instead");
    }
    Ok(free)
}

fn show_psql(
    cluster: &Cluster,
    files: &Files,
    port: u16,
    children: &[&Supervised],
) -> anyhow::Result<()> {
    let mut cmd = Command::new(cluster.bin("psql"));
    cmd.arg(conninfo(files, port))
        .args(["-X", "-w", "-x", "-c", QUERY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_bounded(cmd, PSQL_TIMEOUT).context("running psql through the tunnel")?;
    if !output.status.success() {
        let logs: Vec<String> = children.iter().map(|c| c.log_tail()).collect();
        bail!(
            "psql through the tunnel failed ({}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            logs.join("\n")
        );
    }
    println!();
    println!("5. psql through the tunnel; PostgreSQL checked the same certificate:");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if !line.trim().is_empty() {
            println!("   {line}");
        }
    }
    Ok(())
}

/// Waits for the session's closing record (the writer flushes within 100 ms of it) and
/// prints every record.
fn show_audit(gateway: &Supervised) -> anyhow::Result<()> {
    let path = gateway
        .audit_log
        .as_deref()
        .context("the gateway has no audit log path")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let text = loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains("\"session.end\"") {
            break text;
        }
        if Instant::now() >= deadline {
            bail!(
                "no session.end in the audit log {} within {READY_TIMEOUT:?}; it holds:\n{text}\n{}",
                path.display(),
                gateway.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    println!();
    println!("6. audit log (one JSON object a line):");
    for line in text.lines() {
        println!("   {line}");
    }
    Ok(())
}

fn show_try_it(cluster: &Cluster, files: &Files, port: u16, gateway: &Supervised, no_wait: bool) {
    let psql = if on_path("psql") {
        "psql".to_owned()
    } else {
        cluster.bin("psql").display().to_string()
    };
    println!();
    if no_wait {
        println!("Try it yourself: run the demo without --no-wait, then:");
    } else {
        println!("Try it yourself (while the demo runs):");
    }
    println!("   {psql} \"{}\"", conninfo(files, port));
    if let Some(audit_log) = &gateway.audit_log {
        println!("and watch the audit log:");
        println!("   tail -f {}", audit_log.display());
    }
}

/// libpq settings for the demo user through the agent, with full verification.
fn conninfo(files: &Files, port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} \
         user={DEMO_USER} dbname=postgres",
        files.ca.display(),
        files.login_crt.display(),
        files.login_key.display()
    )
}

/// Sleeps until a signal arrives or a child dies. This wait has no time bound on
/// purpose: the demo runs until the person who started it says stop.
fn wait_for_stop(stop: &AtomicBool, children: &mut [&mut Supervised]) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.child.try_wait() {
                bail!(
                    "the {} exited ({status}):\n{}",
                    child.name,
                    child.log_tail()
                );
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// A child process of ours (gateway or agent) with its log file; dropping it sends
/// SIGTERM, waits a bounded time, then kills it.
struct Supervised {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    audit_log: Option<PathBuf>,
}

impl Supervised {
    /// Starts `cmd` with its diagnostics in `log` and waits until it listens on `port`.
    fn start(name: &'static str, mut cmd: Command, log: &Path, port: u16) -> anyhow::Result<Self> {
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // Its own process group: a Ctrl-C at the terminal reaches only the demo, which
        // then stops the children in order.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let mut supervised = Supervised {
            name,
            child,
            port,
            log: log.to_owned(),
            audit_log: None,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        while !is_listening(port) {
            if let Ok(Some(status)) = supervised.child.try_wait() {
                bail!("the {name} exited ({status}):\n{}", supervised.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the {name} did not listen on port {port} within {READY_TIMEOUT:?}:\n{}",
                    supervised.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(supervised)
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
        // kill(1) rather than kill(2): `unsafe` stays in src/sys. If it cannot run, the
        // bounded wait below ends in SIGKILL.
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

/// Whether something listens on TCP `port` in our network namespace (state 0A in
/// `/proc/net/tcp`). Read instead of probing with a connection, which the gateway
/// would count and audit as a session of its own.
fn is_listening(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
    })
}

/// Runs a command to completion, killing it if it outlives `timeout`. Its output is
/// small (one psql row), so reading it after exit cannot block on a full pipe.
fn run_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<std::process::Output> {
    let mut child = cmd.spawn().context("starting psql")?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("psql did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A TOML basic string for a path (quotes and backslashes escaped).
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
