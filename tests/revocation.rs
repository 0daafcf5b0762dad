//! Revocation with `pgtunnel ca revoke`: the signed CRL it writes is a real X.509 CRL
//! that PostgreSQL's `ssl_crl_file` accepts; a gateway with `crl = ...` refuses revoked
//! certificates (`reason: "revoked"`) and closes the live sessions of a certificate
//! revoked while they run (`close_reason: "revoked"`), whether it sees the new CRL by
//! watching the file or on SIGHUP. A CRL file that cannot be used is refused and the
//! previous one stays in force: a broken file never lifts a revocation.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pgtunnel::pg::cluster::Cluster;
use serde_json::Value;

/// The longest we accept between the `ca revoke` call (or the SIGHUP) and the live
/// session's `session.end`: the gateway polls the CRL file every 500 ms and each worker
/// sweeps its sessions every 250 ms (docs/reload.md), so 0.75 s plus the time the
/// session needs to stop and record; the issue asks for 1 s after the gateway sees the
/// CRL, and the file is seen at most 500 ms after it changes.
const REVOCATION_DEADLINE: Duration = Duration::from_millis(1500);

/// The CA's CRL, as `ca revoke` writes it.
fn crl_path(pki: &Pki) -> PathBuf {
    pki.ca_dir.join("crl.pem")
}

/// Writes an empty signed CRL (`ca revoke --refresh`), so a gateway can start with it.
fn empty_crl(pki: &Pki) -> PathBuf {
    ca_ok(&[
        "revoke",
        "--dir",
        &pki.ca_dir.display().to_string(),
        "--refresh",
    ]);
    let path = crl_path(pki);
    assert!(
        path.is_file(),
        "ca revoke --refresh wrote no {}",
        path.display()
    );
    path
}

/// Revokes `cert` with `ca revoke --cert`; returns when the call started.
fn revoke(pki: &Pki, cert: &CertPair) -> time::OffsetDateTime {
    let started = time::OffsetDateTime::now_utc();
    ca_ok(&[
        "revoke",
        "--dir",
        &pki.ca_dir.display().to_string(),
        "--cert",
        &cert.crt.display().to_string(),
        "--reason",
        "key-compromise",
    ]);
    started
}

/// The `[gateway]` line that points the gateway at the CA's CRL.
fn crl_setting(pki: &Pki) -> String {
    format!("crl = {:?}", crl_path(pki).display().to_string())
}

/// psql through `agent` running a query that takes 30 s unless its session is closed.
fn long_session(pki: &Pki, agent: &Agent, cert: &CertPair) -> Background {
    Background::spawn(psql_command(
        agent.port,
        pki,
        cert,
        "alice",
        "SELECT pg_sleep(30)",
    ))
}

/// Waits (bounded) for `n` session.start records.
fn wait_for_starts(gateway: &Gateway, n: usize) -> Vec<Value> {
    gateway.wait_for_events("session.start", n)
}

/// Waits (bounded) for the `session.end` of the session that used `serial`.
fn wait_for_end_of(gateway: &Gateway, serial: &str) -> Value {
    let records = gateway.wait_for_audit("the revoked session's session.end", |r| {
        events(r, "session.end")
            .iter()
            .any(|e| e["cert_serial"] == serial)
    });
    events(&records, "session.end")
        .into_iter()
        .find(|e| e["cert_serial"] == serial)
        .cloned()
        .expect("found above")
}

/// The serial of the certificate in `cert`, as `ca show` and the audit log print it.
fn serial_of(cert: &CertPair) -> String {
    let out = ca_ok(&["show", &cert.crt.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("serial")
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("ca show printed no serial:\n{text}"))
}

/// Sets PostgreSQL's `ssl_crl_file` to a copy of `crl` it can read, reloads, and waits
/// (bounded) until new backends see the setting.
fn configure_postgresql_crl(cluster: &Cluster, crl: &PathBuf) {
    let copy = cluster.data_dir().join("pgtunnel-crl.pem");
    fs::copy(crl, &copy).expect("copying the CRL into the data folder");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).expect("chmod 644 CRL");
    let value = copy.display().to_string().replace('\'', "''");
    cluster
        .admin_sql(&format!("ALTER SYSTEM SET ssl_crl_file = '{value}'"))
        .expect("ALTER SYSTEM SET ssl_crl_file");
    cluster
        .admin_sql("SELECT pg_reload_conf()")
        .expect("pg_reload_conf");
    let deadline = Instant::now() + WAIT;
    loop {
        let shown = cluster.admin_sql("SHOW ssl_crl_file").expect("SHOW");
        if shown.trim() == copy.display().to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not take ssl_crl_file within {WAIT:?} (shows {shown:?}); log:\n{}",
            fs::read_to_string(cluster.log_path()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crl_from_ca_revoke_is_accepted_by_postgresqls_ssl_crl_file_which_then_refuses_the_revoked_certificate()
 {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let good = pki.login_with("alice-good", "alice", &["dba"], &["--ttl", "1h"]);
    let revoked = pki.login_with("alice-revoked", "alice", &["dba"], &["--ttl", "1h"]);
    let before = psql(cluster.port(), &pki, &revoked, "alice", "SELECT 1");
    assert!(
        before.status.success(),
        "the certificate was refused before any revocation:\n{}",
        before.describe()
    );

    revoke(&pki, &revoked);
    configure_postgresql_crl(&cluster, &crl_path(&pki));

    let refused = psql(cluster.port(), &pki, &revoked, "alice", "SELECT 1");
    let accepted = psql(cluster.port(), &pki, &good, "alice", "SELECT current_user");
    let log = fs::read_to_string(cluster.log_path()).unwrap_or_default();
    assert!(
        !refused.status.success() && refused.stderr.contains("revoked"),
        "PostgreSQL with our CRL did not refuse the revoked certificate as revoked:\n{}\n\
         server log:\n{log}",
        refused.describe()
    );
    assert!(
        accepted.status.success() && accepted.stdout.trim() == "alice",
        "PostgreSQL with our CRL refused a good certificate:\n{}\nserver log:\n{log}",
        accepted.describe()
    );
    assert!(
        !log.contains("revocation list"),
        "PostgreSQL complained about the CRL:\n{log}"
    );
}

#[test]
fn gateway_with_a_crl_refuses_a_revoked_certificate_as_revoked() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    empty_crl(&pki);
    let revoked = pki.login_with("alice-revoked", "alice", &["dba"], &["--ttl", "1h"]);
    revoke(&pki, &revoked);
    let gateway = Gateway::start_with(&pki, &crl_setting(&pki), &main_service(&cluster));

    let attempt = tls_attempt(
        gateway.addr,
        tls_client(&pki.ca_crt, Some(&revoked)),
        SERVICE,
    );

    assert!(
        attempt.refused(),
        "the gateway let a revoked certificate through: {attempt:?}"
    );
    let (_, records) = gateway.stop();
    assert_eq!(
        records.len(),
        1,
        "want exactly one record for one refused attempt:\n{}",
        show(&records)
    );
    let record = &records[0];
    assert_eq!(record["event"], "session.denied", "not a refusal: {record}");
    assert_eq!(record["reason"], "revoked", "wrong reason: {record}");
    assert_eq!(
        record["peer"],
        attempt.local.to_string().as_str(),
        "record is not for our connection: {record}"
    );
}

#[test]
fn live_session_is_closed_as_revoked_within_a_second_of_the_crl_file_changing() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    empty_crl(&pki);
    let doomed = pki.login_with("alice-doomed", "alice", &["dba"], &["--ttl", "1h"]);
    let good = pki.login_with("alice-good", "alice", &["dba"], &["--ttl", "1h"]);
    let gateway = Gateway::start_with(&pki, &crl_setting(&pki), &main_service(&cluster));
    let doomed_agent = Agent::start(&pki, &gateway, SERVICE, &doomed);
    let good_agent = Agent::start(&pki, &gateway, SERVICE, &good);

    let doomed_query = long_session(&pki, &doomed_agent, &doomed);
    let good_query = Background::spawn(psql_command(
        good_agent.port,
        &pki,
        &good,
        "alice",
        "SELECT pg_sleep(3), 'survived'",
    ));
    let serial = serial_of(&doomed);
    let records = wait_for_starts(&gateway, 2);
    assert!(
        events(&records, "session.start")
            .iter()
            .any(|r| r["cert_serial"] == serial.as_str()),
        "no session.start for the certificate to be revoked (serial {serial}):\n{}",
        show(&records)
    );

    let revoked_at = revoke(&pki, &doomed);
    let end = wait_for_end_of(&gateway, &serial);

    assert_eq!(end["close_reason"], "revoked", "wrong close reason: {end}");
    let took = ts_field(&end, "ts") - revoked_at;
    assert!(
        took < REVOCATION_DEADLINE,
        "session closed {took} after ca revoke started, over {REVOCATION_DEADLINE:?}: {end}"
    );
    let doomed_out = doomed_query.finish(CLIENT_TIMEOUT);
    assert!(
        !doomed_out.status.success(),
        "the revoked session's 30 s query completed:\n{}",
        doomed_out.describe()
    );
    let good_out = good_query.finish(CLIENT_TIMEOUT);
    assert!(
        good_out.status.success() && good_out.stdout.contains("survived"),
        "a session with a certificate that was not revoked was disturbed:\n{}",
        good_out.describe()
    );

    // New connections with the revoked certificate are refused from now on.
    let again = tls_attempt(
        gateway.addr,
        tls_client(&pki.ca_crt, Some(&doomed)),
        SERVICE,
    );
    assert!(
        again.refused(),
        "a revoked certificate opened a new session: {again:?}"
    );
    drop((doomed_agent, good_agent));
    let (_, records) = gateway.stop();
    let denied: Vec<&Value> = from_peer(&records, again.local);
    assert!(
        denied.len() == 1 && denied[0]["reason"] == "revoked",
        "the new attempt was not denied as revoked:\n{}",
        show(&records)
    );
}

/// Without a `crl` setting the gateway watches no file; adding one to the config and
/// sending SIGHUP applies it to live sessions too.
#[test]
fn live_session_is_closed_as_revoked_when_sighup_brings_in_a_crl_that_lists_it() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let doomed = pki.login_with("alice-doomed", "alice", &["dba"], &["--ttl", "1h"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &doomed);
    let query = long_session(&pki, &agent, &doomed);
    let serial = serial_of(&doomed);
    wait_for_starts(&gateway, 1);
    revoke(&pki, &doomed);
    thread::sleep(Duration::from_secs(1));
    assert!(
        events(&gateway.audit(), "session.end").is_empty(),
        "the session ended before the gateway was told about any CRL:\n{}",
        show(&gateway.audit())
    );

    gateway.rewrite_config(&crl_setting(&pki), &main_service(&cluster));
    let reloaded_at = time::OffsetDateTime::now_utc();
    gateway.reload();
    let end = wait_for_end_of(&gateway, &serial);

    assert_eq!(end["close_reason"], "revoked", "wrong close reason: {end}");
    // The sweep runs every 250 ms; the reload itself takes a few milliseconds.
    let took = ts_field(&end, "ts") - reloaded_at;
    assert!(
        took < REVOCATION_DEADLINE,
        "session closed {took} after SIGHUP, over {REVOCATION_DEADLINE:?}: {end}"
    );
    let out = query.finish(CLIENT_TIMEOUT);
    assert!(
        !out.status.success(),
        "the revoked session's 30 s query completed:\n{}",
        out.describe()
    );
}

#[test]
fn unusable_new_crl_is_refused_and_the_previous_one_stays_in_force() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    empty_crl(&pki);
    let revoked = pki.login_with("alice-revoked", "alice", &["dba"], &["--ttl", "1h"]);
    revoke(&pki, &revoked);
    let gateway = Gateway::start_with(&pki, &crl_setting(&pki), &main_service(&cluster));

    // Replaced the way a careless copy would: not a CRL at all.
    let crl = crl_path(&pki);
    let tmp = crl.with_extension("tmp");
    fs::write(
        &tmp,
        "-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n",
    )
    .expect("writing a broken CRL");
    fs::rename(&tmp, &crl).expect("replacing the CRL");
    let log = gateway.wait_for_log("cannot be used");

    let attempt = tls_attempt(
        gateway.addr,
        tls_client(&pki.ca_crt, Some(&revoked)),
        SERVICE,
    );

    assert!(
        log.contains(&crl.display().to_string()),
        "the refusal of the broken CRL does not name the file:\n{log}"
    );
    assert!(
        attempt.refused(),
        "a broken CRL file lifted a revocation: {attempt:?}"
    );
    let (_, records) = gateway.stop();
    let mine = from_peer(&records, attempt.local);
    assert!(
        mine.len() == 1 && mine[0]["reason"] == "revoked",
        "want one denial as revoked:\n{}",
        show(&records)
    );
}
