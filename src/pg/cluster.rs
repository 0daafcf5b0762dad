//! Throwaway PostgreSQL clusters for the tests, `pgtunnel demo` and the bench.
//!
//! A [`Cluster`] is a real PostgreSQL server made with `initdb` in a temporary folder,
//! configured with exactly what [`PgTlsSettings`] produces (the lines and key commands
//! `pgtunnel pg-config` prints), listening on 127.0.0.1 only, and removed again when
//! the value is dropped. It owns finding the server binaries (Debian's
//! `/usr/lib/postgresql/<version>/bin`), running them as the `postgres` OS user when we
//! are root (PostgreSQL refuses to run as root), and a superuser channel over its own
//! unix socket for set-up work. It leaves certificates to `pki` and the settings
//! themselves to `pg::settings`. Linux-only: it reads `/proc/self/status` and uses
//! `runuser` from util-linux.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::pg::settings::PgTlsSettings;

/// Where Debian and Ubuntu install one folder per PostgreSQL major version.
pub const PG_LIB_ROOT: &str = "/usr/lib/postgresql";

/// Names a folder holding `postgres`, `initdb`, `pg_ctl` and `psql`, for systems that
/// install them elsewhere than [`PG_LIB_ROOT`].
pub const PG_BIN_ENV: &str = "PGTUNNEL_PG_BIN";

/// The cluster's superuser, made by `initdb --username`.
pub const SUPERUSER: &str = "postgres";

/// The OS user PostgreSQL runs as when we are root (Debian's packages create it).
const SERVICE_OS_USER: &str = "postgres";

/// Bounds on the helper programs; a cold `initdb` takes about a second here.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds `pg_ctl -w` waits for the server to accept connections, or to stop.
const PG_CTL_WAIT_SECS: &str = "30";

/// How often a free port we picked can be taken by someone else before we give up.
const PORT_ATTEMPTS: u32 = 3;

/// What can go wrong while making, using or removing a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server found in {searched}: install PostgreSQL \
         (Debian: apt-get install postgresql) or set {PG_BIN_ENV} to its bin folder"
    )]
    NotInstalled { searched: String },

    #[error("OS user {user:?} does not exist; as root, PostgreSQL must run as that user")]
    NoServiceUser { user: String },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },

    #[error("PostgreSQL did not start; its log ends with:\n{log_tail}")]
    Start { log_tail: String },

    #[error("role name {0:?} is empty or holds a NUL byte")]
    BadRoleName(String),
}

/// What the cluster is made with. The certificate files are copied into the data folder,
/// so the originals may live anywhere readable by us.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The CA whose login certificates PostgreSQL accepts (`ssl_ca_file`).
    pub ca_cert: PathBuf,
    /// PostgreSQL's own server certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Roles created with LOGIN once the server is up (e.g. `alice`, `bob`).
    pub users: Vec<String>,
}

impl ClusterOptions {
    pub fn new(
        ca_cert: impl Into<PathBuf>,
        server_cert: impl Into<PathBuf>,
        server_key: impl Into<PathBuf>,
    ) -> Self {
        Self {
            ca_cert: ca_cert.into(),
            server_cert: server_cert.into(),
            server_key: server_key.into(),
            port: None,
            users: Vec::new(),
        }
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.users.push(name.into());
        self
    }
}

/// A running throwaway PostgreSQL server. Dropping it stops the server
/// (`pg_ctl stop -m fast`) and removes its folder.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    tls: PgTlsSettings,
    running: bool,
    // Last, so the folder goes only after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
}

/// The unprivileged OS user the server runs as when we are root.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl Cluster {
    /// Makes, configures and starts a cluster, then creates the requested login roles.
    pub fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        for user in &options.users {
            quote_ident(user)?;
        }
        let bin_dir = postgres_bin_dir()?;
        let run_as = if effective_uid()? == 0 {
            Some(lookup_os_user(SERVICE_OS_USER)?)
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix("pgtunnel-cluster-")
            .tempdir()
            .map_err(|e| io_error("creating the cluster's temporary folder", e))?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        let log_path = dir.path().join("postgresql.log");
        fs::create_dir(&socket_dir).map_err(|e| io_error("creating the socket folder", e))?;
        for path in [dir.path(), socket_dir.as_path()] {
            hand_over(path, run_as.as_ref(), 0o700)?;
        }

        // The data folder must exist before the files below are copied into it, and it
        // names itself in the settings, so the port is chosen after this.
        let mut cluster = Cluster {
            bin_dir,
            run_as,
            tls: PgTlsSettings::new(
                &data_dir.join("root.crt"),
                &data_dir.join("server.crt"),
                &data_dir.join("server.key"),
            ),
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            running: false,
            dir,
        };
        cluster.initdb()?;
        cluster.install_tls_files(&options)?;
        cluster.write_hba()?;
        cluster.start_server(options.port)?;
        for user in &options.users {
            cluster.admin_sql(&format!("CREATE ROLE {} LOGIN", quote_ident(user)?))?;
        }
        Ok(cluster)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The folder holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The unix socket itself (`<socket_dir>/.s.PGSQL.<port>`), for a gateway service
    /// with `upstream = "unix:..."`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file (startup failures and refused logins are explained there).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The settings the cluster was configured with (paths point into the data folder).
    pub fn tls_settings(&self) -> &PgTlsSettings {
        &self.tls
    }

    /// The path of one of the PostgreSQL programs this cluster runs with (`psql`,
    /// `pgbench`, ...), so clients match the server's version.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A command for a PostgreSQL client program that reaches this cluster as the
    /// superuser over its unix socket: `PGHOST`, `PGPORT`, `PGUSER` and `PGDATABASE` are
    /// set, and any other `PG*` variable of ours is removed so it cannot redirect it.
    pub fn admin_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin(program));
        remove_pg_env(&mut cmd);
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs SQL as the superuser over the unix socket and returns psql's unaligned,
    /// tuples-only output. Stops at the first error.
    pub fn admin_sql(&self, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.admin_command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        let output = run_bounded(cmd, "psql", PSQL_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server now and reports a failure, instead of the best effort of `Drop`.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.stop_server()
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["--username", SUPERUSER])
            // pg_hba.conf is replaced below; this only keeps initdb from warning.
            .arg("--auth=trust")
            .args(["--encoding=UTF8", "--locale=C"])
            // A throwaway cluster need not survive a power cut.
            .arg("--no-sync");
        run_bounded(cmd, "initdb", INITDB_TIMEOUT).map(drop)
    }

    /// Copies the CA, certificate and key to where the settings point, owned by the
    /// server's OS user, then runs the key commands pg-config prints (key owned by that
    /// user, mode 0600: PostgreSQL refuses a key others can read).
    fn install_tls_files(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let files = [
            (&options.ca_cert, self.tls.ca(), 0o644),
            (&options.server_cert, self.tls.cert(), 0o644),
            (&options.server_key, self.tls.key(), 0o600),
        ];
        for (from, to, mode) in files {
            let bytes =
                fs::read(from).map_err(|e| io_error(format!("reading {}", from.display()), e))?;
            write_new_file(to, &bytes, mode)?;
            hand_over(to, self.run_as.as_ref(), mode)?;
        }
        let os_user = match &self.run_as {
            Some(user) => user.name.clone(),
            None => current_user_name()?,
        };
        for command in self.tls.key_commands(&os_user) {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(&command).stdin(Stdio::null());
            run_bounded(sh, "a pg-config key command", PSQL_TIMEOUT)?;
        }

        let mut conf =
            String::from("\n# pgtunnel: TLS settings, as printed by pgtunnel pg-config\n");
        for line in self.tls.postgresql_conf() {
            conf.push_str(&line);
            conf.push('\n');
        }
        conf.push_str("\n# pgtunnel: a throwaway cluster on loopback only\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            escape_conf_string(&self.socket_dir.display().to_string())
        ));
        // Durability buys nothing for a folder deleted at the end, and costs test time.
        conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        // Refused logins are explained in the server log; tests point at it on failure.
        conf.push_str("log_connections = on\n");
        append(&self.data_dir.join("postgresql.conf"), &conf)
    }

    fn write_hba(&self) -> Result<(), ClusterError> {
        // Why `local all all trust`: the harness needs a superuser to create roles, grant
        // and load pgbench tables, with neither a password nor a certificate. The socket
        // lives in this cluster's own folder (mode 0700, owned by the server's OS user),
        // so only that user and root can reach it, and TCP stays certificate-only: every
        // login over 127.0.0.1 goes through the lines pg-config prints.
        let mut hba = String::from(
            "# pgtunnel throwaway cluster\n\
             # superuser set-up over the private unix socket only (see pg::cluster)\n\
             local all all trust\n\
             # as printed by pgtunnel pg-config\n",
        );
        for line in self.tls.pg_hba_cert() {
            hba.push_str(&line);
            hba.push('\n');
        }
        let path = self.data_dir.join("pg_hba.conf");
        fs::write(&path, hba).map_err(|e| io_error(format!("writing {}", path.display()), e))
    }

    /// Starts the server on the requested port, or on a free one; a free port can be
    /// taken between our probe and PostgreSQL's bind, so that case is retried.
    fn start_server(&mut self, port: Option<u16>) -> Result<(), ClusterError> {
        let attempts = if port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut last_error = None;
        for _ in 0..attempts {
            self.port = match port {
                Some(port) => port,
                None => free_loopback_port()
                    .map_err(|e| io_error("finding a free port on 127.0.0.1", e))?,
            };
            let mut cmd = self.server_command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-t", PG_CTL_WAIT_SECS])
                .arg("-o")
                .arg(format!("-p {}", self.port))
                .arg("start")
                // Its own process group, so a Ctrl-C meant for the demo does not stop
                // the server behind our back; Drop stops it in order.
                .process_group(0);
            match run_bounded(cmd, "pg_ctl start", PG_CTL_TIMEOUT) {
                Ok(_) => {
                    self.running = true;
                    return Ok(());
                }
                Err(err) => {
                    let log_tail = self.log_tail();
                    if !log_tail.contains("could not bind") {
                        return Err(ClusterError::Start {
                            log_tail: format!("{log_tail}\n({err})"),
                        });
                    }
                    last_error = Some(ClusterError::Start { log_tail });
                }
            }
        }
        Err(last_error.unwrap_or(ClusterError::Start {
            log_tail: String::new(),
        }))
    }

    fn stop_server(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
            "stop",
        ]);
        run_bounded(cmd, "pg_ctl stop", PG_CTL_TIMEOUT).map(drop)
    }

    /// A command for a server-side program, run as the server's OS user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", &user.name, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        remove_pg_env(&mut cmd);
        // Our own working folder may be closed to the server's user (e.g. /root).
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop_server() {
            tracing::warn!(data_dir = %self.data_dir.display(), error = %err,
                "throwaway cluster did not stop cleanly");
        }
    }
}

/// The bin folder of the newest PostgreSQL under [`PG_LIB_ROOT`], or the one named by
/// [`PG_BIN_ENV`].
pub fn postgres_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(ClusterError::NotInstalled {
            searched: format!("{PG_BIN_ENV}={}", dir.display()),
        });
    }

    let not_installed = || ClusterError::NotInstalled {
        searched: format!("{PG_LIB_ROOT}/*/bin"),
    };
    let entries = fs::read_dir(PG_LIB_ROOT).map_err(|_| not_installed())?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Major versions name the folders: "15", "16", or "9.6" for old ones.
        let Ok(version) = name
            .split('.')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(not_installed)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
/// Someone else may take it before the caller binds it; callers that can, retry.
pub fn free_loopback_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Quotes an SQL identifier: double quotes around it, inner double quotes doubled.
pub fn quote_ident(name: &str) -> Result<String, ClusterError> {
    if name.is_empty() || name.contains('\0') {
        return Err(ClusterError::BadRoleName(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Runs a program with its output captured, killing it if it outlives `timeout`.
/// Readers drain both pipes on their own threads so a chatty child cannot block on a
/// full pipe while we wait.
fn run_bounded(mut cmd: Command, program: &str, timeout: Duration) -> Result<Output, ClusterError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io_error(format!("starting {program}"), e))?;
    let stdout = child.stdout.take().map(drain_on_thread);
    let stderr = child.stderr.take().map(drain_on_thread);

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::Timeout {
                    program: program.to_owned(),
                    timeout,
                });
            }
            Err(e) => return Err(io_error(format!("waiting for {program}"), e)),
        }
    };

    let join = |handle: Option<thread::JoinHandle<Vec<u8>>>| {
        handle.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let output = Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    };
    if !output.status.success() {
        return Err(ClusterError::Command {
            program: program.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

fn drain_on_thread(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only shortens what we report; the exit status still decides.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Removes every `PG*` variable from a child's environment: ours could point libpq or
/// the server programs at another cluster.
fn remove_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Our effective user id, from `/proc/self/status` (the second number on `Uid:`).
fn effective_uid() -> Result<u32, ClusterError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| io_error("reading /proc/self/status", e))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| {
            io_error(
                "reading /proc/self/status",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no effective uid on the Uid: line",
                ),
            )
        })
}

/// Looks an OS user up with `id`, which asks NSS as every other tool does.
fn lookup_os_user(name: &str) -> Result<OsUser, ClusterError> {
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let output = Command::new("id")
            .args([flag, name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_error("running id", e))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| ClusterError::NoServiceUser {
                user: name.to_owned(),
            })
    };
    Ok(OsUser {
        name: name.to_owned(),
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// Our own OS user name (`id -un`), for the key commands when we are not root.
fn current_user_name() -> Result<String, ClusterError> {
    let output = Command::new("id")
        .arg("-un")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_error("running id -un", e))?;
    let name = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || name.is_empty() {
        return Err(io_error(
            "running id -un",
            io::Error::other("it named no user for our uid"),
        ));
    }
    Ok(name)
}

/// Gives a path to the server's OS user (when we are root) and sets its mode.
fn hand_over(path: &Path, user: Option<&OsUser>, mode: u32) -> Result<(), ClusterError> {
    if let Some(user) = user {
        chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| io_error(format!("giving {} to {}", path.display(), user.name), e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(format!("setting the mode of {}", path.display()), e))
}

/// Writes a file that must not exist yet, created with `mode` so a key is never
/// readable by others, not even for a moment.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let context = || format!("writing {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(context(), e))?;
    file.write_all(bytes).map_err(|e| io_error(context(), e))
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;

    let context = || format!("appending to {}", path.display());
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io_error(context(), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io_error(context(), e))
}

/// Escapes a value for a single-quoted postgresql.conf string.
fn escape_conf_string(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

fn io_error(context: impl Into<String>, source: io::Error) -> ClusterError {
    ClusterError::Io {
        context: context.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("alice").unwrap(), "\"alice\"", "plain name");
        assert_eq!(
            quote_ident("a\"b").unwrap(),
            "\"a\"\"b\"",
            "inner quote not doubled"
        );
        assert!(quote_ident("").is_err(), "empty role name accepted");
        assert!(quote_ident("a\0b").is_err(), "NUL in role name accepted");
    }

    #[test]
    fn conf_strings_escape_quotes_and_backslashes() {
        assert_eq!(
            escape_conf_string(r"/tmp/it's\x"),
            r"/tmp/it''s\\x",
            "bad escaping"
        );
    }

    #[test]
    fn effective_uid_matches_the_owner_of_files_we_create() {
        use std::os::unix::fs::MetadataExt;

        let file = tempfile::NamedTempFile::new().expect("temp file");
        let owner = file.as_file().metadata().expect("metadata").uid();
        assert_eq!(
            effective_uid().expect("euid"),
            owner,
            "euid disagrees with file owner"
        );
    }
}
