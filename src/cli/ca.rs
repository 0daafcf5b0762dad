//! `pgtunnel ca`: init, issue, server, show. This module turns flags into checked values
//! (durations, times, addresses, names) and calls `pki`; every mistake in a flag is a
//! `UsageError` naming the flag and its value. What goes into a certificate, and how
//! files are written, is decided in `pki`, not here. Private keys are never printed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cli::UsageError;
use crate::pki::{self, Ca, CertInfo, CertKind, PkiError, Validity};

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root CA in DIR (ca.crt, and ca.key with mode 0600). Refuses to
    /// overwrite an existing CA.
    Init {
        /// Folder for ca.crt and ca.key; created if missing.
        #[arg(long)]
        dir: PathBuf,
        /// The root certificate's CN [default: "pgtunnel root CA" and 8 random hex
        /// digits, so that no two roots share a name].
        #[arg(long)]
        name: Option<String>,
        /// How long the root is valid (s, m, h, d).
        #[arg(long, default_value = "3650d")]
        ttl: String,
    },
    /// Issue a short-lived login certificate for one PostgreSQL user.
    Issue {
        /// The CA folder made by `pgtunnel ca init`.
        #[arg(long)]
        dir: PathBuf,
        /// The PostgreSQL user name; it becomes the certificate's CN.
        #[arg(long)]
        user: String,
        /// A group for the gateway's policy; repeat for more. Recorded as subject OUs.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// How long the certificate is valid (s, m, h, d), e.g. 8h.
        #[arg(long, default_value = "8h")]
        ttl: String,
        /// Start of validity (RFC 3339). Without it the certificate starts five minutes
        /// ago, to allow for clock skew.
        #[arg(long, value_name = "RFC3339")]
        not_before: Option<String>,
        /// Writes PREFIX.crt and PREFIX.key (0600), replacing existing files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Issue a server certificate for the gateway or PostgreSQL.
    Server {
        /// The CA folder made by `pgtunnel ca init`.
        #[arg(long)]
        dir: PathBuf,
        /// DNS names clients will connect to; the first is also the CN.
        #[arg(long, value_name = "NAME", num_args = 1..)]
        dns: Vec<String>,
        /// IP addresses clients will connect to.
        #[arg(long, value_name = "ADDR", num_args = 1..)]
        ip: Vec<String>,
        /// How long the certificate is valid (s, m, h, d).
        #[arg(long, default_value = "90d")]
        ttl: String,
        /// Writes PREFIX.crt and PREFIX.key (0600), replacing existing files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Describe the certificates in a PEM file.
    Show {
        /// A PEM file with one or more certificates.
        file: PathBuf,
    },
    /// Revoke a certificate: add it to the CA's signed CRL (DIR/crl.pem), which the
    /// gateway (`crl = ...`) and PostgreSQL (`ssl_crl_file`) read.
    Revoke {
        /// The CA folder made by `pgtunnel ca init`.
        #[arg(long)]
        dir: PathBuf,
        /// The serial to revoke, in hex (as `pgtunnel ca show` and the audit log print it).
        #[arg(long, conflicts_with = "cert", required_unless_present_any = ["cert", "refresh"])]
        serial: Option<String>,
        /// The certificate to revoke (its serial is read from the file).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Why: an RFC 5280 reason (key-compromise, superseded, affiliation-changed,
        /// cessation-of-operation, privilege-withdrawn) or free text for DIR/revocations.jsonl.
        #[arg(long)]
        reason: Option<String>,
        /// Only re-sign the CRL with a fresh next-update (run it before the CRL goes stale).
        #[arg(long, conflicts_with_all = ["serial", "cert"])]
        refresh: bool,
        /// How long the CRL stays valid; PostgreSQL refuses every client after that.
        #[arg(long, default_value = "30d")]
        next_update: String,
    },
    /// Write a new secret for gateway session-ticket keys (the gateway's
    /// `ticket_key_file`), mode 0600. Gateways that share it accept each other's tickets.
    TicketKey {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.command {
        CaCommand::Init { dir, name, ttl } => init(&dir, name.as_deref(), &ttl),
        CaCommand::Issue {
            dir,
            user,
            groups,
            ttl,
            not_before,
            out,
        } => issue(&dir, &user, &groups, &ttl, not_before.as_deref(), &out),
        CaCommand::Server {
            dir,
            dns,
            ip,
            ttl,
            out,
        } => server(&dir, &dns, &ip, &ttl, &out),
        CaCommand::Show { file } => show(&file),
        CaCommand::Revoke {
            dir,
            serial,
            cert,
            reason,
            refresh: _,
            next_update,
        } => revoke(
            &dir,
            serial,
            cert.as_deref(),
            reason.as_deref(),
            &next_update,
        ),
        CaCommand::TicketKey { out } => {
            crate::tls::tickets::write_new_key(&out)?;
            println!("wrote {} (mode 0600)", shown(&out).display());
            Ok(())
        }
    }
}

fn revoke(
    dir: &Path,
    serial: Option<String>,
    cert: Option<&Path>,
    reason: Option<&str>,
    next_update: &str,
) -> anyhow::Result<()> {
    let validity = match humantime::parse_duration(next_update) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            return Err(UsageError::new(format!(
                "--next-update {next_update:?}: expected a duration longer than zero, e.g. 30d"
            )));
        }
    };
    let serial = match (serial, cert) {
        (Some(serial), _) => Some(serial),
        (None, Some(path)) => {
            let chain = pki::load_certs(path).map_err(|err| UsageError::new(err.to_string()))?;
            let identity = pki::Identity::from_der(chain[0].as_ref())
                .map_err(|err| UsageError::new(format!("{}: {err}", path.display())))?;
            Some(identity.serial_hex)
        }
        (None, None) => None,
    };
    let outcome =
        pki::crl::revoke(dir, serial.as_deref(), reason, validity).map_err(|err| match err {
            pki::PkiError::InvalidName { .. } => UsageError::new(err.to_string()),
            other => anyhow::Error::new(other).context("updating the CRL"),
        })?;
    match (&serial, outcome.already_listed) {
        (Some(serial), false) => println!("revoked serial {serial}"),
        (Some(serial), true) => println!("serial {serial} was already revoked; CRL re-signed"),
        (None, _) => println!("CRL re-signed"),
    }
    println!(
        "{}: CRL number {}, {} revoked certificate(s)",
        outcome.path.display(),
        outcome.number,
        outcome.revoked
    );
    Ok(())
}

fn init(dir: &Path, name: Option<&str>, ttl: &str) -> anyhow::Result<()> {
    let name = match name {
        Some(name) => {
            check_flag("--name", pki::validate_ca_name(name))?;
            name.to_owned()
        }
        None => pki::unique_ca_name().context("naming the CA")?,
    };
    let validity = Validity::starting_now(parse_ttl(ttl)?);
    let ca = Ca::init_with(dir, &name, validity)
        .map_err(|err| classify(err, "--ttl", ttl))
        .context("creating the CA")?;

    println!("created CA {name:?}");
    println!(
        "  certificate  {}",
        shown(&dir.join(pki::CA_CERT_FILE)).display()
    );
    println!(
        "  private key  {} (mode 0600)",
        shown(&dir.join(pki::CA_KEY_FILE)).display()
    );
    println!("  valid until  {}", pki::rfc3339(ca.not_after()));
    Ok(())
}

fn issue(
    dir: &Path,
    user: &str,
    groups: &[String],
    ttl: &str,
    not_before: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    // Check the flags first, so a typo is reported before any file is touched.
    check_flag("--user", pki::validate_user(user))?;
    for (i, group) in groups.iter().enumerate() {
        check_flag("--group", pki::validate_group(group))?;
        if groups[..i].contains(group) {
            return Err(UsageError::new(format!(
                "--group {group:?}: given more than once"
            )));
        }
    }
    let ttl_value = parse_ttl(ttl)?;
    let validity = match not_before {
        Some(text) => Validity::starting_at(parse_time("--not-before", text)?, ttl_value),
        None => Validity::starting_now(ttl_value),
    };

    check_out(out)?;

    let ca = load_ca(dir)?;
    let cert = ca
        .issue_login(user, groups, validity)
        .map_err(|err| classify(err, "--ttl", ttl))
        .context("issuing the login certificate")?;
    let (cert_path, key_path) = cert.write(out).context("writing the login certificate")?;

    let groups = match groups {
        [] => "none".to_owned(),
        _ => groups.join(", "),
    };
    println!("issued login certificate for user {user:?} (groups: {groups})");
    print_written(&cert_path, &key_path, validity);
    Ok(())
}

fn server(dir: &Path, dns: &[String], ip: &[String], ttl: &str, out: &Path) -> anyhow::Result<()> {
    if dns.is_empty() && ip.is_empty() {
        return Err(UsageError::new(
            "give at least one --dns NAME or --ip ADDR for the server certificate",
        ));
    }
    for name in dns {
        check_flag("--dns", pki::validate_dns_name(name))?;
    }
    let ips = ip
        .iter()
        .map(|text| {
            text.parse::<IpAddr>()
                .map_err(|_| UsageError::new(format!("--ip {text:?}: not an IP address")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let validity = Validity::starting_now(parse_ttl(ttl)?);
    check_out(out)?;

    let ca = load_ca(dir)?;
    let cert = ca
        .issue_server(dns, &ips, validity)
        .map_err(|err| classify(err, "--ttl", ttl))
        .context("issuing the server certificate")?;
    let (cert_path, key_path) = cert.write(out).context("writing the server certificate")?;

    let names: Vec<String> = dns.iter().cloned().chain(ip.iter().cloned()).collect();
    println!("issued server certificate for {}", names.join(", "));
    print_written(&cert_path, &key_path, validity);
    Ok(())
}

fn show(file: &Path) -> anyhow::Result<()> {
    let certs = pki::load_certs(file).context("reading certificates")?;
    let now = time::OffsetDateTime::now_utc();
    for (i, der) in certs.iter().enumerate() {
        let info = CertInfo::from_der(der).with_context(|| {
            format!(
                "{}: certificate {} of {}",
                file.display(),
                i + 1,
                certs.len()
            )
        })?;
        if certs.len() > 1 {
            if i > 0 {
                println!();
            }
            println!("certificate {} of {}", i + 1, certs.len());
        }
        print_info(&info, now);
    }
    Ok(())
}

fn print_info(info: &CertInfo, now: time::OffsetDateTime) {
    let list = |items: Vec<String>| match items.is_empty() {
        true => "none".to_owned(),
        false => items.join(", "),
    };
    let sans = info
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(info.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
        .chain(info.emails.iter().map(|e| format!("email:{e}")))
        .chain(info.uris.iter().map(|u| format!("URI:{u}")))
        .collect();

    println!("  kind               {}", info.kind.describe());
    println!("  subject            {}", info.subject);
    println!("  issuer             {}", info.issuer);
    if info.kind == CertKind::Login {
        println!("  user               {}", list(info.common_names.clone()));
        println!(
            "  groups             {}",
            list(info.organizational_units.clone())
        );
    }
    println!("  SANs               {}", list(sans));
    println!("  serial             {}", info.serial_hex);
    println!("  SHA-256            {}", info.sha256_hex);
    println!("  public key         {}", info.public_key);
    println!("  not before         {}", pki::rfc3339(info.not_before));
    println!("  not after          {}", pki::rfc3339(info.not_after));
    println!("  time left          {}", time_left(info, now));
    let key_usage = info.key_usage.iter().map(|s| (*s).to_owned()).collect();
    println!("  key usage          {}", list(key_usage));
    println!(
        "  extended key usage {}",
        list(info.extended_key_usage.clone())
    );
}

/// "7h 59m 12s", "expired 3h 2m ago" or "not valid yet (starts in 10m)".
fn time_left(info: &CertInfo, now: time::OffsetDateTime) -> String {
    if now > info.not_after {
        format!("expired {} ago", pki::human_duration(now - info.not_after))
    } else if now < info.not_before {
        format!(
            "not valid yet (starts in {})",
            pki::human_duration(info.not_before - now)
        )
    } else {
        pki::human_duration(info.not_after - now)
    }
}

fn print_written(cert_path: &Path, key_path: &Path, validity: Validity) {
    println!("  certificate  {}", shown(cert_path).display());
    println!("  private key  {} (mode 0600)", shown(key_path).display());
    println!("  valid from   {}", pki::rfc3339(validity.not_before));
    println!(
        "  valid until  {} ({} from now)",
        pki::rfc3339(validity.not_after),
        pki::human_duration(validity.not_after - time::OffsetDateTime::now_utc())
    );
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    Ca::load(dir).map_err(|err| match err {
        PkiError::CaMissing { .. } => UsageError::new(format!("--dir: {err}")),
        other => anyhow::Error::new(other).context("loading the CA"),
    })
}

/// `--out` is a prefix that ".crt" and ".key" are appended to; a folder would give
/// hidden files named ".crt" and ".key", which is never what was meant.
fn check_out(out: &Path) -> anyhow::Result<()> {
    let text = out.as_os_str().as_encoded_bytes();
    if text.is_empty() || text.ends_with(b"/") || out.is_dir() {
        return Err(UsageError::new(format!(
            "--out {:?}: is a folder; give a file name prefix such as certs/alice",
            out.display().to_string()
        )));
    }
    Ok(())
}

/// A duration flag: a number and a unit (s, m, h, d; humantime also takes forms such as
/// "1h 30m"), more than zero.
fn parse_ttl(text: &str) -> anyhow::Result<std::time::Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(UsageError::new(format!(
            "--ttl {text:?}: must be longer than zero"
        ))),
        Ok(d) => Ok(d),
        Err(_) => Err(UsageError::new(format!(
            "--ttl {text:?}: invalid duration (use a number and a unit s, m, h or d, e.g. 8h or 90d)"
        ))),
    }
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
        |_| {
            UsageError::new(format!(
                "{flag} {text:?}: invalid time (use RFC 3339, e.g. 2026-01-31T09:00:00Z)"
            ))
        },
    )
}

/// Turns a name-check failure into a usage error that names the flag.
fn check_flag(flag: &str, result: Result<(), PkiError>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(PkiError::InvalidName { value, reason, .. }) => {
            Err(UsageError::new(format!("{flag} {value:?}: {reason}")))
        }
        Err(other) => Err(UsageError::new(format!("{flag}: {other}"))),
    }
}

/// Issuing errors that come from the command line (a lifetime the CA cannot sign, a CA
/// that already exists) are usage errors; the rest (I/O, broken files) are runtime errors.
fn classify(err: PkiError, ttl_flag: &str, ttl: &str) -> anyhow::Error {
    match err {
        PkiError::InvalidValidity(_) => UsageError::new(format!("{ttl_flag} {ttl:?}: {err}")),
        PkiError::Exists { .. } | PkiError::InvalidName { .. } => UsageError::new(err.to_string()),
        other => anyhow::Error::new(other),
    }
}

/// The path made absolute for display, so the output can be pasted into a config file.
fn shown(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_message(err: anyhow::Error) -> String {
        assert!(
            err.chain().any(|c| c.is::<UsageError>()),
            "expected a usage error, got: {err:#}"
        );
        format!("{err:#}")
    }

    #[test]
    fn ttl_accepts_the_documented_units() {
        for (text, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("8h", 28_800),
            ("90d", 7_776_000),
        ] {
            let d = parse_ttl(text).expect("a documented unit was refused");
            assert_eq!(d.as_secs(), secs, "--ttl {text}");
        }
    }

    #[test]
    fn a_bad_or_zero_ttl_is_a_usage_error_naming_the_flag_and_value() {
        let msg = usage_message(parse_ttl("8x").expect_err("8x accepted"));
        assert!(
            msg.contains(r#"--ttl "8x": invalid duration"#),
            "message was: {msg}"
        );
        let msg = usage_message(parse_ttl("0s").expect_err("zero accepted"));
        assert!(msg.contains("longer than zero"), "message was: {msg}");
    }

    #[test]
    fn a_bad_not_before_is_a_usage_error_naming_the_flag() {
        let msg = usage_message(parse_time("--not-before", "yesterday").expect_err("accepted"));
        assert!(
            msg.contains(r#"--not-before "yesterday""#),
            "message was: {msg}"
        );
    }
}
