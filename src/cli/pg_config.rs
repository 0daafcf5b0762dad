//! `pgtunnel pg-config`: prints the PostgreSQL settings that make a server require a
//! pgtunnel login certificate, in sections ready to paste: postgresql.conf lines,
//! pg_hba.conf lines (certificate only, and password plus certificate), and the shell
//! commands that hand the server key to PostgreSQL's OS user. The lines come from
//! `pg::settings`, the same code the test clusters and the demo use. This command checks
//! that the files are what the flags say they are; it edits nothing.

use std::path::Path;

use clap::Args;

use crate::cli::UsageError;
use crate::pg::settings::PgTlsSettings;
use crate::pki::{self, CertInfo, CertKind};

#[derive(Debug, Args)]
pub struct PgConfigArgs {
    /// The root CA certificate that login certificates chain to (ca.crt).
    #[arg(long)]
    pub ca: std::path::PathBuf,
    /// PostgreSQL's own server certificate (from `pgtunnel ca server`).
    #[arg(long)]
    pub cert: std::path::PathBuf,
    /// PostgreSQL's server private key.
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// The OS user PostgreSQL runs as, for the key ownership commands.
    #[arg(long, default_value = "postgres")]
    pub os_user: String,
}

pub fn run(args: PgConfigArgs) -> anyhow::Result<()> {
    check_files(&args)?;
    let settings = PgTlsSettings::new(&args.ca, &args.cert, &args.key);
    print!("{}", render(&settings, &args.os_user));
    Ok(())
}

/// The whole output: comment lines start with '#', so any section can be pasted as is.
pub fn render(settings: &PgTlsSettings, os_user: &str) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };

    line("# pgtunnel pg-config: make PostgreSQL require a pgtunnel login certificate.");
    line("");
    line("# ---- postgresql.conf ----");
    settings.postgresql_conf().iter().for_each(|l| line(l));
    line("");
    line("# ---- pg_hba.conf: login certificate only (method \"cert\") ----");
    line("# Put these above every other \"host\" line: PostgreSQL uses the first line");
    line("# that matches. The client's login certificate must chain to ssl_ca_file and");
    line("# its CN must be the database user name.");
    settings.pg_hba_cert().iter().for_each(|l| line(l));
    line("");
    line("# ---- pg_hba.conf, stricter alternative: password AND login certificate ----");
    line("# To also require the user's SCRAM password, use these two lines (without the");
    line("# leading \"#\") instead of the two above.");
    for l in settings.pg_hba_password_and_cert() {
        line(&format!("#{l}"));
    }
    line("");
    line(&format!(
        "# ---- shell, as root: PostgreSQL must own its key ({os_user}, mode 0600) ----"
    ));
    settings.key_commands(os_user).iter().for_each(|l| line(l));
    line("");
    line("# Then reload PostgreSQL: SELECT pg_reload_conf(); or pg_ctl reload.");
    out
}

/// Refuses files that cannot be what their flag says: a CA that is not a CA, a login
/// certificate given as the server certificate, a key that does not belong to it.
fn check_files(args: &PgConfigArgs) -> anyhow::Result<()> {
    // Errors from reading a file already start with its path; only the flag is added.
    let usage = |flag: &str, reason: String| UsageError::new(format!("{flag}: {reason}"));
    let named = |flag: &str, path: &Path, reason: &str| {
        UsageError::new(format!("{flag}: {}: {reason}", path.display()))
    };
    for (flag, path) in [
        ("--ca", &args.ca),
        ("--cert", &args.cert),
        ("--key", &args.key),
    ] {
        if path.to_str().is_none() {
            return Err(named(flag, path, "the path is not UTF-8 text"));
        }
    }
    if args.os_user.is_empty() || args.os_user.chars().any(char::is_control) {
        return Err(UsageError::new(format!(
            "--os-user {:?}: not a user name",
            args.os_user
        )));
    }

    let (ca, _) = first_cert(&args.ca).map_err(|e| usage("--ca", e))?;
    if ca.kind != CertKind::Authority {
        return Err(named("--ca", &args.ca, "not a CA certificate"));
    }

    let (cert, cert_der) = first_cert(&args.cert).map_err(|e| usage("--cert", e))?;
    if matches!(cert.kind, CertKind::Login | CertKind::Authority) {
        let reason = format!("is a {}, not a server certificate", cert.kind.describe());
        return Err(named("--cert", &args.cert, &reason));
    }

    let key_pem = std::fs::read_to_string(&args.key)
        .map_err(|e| named("--key", &args.key, &e.to_string()))?;
    let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| {
        named(
            "--key",
            &args.key,
            &format!("not a usable private key: {e}"),
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| named("--cert", &args.cert, &e.to_string()))?;
    if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
        let reason = format!("does not belong to {}", args.cert.display());
        return Err(named("--key", &args.key, &reason));
    }
    Ok(())
}

/// The first certificate in a PEM file, described, and its DER.
fn first_cert(path: &Path) -> Result<(CertInfo, Vec<u8>), String> {
    let certs = pki::load_certs(path).map_err(|e| e.to_string())?;
    let der = certs
        .first()
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| format!("{}: no certificate", path.display()))?;
    let info = CertInfo::from_der(&der).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((info, der))
}
