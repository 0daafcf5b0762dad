//! `pgtunnel connect` checks its login certificate and key when it starts: an expired
//! certificate, a key that does not belong to the certificate, or a file it cannot
//! read is one clear line and exit code 64, before it listens for anyone.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The agent should give up at once; a running agent would be the bug.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent with `cert` against an address where no gateway listens, and returns
/// its one-line complaint after checking exit code 64.
fn agent_refuses_to_start(pki: &Pki, cert: &CertPair) -> String {
    let gateway = format!(
        "127.0.0.1:{}",
        pgtunnel::pg::cluster::free_loopback_port().unwrap()
    )
    .parse()
    .expect("loopback address");
    let port = pgtunnel::pg::cluster::free_loopback_port().expect("free port");
    let out = run_bounded(
        agent_command(pki, gateway, SERVICE, cert, port),
        STARTUP_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();

    assert_eq!(
        out.status.code(),
        Some(64),
        "agent should exit 64 (usage/config), got {}; stderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "want one line on stderr, got:\n{stderr}"
    );
    assert!(
        !is_listening(port),
        "agent left something listening on {port}"
    );
    stderr
}

#[test]
fn agent_with_an_expired_certificate_exits_64_with_one_line() {
    let pki = Pki::new();
    let expired = pki.expired_login("alice");

    let line = agent_refuses_to_start(&pki, &expired);

    assert!(
        line.contains("expired"),
        "line does not say expired: {line}"
    );
}

#[test]
fn agent_with_a_key_from_another_certificate_exits_64_with_one_line() {
    let pki = Pki::new();
    let alice = pki.login("alice", &["dba"]);
    let bob = pki.login("bob", &[]);
    let mismatched = CertPair {
        crt: alice.crt,
        key: bob.key,
    };

    let line = agent_refuses_to_start(&pki, &mismatched);

    assert!(
        line.to_lowercase().contains("key"),
        "line does not say the key is the problem: {line}"
    );
}

#[test]
fn agent_with_an_unreadable_certificate_exits_64_naming_the_file() {
    let pki = Pki::new();
    let alice = pki.login("alice", &["dba"]);
    let missing = CertPair {
        crt: pki.dir.path().join("missing.crt"),
        key: alice.key,
    };

    let line = agent_refuses_to_start(&pki, &missing);

    let name = Path::new(&missing.crt).display().to_string();
    assert!(line.contains(&name), "line does not name {name}: {line}");
}
