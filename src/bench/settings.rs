//! Validated bench settings: what `pgtunnel bench`'s flags become once checked (the
//! flags themselves are `cli::bench`'s), and the PostgreSQL connection string `--dsn`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// One load thread per connection; beyond this many the bench would measure its own
/// scheduling more than the target.
pub const MAX_CONNECTIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioKind {
    Handshake,
    Echo,
    Bulk,
    Pg,
}

impl ScenarioKind {
    /// Every scenario, in the order a default run takes them: the latency-sensitive
    /// ones first, bulk last, because filling every buffer on the path is the most
    /// likely to leave work behind in a target.
    pub const ALL: [ScenarioKind; 4] = [
        ScenarioKind::Handshake,
        ScenarioKind::Echo,
        ScenarioKind::Pg,
        ScenarioKind::Bulk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Handshake => "handshake",
            ScenarioKind::Echo => "echo",
            ScenarioKind::Bulk => "bulk",
            ScenarioKind::Pg => "pg",
        }
    }

    pub fn parse(s: &str) -> Option<ScenarioKind> {
        ScenarioKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub scenarios: Vec<ScenarioKind>,
    /// True when `--scenario` named them: then a scenario that cannot run is an error,
    /// not a skip.
    pub explicit_scenarios: bool,
    pub duration: Duration,
    pub warmup: Duration,
    pub round: Duration,
    pub connections: usize,
    pub rate: Option<f64>,
    pub sizes: Vec<usize>,
    pub query: String,
    pub target: Target,
    pub json: Option<PathBuf>,
    pub hgrm: Option<PathBuf>,
    pub progress: bool,
    pub command: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// Start gateway, agent, upstream (and PostgreSQL) on loopback.
    SelfHosted {
        gateway_workers: usize,
    },
    External(Box<External>),
}

/// An existing deployment to measure.
#[derive(Debug, Clone, Default)]
pub struct External {
    pub gateway: Option<SocketAddr>,
    /// SNI to send to the gateway: the service whose upstream echoes.
    pub service: String,
    /// Name the gateway's certificate must carry.
    pub server_name: String,
    pub connect: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub dsn: Option<Dsn>,
    pub pg_connect: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub gateway_pid: Option<u32>,
    pub agent_pid: Option<u32>,
}

/// A libpq-style keyword/value connection string, limited to what the bench uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dsn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

impl Dsn {
    /// Parses `host=... port=... user=... dbname=... sslrootcert=... sslcert=...
    /// sslkey=...`; values may be single-quoted with `\'` and `\\` escapes. The bench
    /// always verifies the server (verify-full), so `sslmode` may only say that.
    pub fn parse(text: &str) -> Result<Dsn, String> {
        let mut dsn = Dsn {
            host: "127.0.0.1".into(),
            port: 5432,
            ..Dsn::default()
        };
        for (key, value) in split_pairs(text)? {
            match key.as_str() {
                "host" | "hostaddr" => dsn.host = value,
                "port" => {
                    dsn.port = value
                        .parse()
                        .map_err(|_| format!("port {value:?}: not a port number"))?
                }
                "user" => dsn.user = value,
                "dbname" => dsn.dbname = value,
                "sslrootcert" => dsn.sslrootcert = Some(value.into()),
                "sslcert" => dsn.sslcert = Some(value.into()),
                "sslkey" => dsn.sslkey = Some(value.into()),
                "sslmode" if value == "verify-full" => {}
                "sslmode" => {
                    return Err(format!(
                        "sslmode {value:?}: the bench always verifies the server; use verify-full"
                    ));
                }
                "application_name" | "connect_timeout" => {}
                other => return Err(format!("{other:?}: keyword not supported by the bench")),
            }
        }
        if dsn.user.is_empty() {
            return Err("user is missing".into());
        }
        if dsn.dbname.is_empty() {
            dsn.dbname = dsn.user.clone();
        }
        Ok(dsn)
    }

    pub fn addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("host {:?}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("host {:?}: no address", self.host))
    }
}

fn split_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?}: expected keyword=value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("{key}: unterminated quoted value")),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

/// "64", "16KiB", "1MiB", "4k": a byte count.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a byte count like 64, 16KiB or 1MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB or MiB)"
            ));
        }
    };
    n.checked_mul(factor)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: must be at least 1 byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_reads_keywords_quotes_and_defaults() {
        let dsn = Dsn::parse(
            "host=db.example port=6432 user=alice sslcert='/tmp/my cert.crt' sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(dsn.host, "db.example");
        assert_eq!(dsn.port, 6432);
        assert_eq!(dsn.user, "alice");
        assert_eq!(
            dsn.dbname, "alice",
            "dbname defaults to the user, as in libpq"
        );
        assert_eq!(
            dsn.sslcert,
            Some(PathBuf::from("/tmp/my cert.crt")),
            "quoted value"
        );
    }

    #[test]
    fn dsn_mistakes_are_named() {
        let err = Dsn::parse("user=a sslmode=disable").unwrap_err();
        assert!(err.contains("verify-full"), "got: {err}");
        let err = Dsn::parse("user=a password=x").unwrap_err();
        assert!(err.contains("\"password\""), "got: {err}");
        let err = Dsn::parse("host=x").unwrap_err();
        assert!(err.contains("user is missing"), "got: {err}");
        let err = Dsn::parse("user=a port=99999").unwrap_err();
        assert!(err.contains("port"), "got: {err}");
        let err = Dsn::parse("user 'a'").unwrap_err();
        assert!(err.contains("keyword=value"), "got: {err}");
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("16KiB").unwrap(), 16_384);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert!(parse_size("0").is_err(), "zero bytes is refused");
        assert!(parse_size("12 parsecs").is_err(), "unknown unit is refused");
    }
}
