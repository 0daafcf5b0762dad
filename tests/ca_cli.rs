//! `pgtunnel ca` and `pgtunnel pg-config` driven through the real binary, as an operator
//! would: the files they write, what they print, and the exit codes for mistakes (64 for
//! a bad flag or a refusal, 1 for a runtime failure). That PostgreSQL accepts these
//! certificates and settings is tested against a real cluster in its own scenario.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use pgtunnel::pg::settings::PgTlsSettings;

fn pgtunnel(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtunnel"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running the pgtunnel binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts exit code 64 with a single line on stderr, and returns that line.
fn usage_error(out: Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(64),
        "{what} should exit 64; stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: the error should be one line: {err:?}"
    );
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// A temp folder with a CA in `ca/`.
fn with_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    ok(
        pgtunnel(&["ca", "init", "--dir", "ca"], dir.path()),
        "ca init",
    );
    dir
}

#[test]
fn init_creates_a_root_and_a_private_key_only_the_owner_can_read() {
    let dir = with_ca();
    let ca = dir.path().join("ca");
    assert_eq!(mode(&ca.join("ca.key")), 0o600, "ca.key must be 0600");
    let shown = ok(
        pgtunnel(&["ca", "show", "ca/ca.crt"], dir.path()),
        "ca show",
    );
    assert!(
        shown.contains("certificate authority"),
        "show should call it a CA: {shown}"
    );
    assert!(
        shown.contains("ECDSA P-256"),
        "the root should be P-256: {shown}"
    );
}

#[test]
fn a_second_init_is_refused_with_exit_64_and_leaves_the_ca_alone() {
    let dir = with_ca();
    let key = dir.path().join("ca/ca.key");
    let before = std::fs::read(&key).expect("reading ca.key");

    let err = usage_error(
        pgtunnel(&["ca", "init", "--dir", "ca"], dir.path()),
        "second init",
    );
    assert!(
        err.contains("ca/ca.crt") && err.contains("refusing to overwrite"),
        "the refusal should name the file: {err}"
    );
    assert_eq!(
        std::fs::read(&key).expect("reading ca.key"),
        before,
        "the key changed"
    );
}

#[test]
fn issue_writes_a_login_certificate_that_show_describes() {
    let dir = with_ca();
    let args = [
        "ca",
        "issue",
        "--dir",
        "ca",
        "--user",
        "alice",
        "--group",
        "dba",
        "--group",
        "analytics",
        "--ttl",
        "2h",
        "--out",
        "alice",
    ];
    let printed = ok(pgtunnel(&args, dir.path()), "ca issue");
    assert!(
        !printed.contains("PRIVATE KEY"),
        "issue must never print a key: {printed}"
    );
    assert!(
        printed.contains("alice.key"),
        "issue should print the key's path: {printed}"
    );
    assert_eq!(
        mode(&dir.path().join("alice.key")),
        0o600,
        "the login key must be 0600"
    );

    let shown = ok(
        pgtunnel(&["ca", "show", "alice.crt"], dir.path()),
        "ca show",
    );
    for expected in [
        "login certificate",
        "CN=alice,OU=analytics,OU=dba",
        "dba, analytics",
        "clientAuth",
        "1h 59m",
    ] {
        assert!(
            shown.contains(expected),
            "show should mention {expected:?}:\n{shown}"
        );
    }
    let serial = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial"))
        .map(str::trim)
        .expect("show prints a serial line");
    assert_eq!(serial.len(), 32, "a 16-byte serial in hex: {serial:?}");
}

#[test]
fn a_bad_ttl_is_a_usage_error_naming_the_flag_and_writes_nothing() {
    let dir = with_ca();
    let args = [
        "ca", "issue", "--dir", "ca", "--user", "alice", "--ttl", "8x", "--out", "a",
    ];
    let err = usage_error(pgtunnel(&args, dir.path()), "issue with --ttl 8x");
    assert!(
        err.contains(r#"--ttl "8x": invalid duration"#),
        "message: {err}"
    );
    assert!(
        !dir.path().join("a.crt").exists(),
        "nothing should be written"
    );
    assert!(
        !dir.path().join("a.key").exists(),
        "nothing should be written"
    );
}

#[test]
fn bad_user_group_and_not_before_values_name_their_flags() {
    let dir = with_ca();
    let cases: [(&[&str], &str); 3] = [
        (&["--user", ""], "--user"),
        (&["--user", "alice", "--group", " dba"], "--group"),
        (
            &["--user", "alice", "--not-before", "yesterday"],
            "--not-before",
        ),
    ];
    for (extra, flag) in cases {
        let mut args = vec!["ca", "issue", "--dir", "ca", "--out", "x"];
        args.extend_from_slice(extra);
        let err = usage_error(pgtunnel(&args, dir.path()), flag);
        assert!(err.contains(flag), "the error should name {flag}: {err}");
    }
}

#[test]
fn issuing_without_a_ca_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [
        "ca", "issue", "--dir", "nowhere", "--user", "alice", "--out", "a",
    ];
    let err = usage_error(pgtunnel(&args, dir.path()), "issue without a CA");
    assert!(
        err.contains("nowhere") && err.contains("ca init"),
        "the error should name the folder and say how to make a CA: {err}"
    );
}

#[test]
fn a_backdated_certificate_is_shown_as_expired() {
    let dir = with_ca();
    let args = [
        "ca",
        "issue",
        "--dir",
        "ca",
        "--user",
        "alice",
        "--ttl",
        "1h",
        "--not-before",
        "2020-01-01T00:00:00Z",
        "--out",
        "old",
    ];
    ok(pgtunnel(&args, dir.path()), "backdated issue");
    let shown = ok(pgtunnel(&["ca", "show", "old.crt"], dir.path()), "ca show");
    assert!(
        shown.contains("2020-01-01T00:00:00Z"),
        "not-before as requested:\n{shown}"
    );
    assert!(
        shown.contains("2020-01-01T01:00:00Z"),
        "not-after one hour later:\n{shown}"
    );
    assert!(
        shown.contains("expired") && shown.contains("ago"),
        "expiry:\n{shown}"
    );
}

#[test]
fn server_writes_a_certificate_with_its_sans_and_server_auth() {
    let dir = with_ca();
    let args = [
        "ca",
        "server",
        "--dir",
        "ca",
        "--dns",
        "localhost",
        "db.internal",
        "--ip",
        "127.0.0.1",
        "--out",
        "server",
    ];
    ok(pgtunnel(&args, dir.path()), "ca server");
    assert_eq!(
        mode(&dir.path().join("server.key")),
        0o600,
        "server key must be 0600"
    );

    let shown = ok(
        pgtunnel(&["ca", "show", "server.crt"], dir.path()),
        "ca show",
    );
    for expected in [
        "server certificate",
        "DNS:localhost, DNS:db.internal, IP:127.0.0.1",
        "serverAuth",
        "89d 23h",
    ] {
        assert!(
            shown.contains(expected),
            "show should mention {expected:?}:\n{shown}"
        );
    }
    assert!(
        !shown.contains("clientAuth"),
        "a server certificate is not for clients"
    );
}

#[test]
fn server_refuses_a_bad_address_or_no_names() {
    let dir = with_ca();
    let args = [
        "ca",
        "server",
        "--dir",
        "ca",
        "--ip",
        "300.1.1.1",
        "--out",
        "s",
    ];
    let err = usage_error(pgtunnel(&args, dir.path()), "server --ip 300.1.1.1");
    assert!(err.contains(r#"--ip "300.1.1.1""#), "message: {err}");

    let args = ["ca", "server", "--dir", "ca", "--out", "s"];
    let err = usage_error(pgtunnel(&args, dir.path()), "server without names");
    assert!(
        err.contains("--dns"),
        "message should say what is missing: {err}"
    );
}

#[test]
fn show_of_a_file_without_certificates_fails_naming_it() {
    let dir = with_ca();
    let out = pgtunnel(&["ca", "show", "ca/ca.key"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "showing a key file is a runtime error"
    );
    let err = stderr(&out);
    assert!(
        err.contains("ca/ca.key") && err.contains("no certificate"),
        "message: {err}"
    );
    assert!(
        !err.contains("PRIVATE KEY") && !stdout(&out).contains("PRIVATE KEY"),
        "no key"
    );
}

#[test]
fn pg_config_prints_exactly_the_settings_the_clusters_use() {
    let dir = with_ca();
    let args = [
        "ca",
        "server",
        "--dir",
        "ca",
        "--dns",
        "localhost",
        "--out",
        "server",
    ];
    ok(pgtunnel(&args, dir.path()), "ca server");

    let args = [
        "pg-config",
        "--ca",
        "ca/ca.crt",
        "--cert",
        "server.crt",
        "--key",
        "server.key",
    ];
    let printed = ok(pgtunnel(&args, dir.path()), "pg-config");

    let root = dir.path().canonicalize().expect("canonical temp dir");
    let settings = PgTlsSettings::new(
        &root.join("ca/ca.crt"),
        &root.join("server.crt"),
        &root.join("server.key"),
    );
    let printed_lines: Vec<&str> = printed.lines().collect();
    let expected = settings
        .postgresql_conf()
        .into_iter()
        .chain(settings.pg_hba_cert())
        .chain(settings.key_commands("postgres"));
    for line in expected {
        assert!(
            printed_lines.contains(&line.as_str()),
            "missing line {line:?} in:\n{printed}"
        );
    }
    for line in settings.pg_hba_password_and_cert() {
        let commented = format!("#{line}");
        assert!(
            printed_lines.contains(&commented.as_str()),
            "the alternative should be printed commented out: {line:?} in:\n{printed}"
        );
    }
    for line in &printed_lines {
        let is_setting = line.is_empty()
            || line.starts_with('#')
            || line.starts_with("ssl")
            || line.starts_with("host")
            || line.starts_with("chown")
            || line.starts_with("chmod");
        assert!(is_setting, "an unexpected uncommented line: {line:?}");
    }
}

#[test]
fn pg_config_refuses_a_login_certificate_as_the_server_certificate() {
    let dir = with_ca();
    ok(
        pgtunnel(
            &[
                "ca", "issue", "--dir", "ca", "--user", "alice", "--out", "alice",
            ],
            dir.path(),
        ),
        "ca issue",
    );
    let args = [
        "pg-config",
        "--ca",
        "ca/ca.crt",
        "--cert",
        "alice.crt",
        "--key",
        "alice.key",
    ];
    let err = usage_error(
        pgtunnel(&args, dir.path()),
        "pg-config with a login certificate",
    );
    assert!(
        err.contains("--cert") && err.contains("not a server certificate"),
        "message: {err}"
    );
}

#[test]
fn an_unwritable_output_is_a_runtime_error_that_names_the_file_once() {
    let dir = with_ca();
    let args = [
        "ca",
        "issue",
        "--dir",
        "ca",
        "--user",
        "alice",
        "--out",
        "missing/alice",
    ];
    let out = pgtunnel(&args, dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "an I/O failure is a runtime error"
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains("missing/alice.key"),
        "the file should be named: {err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause should be said once: {err}"
    );
}

#[test]
fn an_out_prefix_that_is_a_folder_is_refused() {
    let dir = with_ca();
    let args = [
        "ca", "issue", "--dir", "ca", "--user", "alice", "--out", "ca",
    ];
    let err = usage_error(pgtunnel(&args, dir.path()), "issue --out into a folder");
    assert!(err.contains(r#"--out "ca": is a folder"#), "message: {err}");
    assert!(
        !dir.path().join("ca/.key").exists(),
        "no hidden key file may be written"
    );
}
