//! The throwaway cluster itself, without the tunnel: PostgreSQL configured with
//! exactly pg-config's lines requires our login certificate on 127.0.0.1, and the
//! cluster disappears when dropped. Everything else stands on this.

mod common;

use std::process::Command;

use common::*;

#[test]
fn cluster_logs_alice_in_with_her_certificate_and_sees_her_subject() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);

    let out = psql(cluster.port(), &pki, &alice, "alice", WHOAMI_SQL);

    assert!(
        out.status.success(),
        "direct psql as alice failed:\n{}",
        out.describe()
    );
    let row = out.stdout.trim();
    let (user, dn) = row
        .split_once('|')
        .unwrap_or_else(|| panic!("unexpected row {row:?}"));
    assert_eq!(
        user,
        "alice",
        "current_user is not alice:\n{}",
        out.describe()
    );
    assert!(
        dn.contains("CN=alice"),
        "client_dn {dn:?} does not name alice"
    );
}

#[test]
fn cluster_refuses_a_tcp_login_without_a_client_certificate() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let nowhere = pki.dir.path().join("no-such-file");

    let mut cmd = Command::new(psql_bin());
    clear_pg_env(&mut cmd);
    cmd.arg(format!(
        "host=127.0.0.1 port={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} \
         user=alice dbname=postgres connect_timeout=10 gssencmode=disable",
        cluster.port(),
        pki.ca_crt.display(),
        nowhere.display(),
        nowhere.display()
    ))
    .args(["-X", "-A", "-t", "-w", "-c", "SELECT 1"]);
    let out = run_bounded(cmd, CLIENT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert!(
        !out.status.success(),
        "psql without a certificate logged in: {stderr}"
    );
    assert!(
        stderr.contains("certificate"),
        "refusal does not mention the certificate: {stderr}"
    );
}

#[test]
fn cluster_stops_and_removes_its_folder_when_dropped() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &[]);
    let data_dir = cluster.data_dir().to_path_buf();
    let pid_file = data_dir.join("postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .expect("running cluster has postmaster.pid")
        .lines()
        .next()
        .expect("postmaster.pid names the pid")
        .trim()
        .to_owned();
    assert!(
        is_alive(&pid),
        "postmaster {pid} is not running while the cluster is up"
    );

    drop(cluster);

    assert!(
        !data_dir.exists(),
        "data folder {} left behind",
        data_dir.display()
    );
    // pg_ctl -w returns once postmaster.pid is gone, a moment before the process ends.
    let deadline = std::time::Instant::now() + WAIT;
    while is_alive(&pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!is_alive(&pid), "postmaster {pid} still running after drop");
}

/// Whether a process exists and has not exited (a zombie awaiting its parent has).
fn is_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
