//! The harness every scenario test shares: a PKI made with our own `pgtunnel ca`
//! command, a throwaway PostgreSQL cluster (`pgtunnel::pg::cluster`), the gateway and
//! the agent as real child processes of the built binary, real `psql`, a raw rustls
//! client for what psql cannot do (no certificate, garbage, half handshakes), and
//! readers for the audit log.
//!
//! Nothing here fakes a part: the only stand-in is the raw TLS client, used where the
//! scenario is a misbehaving client. Every wait is bounded; a child that dies early
//! fails the test with its stderr. Readiness is read from `/proc/net/tcp` rather than
//! probed with a connection, because a probe would be a session of its own in the
//! gateway's audit log (Linux-only, like the rest of pgtunnel).

#![allow(dead_code)] // each test file uses its own part of the harness

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pgtunnel::pg::cluster::{self, Cluster, ClusterOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pgtunnel");

/// How long a child may take to start listening, or an expected audit record to appear.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long any one client program (psql, pgbench) may run before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the gateway may take to drain and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The service every scenario reaches unless it says otherwise.
pub const SERVICE: &str = "main";

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A certificate and its private key, as `pgtunnel ca` wrote them (PREFIX.crt/.key).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// A CA made by `pgtunnel ca init`, with a server certificate for localhost and
/// 127.0.0.1 that both the gateway and PostgreSQL use.
pub struct Pki {
    pub dir: TempDir,
    pub ca_dir: PathBuf,
    pub ca_crt: PathBuf,
    pub server: CertPair,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pgtunnel-pki-")
            .tempdir()
            .expect("temp dir for the PKI");
        let ca_dir = dir.path().join("ca");
        ca_ok(&["init", "--dir", path_str(&ca_dir)]);
        let ca_crt = ca_dir.join("ca.crt");
        assert!(ca_crt.is_file(), "ca init wrote no {}", ca_crt.display());

        let prefix = dir.path().join("server");
        ca_ok(&[
            "server",
            "--dir",
            path_str(&ca_dir),
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            path_str(&prefix),
        ]);
        let server = pair(&prefix);
        Pki {
            dir,
            ca_dir,
            ca_crt,
            server,
        }
    }

    /// A login certificate for `user` with `groups`, valid for an hour from now.
    pub fn login(&self, user: &str, groups: &[&str]) -> CertPair {
        self.login_with(user, user, groups, &["--ttl", "1h"])
    }

    /// A login certificate written as `<name>.crt/.key`, with extra `ca issue` flags
    /// (e.g. `--not-before` and `--ttl` for expired or not-yet-valid certificates).
    pub fn login_with(&self, name: &str, user: &str, groups: &[&str], extra: &[&str]) -> CertPair {
        let prefix = self.dir.path().join(name);
        let mut args = vec!["issue", "--dir", path_str(&self.ca_dir), "--user", user];
        for group in groups {
            args.extend(["--group", group]);
        }
        args.extend(extra);
        args.extend(["--out", path_str(&prefix)]);
        ca_ok(&args);
        pair(&prefix)
    }

    /// A login certificate whose validity ended a day ago.
    pub fn expired_login(&self, user: &str) -> CertPair {
        let not_before = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::days(2));
        self.login_with(
            &format!("{user}-expired"),
            user,
            &[],
            &["--not-before", &not_before, "--ttl", "1d"],
        )
    }

    /// A login certificate whose validity starts tomorrow.
    pub fn future_login(&self, user: &str) -> CertPair {
        let not_before = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::days(1));
        self.login_with(
            &format!("{user}-future"),
            user,
            &[],
            &["--not-before", &not_before, "--ttl", "1d"],
        )
    }
}

/// Runs `pgtunnel ca ARGS` and fails the test unless it succeeds.
pub fn ca_ok(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("ca").args(args);
    let output = run_bounded(cmd, CLIENT_TIMEOUT);
    assert!(
        output.status.success(),
        "pgtunnel ca {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn pair(prefix: &Path) -> CertPair {
    let pair = CertPair {
        crt: prefix.with_extension("crt"),
        key: prefix.with_extension("key"),
    };
    assert!(
        pair.crt.is_file(),
        "no certificate at {}",
        pair.crt.display()
    );
    assert!(pair.key.is_file(), "no key at {}", pair.key.display());
    pair
}

pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of a current date")
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A throwaway cluster that requires `pki`'s login certificates, with LOGIN roles `users`.
pub fn start_cluster(pki: &Pki, users: &[&str]) -> Cluster {
    let mut options = ClusterOptions::new(&pki.ca_crt, &pki.server.crt, &pki.server.key);
    for user in users {
        options = options.user(*user);
    }
    Cluster::start(options).unwrap_or_else(|err| panic!("throwaway cluster: {err}"))
}

/// The psql of the newest installed PostgreSQL (the one the clusters run).
pub fn psql_bin() -> PathBuf {
    cluster::postgres_bin_dir()
        .unwrap_or_else(|err| panic!("{err}"))
        .join("psql")
}

/// libpq connection settings for `user` on 127.0.0.1:`port` with full verification of
/// the server and `cert` as the client certificate.
pub fn conninfo(port: u16, pki: &Pki, cert: &CertPair, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} sslcert={} \
         sslkey={} user={user} dbname=postgres connect_timeout=10 gssencmode=disable",
        pki.ca_crt.display(),
        cert.crt.display(),
        cert.key.display()
    )
}

/// What a client program printed and how it ended.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientOutput {
    fn from(output: Output) -> Self {
        ClientOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The whole output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A psql command (not yet run) with unaligned, tuples-only output, no psqlrc and no
/// password prompt, for SQL on 127.0.0.1:`port`.
pub fn psql_command(port: u16, pki: &Pki, cert: &CertPair, user: &str, sql: &str) -> Command {
    let mut cmd = Command::new(psql_bin());
    clear_pg_env(&mut cmd);
    cmd.arg(conninfo(port, pki, cert, user))
        .args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null());
    cmd
}

/// Runs SQL with real psql as `user` with `cert` on 127.0.0.1:`port` (the agent or
/// PostgreSQL itself).
pub fn psql(port: u16, pki: &Pki, cert: &CertPair, user: &str, sql: &str) -> ClientOutput {
    ClientOutput::from(run_bounded(
        psql_command(port, pki, cert, user, sql),
        CLIENT_TIMEOUT,
    ))
}

/// A psql session the test holds open: it runs `sql`, then reads more SQL from its
/// input ([`Background::feed`]) and ends when the test closes it
/// ([`Background::finish`]).
pub fn psql_held(port: u16, pki: &Pki, cert: &CertPair, user: &str, sql: &str) -> Background {
    let mut cmd = psql_command(port, pki, cert, user, sql);
    cmd.args(["-f", "-"]);
    Background::spawn_fed(cmd)
}

/// Logs `user` in through the agent on `port` and fails the test with `failure` unless
/// PostgreSQL answers that it is `user`.
pub fn assert_logs_in(port: u16, pki: &Pki, cert: &CertPair, user: &str, failure: &str) {
    let out = psql(port, pki, cert, user, "SELECT current_user");
    assert!(
        out.status.success() && out.stdout.trim() == user,
        "{failure}:\n{}",
        out.describe()
    );
}

/// libpq connection settings for `user` on 127.0.0.1:`port` without TLS (psql then
/// prints an ErrorResponse sent before TLS in full; see docs/limitations.md).
pub fn plain_conninfo(port: u16, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} sslmode=disable user={user} dbname=postgres \
         connect_timeout=10 gssencmode=disable"
    )
}

/// Runs SQL with real psql as `user` on 127.0.0.1:`port` without TLS.
pub fn psql_plain(port: u16, user: &str, sql: &str) -> ClientOutput {
    let mut cmd = Command::new(psql_bin());
    clear_pg_env(&mut cmd);
    cmd.arg(plain_conninfo(port, user)).args([
        "-X",
        "-A",
        "-t",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    ClientOutput::from(run_bounded(cmd, CLIENT_TIMEOUT))
}

/// Parses an audit timestamp (or any RFC 3339 field) of `record`, failing the test if
/// it is missing or malformed.
pub fn ts_field(record: &Value, field: &str) -> time::OffsetDateTime {
    let text = record[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {record}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{field} {text:?} is not RFC 3339 ({e}): {record}"))
}

/// Removes our own `PG*` variables so they cannot redirect a client.
pub fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Gateway and agent
// ---------------------------------------------------------------------------------------

/// A `[[service]]` table for the gateway config.
pub fn service_toml(name: &str, upstream: &str, users: &[&str], groups: &[&str]) -> String {
    let list = |items: &[&str]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    format!(
        "[[service]]\nname = {name:?}\nupstream = {upstream:?}\nallow_users = {}\n\
         allow_groups = {}\n",
        list(users),
        list(groups)
    )
}

/// The service: `main` in front of `cluster`, for alice and group dba.
pub fn main_service(cluster: &Cluster) -> String {
    service_toml(SERVICE, &cluster.addr().to_string(), &["alice"], &["dba"])
}

/// The SQL every login scenario runs: who PostgreSQL thinks we are, and the client
/// certificate's subject as PostgreSQL's own TLS saw it.
pub const WHOAMI_SQL: &str =
    "SELECT current_user, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A running `pgtunnel gateway`, with its config, certificates and audit log in its
/// own folder. Dropping it sends SIGTERM, waits a bounded time, then SIGKILL.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub config: PathBuf,
    pub audit_log: PathBuf,
    stderr_path: PathBuf,
}

impl Gateway {
    /// Starts a gateway with `services` (TOML `[[service]]` tables).
    pub fn start(pki: &Pki, services: &str) -> Gateway {
        Gateway::start_with(pki, "", services)
    }

    /// Starts a gateway whose `[gateway]` table also holds `gateway_extra` (e.g.
    /// `handshake_timeout = "1s"`, or `workers = 1` in place of the usual two). The
    /// config is the minimal file with relative paths, so it also checks that
    /// they resolve against its folder.
    pub fn start_with(pki: &Pki, gateway_extra: &str, services: &str) -> Gateway {
        Gateway::start_in(pki, &pki.server, gateway_extra, services)
    }

    /// Starts a gateway that trusts `pki`'s login certificates but presents `server` as
    /// its own certificate (one from another CA, say, as an impostor would).
    pub fn start_serving(pki: &Pki, server: &CertPair, services: &str) -> Gateway {
        Gateway::start_in(pki, server, "", services)
    }

    fn start_in(pki: &Pki, server: &CertPair, gateway_extra: &str, services: &str) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("pgtunnel-gateway-")
            .tempdir()
            .expect("temp dir for the gateway");
        for (from, name) in [
            (&server.crt, "server.crt"),
            (&server.key, "server.key"),
            (&pki.ca_crt, "ca.crt"),
        ] {
            fs::copy(from, dir.path().join(name)).expect("copying gateway TLS files");
        }
        let config = dir.path().join("gateway.toml");
        let audit_log = dir.path().join("audit.jsonl");
        let stderr_path = dir.path().join("gateway.stderr");

        // A free port can be taken between our probe and the gateway's bind.
        for attempt in 1..=3 {
            let port = cluster::free_loopback_port().expect("free port");
            fs::write(&config, gateway_toml(port, gateway_extra, services))
                .expect("writing gateway.toml");
            let mut cmd = Command::new(BIN);
            cmd.arg("gateway").arg("--config").arg(&config);
            let child = spawn_logged(cmd, &stderr_path);
            match wait_listening(child, port, &stderr_path, "gateway") {
                Ok(child) => {
                    return Gateway {
                        child: Some(child),
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        dir,
                        config,
                        audit_log,
                        stderr_path,
                    };
                }
                Err(stderr) if stderr.contains("in use") && attempt < 3 => continue,
                Err(stderr) => panic!("gateway exited before listening:\n{stderr}"),
            }
        }
        unreachable!("the loop above returns or panics on its last attempt")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the config file with the same listener and files but `gateway_extra`
    /// and `services`; the running gateway reads it on the next SIGHUP ([`Self::reload`]).
    pub fn rewrite_config(&self, gateway_extra: &str, services: &str) {
        fs::write(
            &self.config,
            gateway_toml(self.port(), gateway_extra, services),
        )
        .expect("rewriting gateway.toml");
    }

    /// Sends SIGHUP: the gateway re-reads its config file and everything it names.
    pub fn reload(&self) {
        self.signal("HUP");
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let child = self
            .child
            .as_ref()
            .expect("gateway child present until stop");
        signal(child, name);
    }

    /// Whether the gateway process is still running.
    pub fn is_running(&mut self) -> bool {
        let child = self
            .child
            .as_mut()
            .expect("gateway child present until stop");
        matches!(child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until the diagnostic log holds `needle`, and returns the log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() >= deadline {
                panic!("gateway log never showed {needle:?} within {WAIT:?}:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gateway's diagnostic log so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Every complete audit record written so far.
    pub fn audit(&self) -> Vec<Value> {
        read_audit(&self.audit_log)
    }

    /// Waits (bounded) until the audit log holds at least `n` records of `event`;
    /// returns the whole log then.
    pub fn wait_for_events(&self, event: &str, n: usize) -> Vec<Value> {
        self.wait_for_audit(&format!("{n} {event} records"), |r| {
            events(r, event).len() >= n
        })
    }

    /// Waits (bounded) until `done` holds for the audit records, and returns them.
    pub fn wait_for_audit(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let records = self.audit();
            if done(&records) {
                return records;
            }
            if Instant::now() >= deadline {
                panic!(
                    "audit log never showed {what} within {WAIT:?}; it holds:\n{}\n\
                     gateway stderr:\n{}",
                    show(&records),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the drain; returns the exit status and the final audit
    /// log (the gateway writes every record before it exits). A panic anywhere in the
    /// gateway (a worker thread's is otherwise only a log line) fails the test.
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        let mut child = self.child.take().expect("gateway child present until stop");
        signal(&child, "TERM");
        let status = wait_bounded(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        });
        let log = self.stderr();
        assert!(
            !log.contains("panicked"),
            "the gateway panicked (peer input must never make it panic):\n{log}"
        );
        (status, self.audit())
    }

    /// [`Gateway::stop`] for a gateway that must exit 0 after its drain; returns the
    /// final audit log.
    pub fn stop_ok(self) -> Vec<Value> {
        let (status, records) = self.stop();
        assert!(
            status.success(),
            "gateway did not exit 0 after SIGTERM: {status}"
        );
        records
    }
}

impl Gateway {
    /// SIGKILL, as a crash or the OOM killer would; the folder (config, audit log) stays,
    /// so [`Gateway::restart`] can start it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }

        // The process is gone, but its listening sockets may not be: the workers' rings
        // still held them in multishot accepts, and the kernel tears a ring down in a
        // work item after the process exits. Until then the old socket shows as LISTEN
        // and a restart would take it for its own (SO_REUSEPORT lets both bind).
        let deadline = Instant::now() + WAIT;
        while is_listening(self.port()) {
            assert!(
                Instant::now() < deadline,
                "the killed gateway's listener on port {} was still open after {WAIT:?}",
                self.port()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and a bounded wait for the drain, like [`Gateway::stop`], but the folder
    /// (config, audit log) stays for reading or a restart.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("gateway child present until stopped");
        signal(&child, "TERM");
        wait_bounded(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Starts the gateway again with the same config and audit log (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(BIN);
        cmd.arg("gateway").arg("--config").arg(&self.config);
        let child = spawn_logged(cmd, &self.stderr_path);
        match wait_listening(child, self.port(), &self.stderr_path, "gateway") {
            Ok(child) => self.child = Some(child),
            Err(stderr) => panic!("restarted gateway exited before listening:\n{stderr}"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child);
        }
    }
}

/// The gateway config every scenario starts from: the minimal file with relative
/// paths, two workers (unless `gateway_extra` sets `workers`), a 5 s drain, plus
/// `gateway_extra` lines and `services`.
fn gateway_toml(port: u16, gateway_extra: &str, services: &str) -> String {
    // TOML refuses a key given twice, so a scenario's own worker count replaces ours.
    let sets_workers = gateway_extra.lines().any(|line| {
        line.split('=')
            .next()
            .is_some_and(|key| key.trim() == "workers")
    });
    let workers = if sets_workers { "" } else { "workers = 2\n" };
    format!(
        "[gateway]\nlisten = \"127.0.0.1:{port}\"\ncert = \"server.crt\"\n\
         key = \"server.key\"\nclient_ca = \"ca.crt\"\naudit_log = \"audit.jsonl\"\n\
         {workers}drain_timeout = \"5s\"\n{gateway_extra}\n\n{services}"
    )
}

/// A running `pgtunnel connect` listening on 127.0.0.1:`port` for psql.
pub struct Agent {
    child: Child,
    pub port: u16,
    _dir: TempDir,
    stderr_path: PathBuf,
}

impl Agent {
    /// Starts the agent for `service` on `gateway` with the login certificate `cert`.
    pub fn start(pki: &Pki, gateway: &Gateway, service: &str, cert: &CertPair) -> Agent {
        Agent::start_with(pki, gateway, service, cert, &[])
    }

    /// Like [`Agent::start`], with `extra` flags for `pgtunnel connect` (e.g.
    /// `--server-name`).
    pub fn start_with(
        pki: &Pki,
        gateway: &Gateway,
        service: &str,
        cert: &CertPair,
        extra: &[&str],
    ) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("pgtunnel-agent-")
            .tempdir()
            .expect("temp dir for the agent");
        let stderr_path = dir.path().join("agent.stderr");
        for attempt in 1..=3 {
            let port = cluster::free_loopback_port().expect("free port");
            let mut cmd = agent_command(pki, gateway.addr, service, cert, port);
            cmd.args(extra);
            let child = spawn_logged(cmd, &stderr_path);
            match wait_listening(child, port, &stderr_path, "agent") {
                Ok(child) => {
                    return Agent {
                        child,
                        port,
                        _dir: dir,
                        stderr_path,
                    };
                }
                Err(stderr) if stderr.contains("in use") && attempt < 3 => continue,
                Err(stderr) => panic!("agent exited before listening:\n{stderr}"),
            }
        }
        unreachable!("the loop above returns or panics on its last attempt")
    }

    /// The agent's diagnostic log so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// The `pgtunnel connect` command line the harness uses (not yet run).
pub fn agent_command(
    pki: &Pki,
    gateway: SocketAddr,
    service: &str,
    cert: &CertPair,
    port: u16,
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("connect")
        .arg("--gateway")
        .arg(gateway.to_string())
        .arg("--service")
        .arg(service)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cert")
        .arg(&cert.crt)
        .arg("--key")
        .arg(&cert.key)
        .arg("--ca")
        .arg(&pki.ca_crt);
    cmd
}

/// Starts a child with stdout discarded and stderr in a file we can show on failure.
fn spawn_logged(mut cmd: Command, stderr_path: &Path) -> Child {
    let stderr = fs::File::create(stderr_path).expect("stderr file for a child");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .env("RUST_LOG", "warn,pgtunnel=debug")
        .spawn()
        .expect("starting pgtunnel")
}

/// Waits until something listens on 127.0.0.1:`port`; if the child exits first,
/// returns its stderr.
fn wait_listening(
    mut child: Child,
    port: u16,
    stderr_path: &Path,
    what: &str,
) -> Result<Child, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let stderr = fs::read_to_string(stderr_path).unwrap_or_default();
            return Err(format!("{what} exited with {status}:\n{stderr}"));
        }
        if is_listening(port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(stderr_path).unwrap_or_default();
            panic!("{what} did not listen on port {port} within {WAIT:?}; stderr:\n{stderr}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a TCP socket listens on `port` in our network namespace, from
/// `/proc/net/tcp` (state 0A is LISTEN; the port is the hex after the colon).
pub fn is_listening(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "0A"
    })
}

/// Sends a signal by name with kill(1); the crate keeps `unsafe` (and so kill(2)) to
/// src/sys, and tests follow the same rule.
pub fn signal(child: &Child, name: &str) {
    // A child that already exited makes kill fail; the caller's wait tells what happened.
    let _ = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child, "TERM");
    if wait_bounded(child, STOP_TIMEOUT).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits for a child for at most `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Runs a program with its output captured; kills it and fails the test if it runs
/// longer than `timeout`. Pipes are drained on threads so a chatty child never blocks.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{what} ran longer than {timeout:?} and was killed; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A client program running in the background (a long query, say) while the test does
/// something else; its output is captured on threads.
pub struct Background {
    what: String,
    child: Child,
    /// The program's input, for one started with [`Background::spawn_fed`].
    stdin: Option<ChildStdin>,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Starts `cmd` with its output captured.
    pub fn spawn(cmd: Command) -> Background {
        Background::start(cmd, Stdio::null())
    }

    /// Starts `cmd` with its output captured and its input a pipe the test writes to
    /// ([`Background::feed`]); the program reads the end of its input when the test
    /// calls [`Background::finish`].
    pub fn spawn_fed(cmd: Command) -> Background {
        Background::start(cmd, Stdio::piped())
    }

    fn start(mut cmd: Command, stdin: Stdio) -> Background {
        let what = format!("{cmd:?}");
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdin = child.stdin.take();
        let out = Some(drain(child.stdout.take().expect("piped stdout")));
        let err = Some(drain(child.stderr.take().expect("piped stderr")));
        Background {
            what,
            child,
            stdin,
            out,
            err,
        }
    }

    /// Writes `text` to the input of a program started with [`Background::spawn_fed`].
    pub fn feed(&mut self, text: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{} was not started with spawn_fed", self.what));
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("feeding {}: {e}", self.what));
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes its input (if the test holds it), then waits at most `timeout` for it to
    /// end; kills it and fails the test if it does not.
    pub fn finish(mut self, timeout: Duration) -> ClientOutput {
        drop(self.stdin.take());
        let status = wait_bounded(&mut self.child, timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let stdout = self.out.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.err.take().map(|h| h.join().unwrap_or_default());
        let output = Output {
            status: status.unwrap_or_else(|| {
                panic!(
                    "{} ran longer than {timeout:?} and was killed; stderr:\n{}",
                    self.what,
                    String::from_utf8_lossy(stderr.as_deref().unwrap_or_default())
                )
            }),
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
        };
        ClientOutput::from(output)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

// ---------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------

/// The complete records in an audit log (a line still being written is left for the
/// next read). A complete line that is not a JSON object fails the test.
pub fn read_audit(path: &Path) -> Vec<Value> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading audit log {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
            assert!(value.is_object(), "audit line is not a JSON object: {line}");
            value
        })
        .collect()
}

/// The records with `event`.
pub fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

/// The records whose `peer` is `addr` (a client whose local address we know).
pub fn from_peer(records: &[Value], addr: SocketAddr) -> Vec<&Value> {
    let peer = addr.to_string();
    records
        .iter()
        .filter(|r| r["peer"] == peer.as_str())
        .collect()
}

/// One record a line, for assertion messages.
pub fn show<'a>(records: impl IntoIterator<Item = &'a Value>) -> String {
    records
        .into_iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// A raw TLS client, for clients that misbehave on purpose
// ---------------------------------------------------------------------------------------

/// The name the gateway's certificate carries in every scenario (see [`Pki::new`]).
pub const GATEWAY_NAME: &str = "localhost";

/// A TLS 1.3 client config that trusts `ca` and offers ALPN `pgtunnel`, presenting
/// `cert` if given. The gateway's certificate is checked for [`GATEWAY_NAME`] whatever
/// SNI the connection sends: SNI names the service, as the agent does it.
pub fn tls_client(ca: &Path, cert: Option<&CertPair>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca).expect("reading CA PEM") {
        roots
            .add(der.expect("CA certificate"))
            .expect("adding CA root");
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .expect("server verifier");
    let verifier = Arc::new(GatewayNameVerifier(webpki));
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(pair) => {
            let chain = CertificateDer::pem_file_iter(&pair.crt)
                .expect("reading certificate PEM")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM");
            let key = PrivateKeyDer::from_pem_file(&pair.key).expect("reading key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key match")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"pgtunnel".to_vec()];
    Arc::new(config)
}

/// Full WebPKI verification of the gateway's certificate, for [`GATEWAY_NAME`] instead
/// of the SNI (which names the service).
#[derive(Debug)]
struct GatewayNameVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for GatewayNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(GATEWAY_NAME).expect("a DNS name");
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How a raw TLS attempt ended.
#[derive(Debug)]
pub struct TlsAttempt {
    /// Our side of the TCP connection, which the gateway records as `peer`.
    pub local: SocketAddr,
    /// `Err` if the handshake failed on our side (e.g. an alert from the gateway).
    pub handshake: Result<(), String>,
    /// After a completed handshake: what the first read gave (an alert error or end of
    /// stream for a refused client; a TLS 1.3 client finishes its handshake before
    /// the server has judged its certificate, so the refusal shows up here).
    pub first_read: Option<Result<usize, String>>,
}

impl TlsAttempt {
    /// Whether the gateway refused: the handshake failed, or the first read after it
    /// was an error or the end of the stream.
    pub fn refused(&self) -> bool {
        matches!(
            (&self.handshake, &self.first_read),
            (Err(_), _) | (Ok(()), Some(Err(_))) | (Ok(()), Some(Ok(0)))
        )
    }
}

/// Connects to the gateway with `config` and SNI `sni`, completes the handshake if the
/// gateway lets it, then reads once, all under [`WAIT`].
pub fn tls_attempt(
    gateway: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsAttempt {
    let (local, mut stream, handshake) = tls_handshake(gateway, config, sni);
    let first_read = handshake.is_ok().then(|| {
        let mut buf = [0u8; 256];
        stream.read(&mut buf).map_err(|e| e.to_string())
    });
    TlsAttempt {
        local,
        handshake,
        first_read,
    }
}

/// A TLS stream to the gateway after a handshake that succeeded on our side (the
/// gateway may still refuse us on its first look at the certificate). `sni` is sent
/// unless `config` disables SNI; the certificate is checked for [`GATEWAY_NAME`].
pub fn tls_handshake(
    gateway: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> (SocketAddr, TlsStream, Result<(), String>) {
    let sock = TcpStream::connect_timeout(&gateway, WAIT).expect("TCP connect to gateway");
    let local = sock.local_addr().expect("local address");
    sock.set_read_timeout(Some(WAIT)).expect("read timeout");
    sock.set_write_timeout(Some(WAIT)).expect("write timeout");
    let name = ServerName::try_from(sni.to_owned()).expect("SNI is a valid DNS name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut stream = rustls::StreamOwned::new(conn, sock);

    // Each round trip moves the handshake on; a TLS 1.3 handshake needs two or three.
    let mut handshake = Ok(());
    for _ in 0..16 {
        if !stream.conn.is_handshaking() {
            break;
        }
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            handshake = Err(e.to_string());
            break;
        }
    }
    if handshake.is_ok() && stream.conn.is_handshaking() {
        handshake = Err("handshake did not finish in 16 round trips".to_owned());
    }
    (local, stream, handshake)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// PostgreSQL's SSLRequest (protocol 1234.5679): PostgreSQL answers a single `S` or `N`.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The bytes of a real ClientHello for `sni`, as the first flight of a TLS client.
pub fn client_hello(ca: &Path, sni: &str) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_owned()).expect("SNI is a valid DNS name");
    let mut conn =
        rustls::ClientConnection::new(tls_client(ca, None), name).expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("writing ClientHello");
    assert!(
        hello.len() > 100,
        "ClientHello too short: {} bytes",
        hello.len()
    );
    hello
}

/// Sends `bytes` on a fresh connection to the gateway, then waits (bounded) for the
/// gateway to close it; returns our local address and whether the gateway closed.
pub fn send_and_wait_for_close(
    gateway: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> (SocketAddr, bool) {
    let mut sock = TcpStream::connect_timeout(&gateway, WAIT).expect("TCP connect to gateway");
    let local = sock.local_addr().expect("local address");
    if !bytes.is_empty() {
        sock.write_all(bytes).expect("sending bytes to gateway");
    }
    sock.set_read_timeout(Some(wait)).expect("read timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    // The gateway may answer (an alert) before it closes; read until end of stream.
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) => return (local, true),
            Ok(_) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (local, false);
            }
            Err(_) => return (local, true),
        }
    }
    (local, false)
}

/// Where a file named `name` sits in the repository (for examples/).
pub fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}
