//! The one place that knows which PostgreSQL settings make a server require a pgtunnel
//! login certificate. `pgtunnel pg-config` prints these lines, and the throwaway
//! clusters of the tests and the demo write exactly these lines, so what we test is what
//! we tell operators to paste. This module only produces text; it does not read or edit
//! PostgreSQL's files, and it does not check that the certificate files exist.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The TLS files a PostgreSQL server needs: our root CA (to verify login certificates),
/// and its own server certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTlsSettings {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl PgTlsSettings {
    /// Makes the paths absolute against the current folder: PostgreSQL would otherwise
    /// read a relative path against its data folder. If the current folder cannot be
    /// determined, a relative path is kept as given.
    pub fn new(ca: &Path, cert: &Path, key: &Path) -> PgTlsSettings {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        PgTlsSettings {
            ca: absolute(ca),
            cert: absolute(cert),
            key: absolute(key),
        }
    }

    pub fn ca(&self) -> &Path {
        &self.ca
    }

    pub fn cert(&self) -> &Path {
        &self.cert
    }

    pub fn key(&self) -> &Path {
        &self.key
    }

    /// postgresql.conf lines: TLS on, the three files, and TLS 1.3 at least (the gateway
    /// and agent speak nothing older either).
    pub fn postgresql_conf(&self) -> Vec<String> {
        vec![
            "ssl = on".to_owned(),
            format!("ssl_cert_file = {}", conf_string(self.cert.as_os_str())),
            format!("ssl_key_file = {}", conf_string(self.key.as_os_str())),
            format!("ssl_ca_file = {}", conf_string(self.ca.as_os_str())),
            "ssl_min_protocol_version = 'TLSv1.3'".to_owned(),
        ]
    }

    /// pg_hba.conf lines that refuse TCP without TLS and require the login certificate
    /// over TLS (`cert`: the certificate chains to `ssl_ca_file` and its CN is the user).
    /// pg_hba.conf takes the first line that matches, so these belong above any other
    /// `host` lines.
    pub fn pg_hba_cert(&self) -> Vec<String> {
        vec![
            "hostnossl all all all reject".to_owned(),
            "hostssl all all all cert".to_owned(),
        ]
    }

    /// The stricter variant: a SCRAM password and the login certificate, whose CN must
    /// also match the user (`clientcert=verify-full`).
    pub fn pg_hba_password_and_cert(&self) -> Vec<String> {
        vec![
            "hostnossl all all all reject".to_owned(),
            "hostssl all all all scram-sha-256 clientcert=verify-full".to_owned(),
        ]
    }

    /// Shell commands that give the server key to PostgreSQL's OS user with mode 0600;
    /// PostgreSQL refuses to start with a key that group or others can read.
    pub fn key_commands(&self, os_user: &str) -> Vec<String> {
        let key = shell_word(self.key.as_os_str().as_bytes());
        vec![
            format!("chown {} {key}", shell_word(os_user.as_bytes())),
            format!("chmod 0600 {key}"),
        ]
    }
}

/// A postgresql.conf string literal. Inside single quotes the configuration lexer treats
/// `''` as a quote and a backslash as the start of an escape: `\\`, `\n`, `\r`, `\t`,
/// and up to three octal digits for any byte (PostgreSQL's src/backend/utils/misc/
/// guc-file.l, GUC_scanstr). Bytes that are not printable ASCII are written as octal
/// escapes unless the path is valid UTF-8 and the byte is part of a non-ASCII character.
fn conf_string(value: &OsStr) -> String {
    let bytes = value.as_bytes();
    let utf8 = std::str::from_utf8(bytes).is_ok();
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('\'');
    let mut raw = Vec::new();
    for &b in bytes {
        match b {
            b'\'' => raw.extend_from_slice(b"''"),
            b'\\' => raw.extend_from_slice(b"\\\\"),
            b'\n' => raw.extend_from_slice(b"\\n"),
            b'\r' => raw.extend_from_slice(b"\\r"),
            b'\t' => raw.extend_from_slice(b"\\t"),
            0x20..=0x7e => raw.push(b),
            0x80..=0xff if utf8 => raw.push(b),
            _ => raw.extend_from_slice(format!("\\{b:03o}").as_bytes()),
        }
    }
    // Every byte kept raw is printable ASCII or part of the valid UTF-8 we started from,
    // and every escape is ASCII, so the lossy conversion never replaces anything.
    out.push_str(&String::from_utf8_lossy(&raw));
    out.push('\'');
    out
}

/// A word for a POSIX shell: bare when it holds only characters no shell treats
/// specially, otherwise single-quoted, with each `'` written as `'\''`. POSIX quoting has
/// no escape for bytes that are not UTF-8 text; such bytes come out as U+FFFD, which is
/// why `pgtunnel pg-config` refuses paths that are not UTF-8.
fn shell_word(word: &[u8]) -> String {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(b);
    let text = String::from_utf8_lossy(word);
    if !word.is_empty() && word.iter().all(plain) {
        return text.into_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PgTlsSettings {
        PgTlsSettings::new(
            Path::new("/etc/pgtunnel/ca.crt"),
            Path::new("/etc/pgtunnel/server.crt"),
            Path::new("/etc/pgtunnel/server.key"),
        )
    }

    #[test]
    fn postgresql_conf_names_the_three_files_and_tls13() {
        assert_eq!(
            settings().postgresql_conf(),
            [
                "ssl = on",
                "ssl_cert_file = '/etc/pgtunnel/server.crt'",
                "ssl_key_file = '/etc/pgtunnel/server.key'",
                "ssl_ca_file = '/etc/pgtunnel/ca.crt'",
                "ssl_min_protocol_version = 'TLSv1.3'",
            ],
            "the postgresql.conf lines"
        );
    }

    #[test]
    fn relative_paths_become_absolute() {
        let s = PgTlsSettings::new(
            Path::new("ca.crt"),
            Path::new("certs/server.crt"),
            Path::new("./server.key"),
        );
        for p in [s.ca(), s.cert(), s.key()] {
            assert!(p.is_absolute(), "{} should be absolute", p.display());
        }
        let cwd = std::env::current_dir().expect("current dir");
        assert_eq!(
            s.cert(),
            cwd.join("certs/server.crt"),
            "joined onto the current dir"
        );
    }

    #[test]
    fn hba_lines_reject_plain_tcp_before_requiring_the_certificate() {
        let s = settings();
        assert_eq!(
            s.pg_hba_cert(),
            ["hostnossl all all all reject", "hostssl all all all cert"],
            "the cert-only pg_hba.conf lines"
        );
        let strict = s.pg_hba_password_and_cert();
        assert_eq!(
            strict[0], "hostnossl all all all reject",
            "plain TCP refused first"
        );
        assert!(
            strict[1].contains("scram-sha-256") && strict[1].ends_with("clientcert=verify-full"),
            "password and full certificate check: {}",
            strict[1]
        );
    }

    #[test]
    fn conf_strings_escape_quotes_backslashes_and_control_bytes() {
        let cases: [(&[u8], &str); 4] = [
            (b"/srv/it's/key", r"'/srv/it''s/key'"),
            (br"/srv/a\b", r"'/srv/a\\b'"),
            (b"/srv/new\nline", r"'/srv/new\nline'"),
            (b"/srv/\xff\x01", r"'/srv/\377\001'"),
        ];
        for (raw, want) in cases {
            assert_eq!(conf_string(OsStr::from_bytes(raw)), want, "quoting {raw:?}");
        }
        assert_eq!(
            conf_string(OsStr::new("/srv/müller")),
            "'/srv/müller'",
            "UTF-8 stays"
        );
    }

    #[test]
    fn key_commands_quote_only_what_the_shell_would_misread() {
        let s = PgTlsSettings::new(
            Path::new("/ca.crt"),
            Path::new("/s.crt"),
            Path::new("/my keys/it's.key"),
        );
        assert_eq!(
            s.key_commands("postgres"),
            [
                r"chown postgres '/my keys/it'\''s.key'",
                r"chmod 0600 '/my keys/it'\''s.key'",
            ],
            "the key ownership commands"
        );
        assert_eq!(
            settings().key_commands("postgres")[0],
            "chown postgres /etc/pgtunnel/server.key",
            "a plain path needs no quotes"
        );
    }
}
