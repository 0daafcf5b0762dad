//! The gateway's configuration: one TOML file read into raw serde structs, then checked
//! and turned into a [`GatewayConfig`] once. Everything after this module works with
//! validated values only.
//!
//! Every error is one line naming the file, the field and the value
//! (`gateway.toml: service[1].upstream: "db:99999": port out of range`), because the
//! person reading it is an operator at a terminal, not a developer. Relative paths
//! resolve against the folder of the config file. Host names in `upstream` are resolved
//! once, at load (and on reload), not per session.
//! Loading the files the config names (certificates, keys) is left to `tls` and `pki`;
//! `gateway --check` does both.

mod raw;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::RawConfig;

use crate::audit::{AuditOptions, FailurePolicy, FsyncPolicy};

/// A configuration problem, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {field}: {value:?}: {problem}")]
    Invalid {
        file: String,
        field: String,
        value: String,
        problem: String,
    },
    #[error("{file}: {field}: {problem}")]
    Missing {
        file: String,
        field: String,
        problem: String,
    },
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from (for reload and for messages).
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub audit_log: PathBuf,
    /// How the audit writer syncs (`audit_fsync`, `audit_fsync_interval`), what the
    /// gateway does when the log cannot be written (`on_audit_failure`), and when the
    /// file rotates (`audit_max_bytes`).
    pub audit: AuditOptions,
    /// Worker threads, one per CPU by default; each pinned, with its own ring and listener.
    pub workers: usize,
    /// Cap on concurrent sessions for the whole gateway (split evenly across workers).
    pub max_sessions: usize,
    /// Cap on TLS handshakes in progress for the whole gateway (split across workers).
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// Longest validity period (not-after minus not-before) a login certificate may have.
    pub max_cert_lifetime: Duration,
    /// The CA's CRL; revoked certificates are refused and their live sessions closed.
    pub crl: Option<PathBuf>,
    /// Close live sessions when their login certificate expires (plus the grace period).
    pub close_on_cert_expiry: bool,
    pub cert_expiry_grace: Duration,
    /// Issue TLS 1.3 session tickets so that agents can resume.
    pub session_tickets: bool,
    /// Shared master secret for ticket keys (several gateways, restarts); None = random.
    pub ticket_key_file: Option<PathBuf>,
    /// How often the ticket key changes; a ticket lives at most twice this.
    pub ticket_rotation: Duration,
    /// Whether sessions move to kernel TLS + splice after the handshake.
    pub ktls: KtlsMode,
    pub services: Vec<Service>,
}

/// The `ktls` setting: which pump carries a session's bytes after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsMode {
    /// Kernel TLS + splice where this kernel can (checked once at start), else the
    /// userspace pump.
    Auto,
    /// Always the userspace pump.
    Off,
    /// Kernel TLS + splice or refuse to start: for operators who sized the gateway on it.
    Require,
}

/// One PostgreSQL service behind the gateway, chosen by the client's SNI.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub upstream: Upstream,
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
}

/// Where a service's PostgreSQL listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// TCP; connected with TCP_NODELAY. The address was resolved at load.
    Tcp(SocketAddr),
    /// A unix socket path, e.g. `/run/postgresql/.s.PGSQL.5432`. PostgreSQL offers no
    /// TLS there, so its `cert` check cannot apply: only the gateway checks the login
    /// certificate on this path (docs/limitations.md).
    Unix(PathBuf),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp(addr) => write!(f, "{addr}"),
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl GatewayConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let file = display_name(path);
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if it had been read from `path` (relative paths resolve
    /// against `path`'s folder).
    pub fn parse(text: &str, path: &Path) -> Result<GatewayConfig, ConfigError> {
        let file = display_name(path);
        let raw: RawConfig = toml::from_str(text).map_err(|err| syntax_error(&file, text, &err))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Validator { file, base }.validate(raw, path)
    }

    /// Only `gateway.audit_log` of the file at `path`, resolved as [`GatewayConfig::load`]
    /// resolves it, without checking the rest (or resolving its host names): what
    /// `pgtunnel audit` needs on a machine that may not reach the databases.
    pub fn audit_log_of(path: &Path) -> Result<PathBuf, ConfigError> {
        let file = display_name(path);
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let raw: RawConfig =
            toml::from_str(&text).map_err(|err| syntax_error(&file, &text, &err))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Validator { file, base }.path(&raw.gateway.audit_log))
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Identifies a version of a file cheaply, for noticing that a certificate, key or CRL
/// was replaced: a rewrite (even in place, even to the same size) changes the
/// modification time or the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The file's current stamp, or None when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// The default number of workers: one per CPU this process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The smallest `audit_max_bytes`: below it nearly every batch would rotate.
const MIN_AUDIT_MAX_BYTES: u64 = 4096;

struct Validator {
    file: String,
    base: PathBuf,
}

impl Validator {
    fn validate(&self, raw: RawConfig, path: &Path) -> Result<GatewayConfig, ConfigError> {
        let g = raw.gateway;
        let listen = self.socket_addr("gateway.listen", &g.listen)?;
        let workers = match g.workers {
            Some(n) if !(1..=1024).contains(&n) => {
                return Err(self.invalid("gateway.workers", n, "must be between 1 and 1024"));
            }
            Some(n) => n,
            None => default_workers(),
        };
        let max_sessions = g.max_sessions.unwrap_or(10_000);
        if max_sessions == 0 {
            return Err(self.invalid("gateway.max_sessions", 0, "must be at least 1"));
        }
        let max_handshakes = g.max_handshakes.unwrap_or(1024);
        if max_handshakes == 0 {
            return Err(self.invalid("gateway.max_handshakes", 0, "must be at least 1"));
        }

        let mut services = Vec::with_capacity(raw.service.len());
        let mut names = HashSet::new();
        for (i, s) in raw.service.into_iter().enumerate() {
            let service = self.service(i, s)?;
            if !names.insert(service.name.clone()) {
                let field = format!("service[{i}].name");
                return Err(self.invalid(&field, &service.name, "defined twice"));
            }
            services.push(service);
        }
        if services.is_empty() {
            return Err(ConfigError::Missing {
                file: self.file.clone(),
                field: "service".into(),
                problem: "no [[service]] defined: the gateway would refuse everyone".into(),
            });
        }

        Ok(GatewayConfig {
            path: path.to_path_buf(),
            listen,
            cert: self.path(&g.cert),
            key: self.path(&g.key),
            client_ca: self.path(&g.client_ca),
            audit_log: self.path(&g.audit_log),
            audit: self.audit(
                g.audit_fsync,
                g.audit_fsync_interval,
                g.on_audit_failure,
                g.audit_max_bytes,
            )?,
            workers,
            max_sessions,
            max_handshakes,
            handshake_timeout: self.duration(
                "gateway.handshake_timeout",
                g.handshake_timeout,
                10,
            )?,
            connect_timeout: self.duration("gateway.connect_timeout", g.connect_timeout, 5)?,
            drain_timeout: self.duration("gateway.drain_timeout", g.drain_timeout, 30)?,
            max_cert_lifetime: self.duration(
                "gateway.max_cert_lifetime",
                g.max_cert_lifetime,
                24 * 3600,
            )?,
            crl: g.crl.as_deref().map(|p| self.path(p)),
            close_on_cert_expiry: g.close_on_cert_expiry.unwrap_or(true),
            cert_expiry_grace: match g.cert_expiry_grace {
                // Zero is a meaningful grace period, unlike a zero timeout.
                Some(text) if humantime::parse_duration(&text).is_ok_and(|d| d.is_zero()) => {
                    Duration::ZERO
                }
                other => self.duration("gateway.cert_expiry_grace", other, 0)?,
            },
            session_tickets: g.session_tickets.unwrap_or(true),
            ticket_key_file: g.ticket_key_file.as_deref().map(|p| self.path(p)),
            ticket_rotation: self.duration("gateway.ticket_rotation", g.ticket_rotation, 3600)?,
            ktls: match g.ktls.as_deref().unwrap_or("auto") {
                "auto" => KtlsMode::Auto,
                "off" => KtlsMode::Off,
                "require" => KtlsMode::Require,
                other => {
                    return Err(self.invalid(
                        "gateway.ktls",
                        other,
                        "expected \"auto\", \"off\" or \"require\"",
                    ));
                }
            },
            services,
        })
    }

    fn audit(
        &self,
        fsync: Option<String>,
        interval: Option<String>,
        on_failure: Option<String>,
        max_bytes: Option<u64>,
    ) -> Result<AuditOptions, ConfigError> {
        let fsync = match fsync.as_deref().unwrap_or("interval") {
            "interval" => {
                FsyncPolicy::Interval(self.duration("gateway.audit_fsync_interval", interval, 1)?)
            }
            other => {
                if let Some(value) = interval {
                    return Err(self.invalid(
                        "gateway.audit_fsync_interval",
                        value,
                        "only used with audit_fsync = \"interval\"",
                    ));
                }
                match other {
                    "always" => FsyncPolicy::Always,
                    "never" => FsyncPolicy::Never,
                    _ => {
                        return Err(self.invalid(
                            "gateway.audit_fsync",
                            other,
                            "expected \"always\", \"interval\" or \"never\"",
                        ));
                    }
                }
            }
        };
        let on_failure = match on_failure.as_deref().unwrap_or("refuse") {
            "refuse" => FailurePolicy::Refuse,
            "continue" => FailurePolicy::Continue,
            other => {
                return Err(self.invalid(
                    "gateway.on_audit_failure",
                    other,
                    "expected \"refuse\" or \"continue\"",
                ));
            }
        };
        if let Some(n) = max_bytes
            && n < MIN_AUDIT_MAX_BYTES
        {
            return Err(self.invalid(
                "gateway.audit_max_bytes",
                n,
                &format!("must be at least {MIN_AUDIT_MAX_BYTES} (a few records)"),
            ));
        }
        Ok(AuditOptions {
            fsync,
            on_failure,
            max_bytes,
        })
    }

    fn service(&self, i: usize, s: raw::RawService) -> Result<Service, ConfigError> {
        let field = |name: &str| format!("service[{i}].{name}");
        if !is_service_name(&s.name) {
            return Err(self.invalid(
                &field("name"),
                &s.name,
                "must be a DNS name (letters, digits, '-' and '.'): clients send it as SNI",
            ));
        }
        let upstream = self.upstream(&field("upstream"), &s.upstream)?;
        if s.allow_users.is_empty() && s.allow_groups.is_empty() {
            return Err(ConfigError::Missing {
                file: self.file.clone(),
                field: field("allow_users"),
                problem: "allow_users and allow_groups are both empty: nobody could connect".into(),
            });
        }
        for (list, values) in [
            ("allow_users", &s.allow_users),
            ("allow_groups", &s.allow_groups),
        ] {
            if let Some(bad) = values
                .iter()
                .find(|v| v.is_empty() || v.trim() != v.as_str())
            {
                return Err(self.invalid(&field(list), bad, "empty or padded with spaces"));
            }
        }
        Ok(Service {
            name: s.name,
            upstream,
            allow_users: s.allow_users,
            allow_groups: s.allow_groups,
        })
    }

    fn upstream(&self, field: &str, value: &str) -> Result<Upstream, ConfigError> {
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(self.invalid(field, value, "empty unix socket path"));
            }
            return Ok(Upstream::Unix(self.path(path)));
        }
        self.socket_addr(field, value).map(Upstream::Tcp)
    }

    fn socket_addr(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(self.invalid(field, value, "expected HOST:PORT"));
        };
        if port.parse::<u16>().is_err() {
            return Err(self.invalid(field, value, "port out of range"));
        }
        if host.is_empty() {
            return Err(self.invalid(field, value, "expected HOST:PORT"));
        }
        match value.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| self.invalid(field, value, "host name has no address")),
            Err(err) => Err(self.invalid(field, value, &format!("cannot resolve: {err}"))),
        }
    }

    fn duration(
        &self,
        field: &str,
        value: Option<String>,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = value else {
            return Ok(Duration::from_secs(default_secs));
        };
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => Err(self.invalid(field, &text, "must be longer than zero")),
            Ok(d) => Ok(d),
            Err(err) => Err(self.invalid(field, &text, &format!("invalid duration ({err})"))),
        }
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn invalid(&self, field: &str, value: impl fmt::Display, problem: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            field: field.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// A service name travels as SNI, so it must be a valid DNS name.
fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn display_name(path: &Path) -> String {
    path.display().to_string()
}

/// One line from a TOML error: the line number and the parser's message without the
/// source excerpt it normally draws.
fn syntax_error(file: &str, text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(0);
    let message = err.message().replace('\n', " ").trim().to_string();
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
listen = "127.0.0.1:6543"
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
audit_log = "audit.jsonl"

[[service]]
name = "main"
upstream = "127.0.0.1:5432"
allow_users = ["alice"]
allow_groups = ["dba"]
"#;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::parse(text, Path::new("/etc/pgtunnel/gateway.toml"))
    }

    #[test]
    fn minimal_config_from_the_issue_loads_with_defaults() {
        let config = parse(MINIMAL).expect("the minimal config must load");
        assert_eq!(config.listen, "127.0.0.1:6543".parse().unwrap());
        assert_eq!(
            config.cert,
            Path::new("/etc/pgtunnel/server.crt"),
            "relative to the file"
        );
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            config.services[0].upstream,
            Upstream::Tcp("127.0.0.1:5432".parse().unwrap())
        );
        assert!(config.workers >= 1);
    }

    #[test]
    fn port_out_of_range_names_file_field_and_value() {
        let text = MINIMAL.replace("127.0.0.1:5432", "db:99999");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"/etc/pgtunnel/gateway.toml: service[0].upstream: "db:99999": port out of range"#
        );
    }

    #[test]
    fn unknown_field_is_a_one_line_syntax_error_with_line_number() {
        let text = MINIMAL
            .replace("workers_typo", "")
            .replace("[gateway]", "[gateway]\nlsten = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("lsten"),
            "got: {err}"
        );
        assert!(!err.contains('\n'), "must be one line: {err}");
    }

    #[test]
    fn bad_duration_and_duplicate_service_are_refused() {
        let text = MINIMAL.replace(
            "audit_log = \"audit.jsonl\"",
            "audit_log = \"audit.jsonl\"\nhandshake_timeout = \"ten\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("gateway.handshake_timeout: \"ten\""),
            "got: {err}"
        );

        let twice = format!(
            "{MINIMAL}\n[[service]]\nname = \"main\"\nupstream = \"unix:/s\"\nallow_users = [\"x\"]\n"
        );
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("service[1].name: \"main\": defined twice"),
            "got: {err}"
        );
    }

    #[test]
    fn audit_settings_default_to_interval_sync_and_refusing_sessions() {
        let config = parse(MINIMAL).expect("the minimal config must load");
        assert_eq!(
            config.audit,
            AuditOptions {
                fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
                on_failure: FailurePolicy::Refuse,
                max_bytes: None,
            },
            "the defaults must be fsync every second, fail closed, no size rotation"
        );
    }

    #[test]
    fn audit_settings_are_read_and_bad_values_named() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "audit_log = \"audit.jsonl\"",
                &format!("audit_log = \"audit.jsonl\"\n{extra}"),
            )
        };
        let config = parse(&with(
            "audit_fsync = \"always\"\non_audit_failure = \"continue\"\naudit_max_bytes = 1048576",
        ))
        .expect("valid audit settings must load");
        assert_eq!(config.audit.fsync, FsyncPolicy::Always, "audit_fsync read");
        assert_eq!(
            config.audit.on_failure,
            FailurePolicy::Continue,
            "on_audit_failure read"
        );
        assert_eq!(
            config.audit.max_bytes,
            Some(1_048_576),
            "audit_max_bytes read"
        );

        let cases = [
            (
                "audit_fsync = \"sometimes\"",
                r#"gateway.audit_fsync: "sometimes": expected "always", "interval" or "never""#,
            ),
            (
                "on_audit_failure = \"ignore\"",
                r#"gateway.on_audit_failure: "ignore": expected "refuse" or "continue""#,
            ),
            (
                "audit_max_bytes = 100",
                r#"gateway.audit_max_bytes: "100": must be at least 4096"#,
            ),
            (
                "audit_fsync = \"never\"\naudit_fsync_interval = \"2s\"",
                r#"gateway.audit_fsync_interval: "2s": only used with audit_fsync = "interval""#,
            ),
        ];
        for (extra, expected) in cases {
            let err = parse(&with(extra)).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "for {extra:?} expected {expected:?}, got: {err}"
            );
            assert!(!err.contains('\n'), "must be one line: {err}");
        }
    }

    #[test]
    fn service_nobody_may_use_is_refused() {
        let text = MINIMAL.replace("allow_users = [\"alice\"]\nallow_groups = [\"dba\"]\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("nobody could connect"), "got: {err}");
    }

    #[test]
    fn service_name_must_be_usable_as_sni() {
        let text = MINIMAL.replace("name = \"main\"", "name = \"main db\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("service[0].name: \"main db\""), "got: {err}");
    }
}
