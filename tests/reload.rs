//! Hot reload on SIGHUP: the gateway re-reads its config file and applies it to new
//! connections at once and to live sessions at the next sweep. A session the new policy
//! no longer allows (its user dropped, its service removed) is closed with
//! `close_reason: "policy_changed"`; every other session keeps running on the same
//! sockets and its query completes. A config that fails to load is refused with one log
//! line naming the file, the field and the value, and the old one keeps serving. Each
//! reload leaves a `gateway.reload` record with its outcome. The server certificate and
//! key are re-read too: a new connection is served the new certificate, while a session
//! opened before keeps the keys it negotiated and goes on working.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use pgtunnel::pg::cluster::Cluster;
use pgtunnel::pki::CertInfo;
use serde_json::Value;

/// How long a live session may take to be closed after the reload: the workers sweep
/// every 250 ms (docs/reload.md); the rest is slack for a loaded machine.
const POLICY_DEADLINE: Duration = Duration::from_millis(1500);

/// A query that runs long enough to be cut off by a reload, unless it survives one.
const LONG_SQL: &str = "SELECT pg_sleep(30)";

/// A query that outlives the reload by a few seconds and then says it finished.
const SURVIVOR_SQL: &str = "SELECT pg_sleep(4), 'finished'";

/// Starts psql with `sql` in the background through `agent` as `user`.
fn session(pki: &Pki, agent: &Agent, cert: &CertPair, user: &str, sql: &str) -> Background {
    Background::spawn(psql_command(agent.port, pki, cert, user, sql))
}

/// Waits (bounded) until the audit log holds `n` session.start records.
fn wait_for_starts(gateway: &Gateway, n: usize) {
    gateway.wait_for_events("session.start", n);
}

/// Waits (bounded) for the first session.end that `matches`.
fn wait_for_end(gateway: &Gateway, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let records =
        gateway.wait_for_audit(what, |r| events(r, "session.end").into_iter().any(&matches));
    events(&records, "session.end")
        .into_iter()
        .find(|r| matches(r))
        .cloned()
        .expect("found above")
}

/// Waits (bounded) for the `n`th `gateway.reload` record and returns it.
fn wait_for_reload(gateway: &Gateway, n: usize) -> Value {
    let records = gateway.wait_for_events("gateway.reload", n);
    events(&records, "gateway.reload")[n - 1].clone()
}

/// Checks that a psql ran to completion and printed `finished`.
fn assert_survived(out: ClientOutput, who: &str) {
    assert!(
        out.status.success() && out.stdout.contains("finished"),
        "{who}'s session did not survive the reload:\n{}",
        out.describe()
    );
}

/// Whether a session ended because one of its ends finished, not because the gateway
/// closed it. psql sends Terminate and then closes; PostgreSQL may close its end
/// before the agent's close_notify reaches the gateway, so both orders count.
fn ended_on_its_own(end: &&Value) -> bool {
    matches!(
        end["close_reason"].as_str(),
        Some("client_closed" | "upstream_closed")
    )
}

/// The serial of the certificate in a PEM file, in `CertInfo::serial_hex` form.
fn serial_in(crt: &Path) -> String {
    let chain = pgtunnel::pki::load_certs(crt).expect("reading a certificate we issued");
    CertInfo::from_der(chain[0].as_ref())
        .expect("parsing a certificate we issued")
        .serial_hex
}

/// The serial of the certificate the gateway presents to a new TLS connection. The
/// client shows no certificate of its own (it only looks at the gateway's, which arrives
/// first), so the gateway refuses it as `no_client_cert` once the handshake is over.
fn served_serial(gateway: &Gateway, pki: &Pki) -> String {
    let (_, stream, handshake) =
        tls_handshake(gateway.addr, tls_client(&pki.ca_crt, None), SERVICE);
    assert!(
        handshake.is_ok(),
        "TLS handshake with the gateway failed on our side: {handshake:?}"
    );
    let leaf = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a TLS 1.3 server always sends its certificate in a full handshake");
    CertInfo::from_der(leaf.as_ref())
        .expect("parsing the gateway's certificate")
        .serial_hex
}

/// A service for `users` in front of `cluster`, with no groups.
fn service_for(name: &str, cluster: &Cluster, users: &[&str]) -> String {
    service_toml(name, &cluster.addr().to_string(), users, &[])
}

#[test]
fn sighup_with_a_policy_that_drops_a_user_closes_their_session_and_spares_the_others() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let alice = pki.login("alice", &[]);
    let bob = pki.login("bob", &[]);
    let gateway = Gateway::start(&pki, &service_for(SERVICE, &cluster, &["alice", "bob"]));
    let alice_agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let bob_agent = Agent::start(&pki, &gateway, SERVICE, &bob);
    let bobs = session(&pki, &bob_agent, &bob, "bob", LONG_SQL);
    let alices = session(&pki, &alice_agent, &alice, "alice", SURVIVOR_SQL);
    wait_for_starts(&gateway, 2);

    gateway.rewrite_config("", &service_for(SERVICE, &cluster, &["alice"]));
    let reloaded_at = time::OffsetDateTime::now_utc();
    gateway.reload();

    let end = wait_for_end(&gateway, "bob's session.end", |r| r["user"] == "bob");
    assert_eq!(
        end["close_reason"], "policy_changed",
        "bob's session ended for another reason: {end}"
    );
    let took = ts_field(&end, "ts") - reloaded_at;
    assert!(
        took < POLICY_DEADLINE,
        "bob's session was closed {took} after SIGHUP, over {POLICY_DEADLINE:?}: {end}"
    );
    let reload = wait_for_reload(&gateway, 1);
    assert_eq!(
        reload["outcome"], "ok",
        "reload not recorded as ok: {reload}"
    );
    let bob_out = bobs.finish(CLIENT_TIMEOUT);
    assert!(
        !bob_out.status.success(),
        "bob's 30 s query completed although the new policy drops him:\n{}",
        bob_out.describe()
    );
    assert_survived(alices.finish(CLIENT_TIMEOUT), "alice");

    // New connections follow the new policy.
    let bob_again = psql(bob_agent.port, &pki, &bob, "bob", "SELECT 1");
    let alice_again = psql(
        alice_agent.port,
        &pki,
        &alice,
        "alice",
        "SELECT current_user",
    );
    assert!(
        !bob_again.status.success(),
        "bob opened a new session after the policy dropped him:\n{}",
        bob_again.describe()
    );
    assert!(
        alice_again.status.success() && alice_again.stdout.trim() == "alice",
        "alice could not log in after the reload:\n{}",
        alice_again.describe()
    );
    drop((alice_agent, bob_agent));
    let (_, records) = gateway.stop();
    let denied = events(&records, "session.denied");
    assert!(
        denied.len() == 1 && denied[0]["user"] == "bob" && denied[0]["reason"] == "policy_denied",
        "want exactly bob's new attempt denied as policy_denied:\n{}",
        show(&records)
    );
    let alice_ends: Vec<&Value> = events(&records, "session.end")
        .into_iter()
        .filter(|r| r["user"] == "alice")
        .collect();
    assert!(
        alice_ends.len() == 2 && alice_ends.iter().all(ended_on_its_own),
        "alice's sessions did not end on their own:\n{}",
        show(&records)
    );
}

#[test]
fn broken_config_on_sighup_is_refused_with_one_line_and_the_old_one_keeps_serving() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let alices = session(&pki, &agent, &alice, "alice", SURVIVOR_SQL);
    wait_for_starts(&gateway, 1);

    // Broken in one field; the same file would also drop alice, which must not happen.
    gateway.rewrite_config(
        "handshake_timeout = \"soon\"",
        &service_for(SERVICE, &cluster, &["nobody"]),
    );
    gateway.reload();

    let log = gateway.wait_for_log("reload refused");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "want one log line for one refused reload:\n{log}"
    );
    let line = refused[0];
    for needle in ["gateway.toml", "handshake_timeout", "soon"] {
        assert!(
            line.contains(needle),
            "the refusal does not name {needle:?}: {line}"
        );
    }
    assert!(
        line.contains("ERROR"),
        "a refused reload is not logged as an error: {line}"
    );
    let reload = wait_for_reload(&gateway, 1);
    assert_eq!(
        reload["outcome"], "refused",
        "broken reload not recorded as refused: {reload}"
    );
    assert_survived(alices.finish(CLIENT_TIMEOUT), "alice");
    assert_logs_in(
        agent.port,
        &pki,
        &alice,
        "alice",
        "the gateway stopped serving the old config after a refused reload",
    );
    drop(agent);
    let records = gateway.stop_ok();
    assert!(
        events(&records, "session.denied").is_empty()
            && events(&records, "session.end").iter().all(ended_on_its_own),
        "the refused config was applied to some session:\n{}",
        show(&records)
    );
}

#[test]
fn reload_that_removes_a_service_closes_its_sessions_and_refuses_new_ones() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let both = format!(
        "{}\n{}",
        service_for(SERVICE, &cluster, &["alice"]),
        service_for("reports", &cluster, &["alice"])
    );
    let gateway = Gateway::start(&pki, &both);
    let main_agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let reports_agent = Agent::start(&pki, &gateway, "reports", &alice);
    let on_main = session(&pki, &main_agent, &alice, "alice", SURVIVOR_SQL);
    let on_reports = session(&pki, &reports_agent, &alice, "alice", LONG_SQL);
    wait_for_starts(&gateway, 2);

    gateway.rewrite_config("", &service_for(SERVICE, &cluster, &["alice"]));
    let reloaded_at = time::OffsetDateTime::now_utc();
    gateway.reload();

    let end = wait_for_end(&gateway, "the reports session's end", |r| {
        r["service"] == "reports"
    });
    assert_eq!(
        end["close_reason"], "policy_changed",
        "the removed service's session ended for another reason: {end}"
    );
    let took = ts_field(&end, "ts") - reloaded_at;
    assert!(
        took < POLICY_DEADLINE,
        "the removed service's session was closed {took} after SIGHUP: {end}"
    );
    let reports_out = on_reports.finish(CLIENT_TIMEOUT);
    assert!(
        !reports_out.status.success(),
        "a query on the removed service completed:\n{}",
        reports_out.describe()
    );
    assert_survived(on_main.finish(CLIENT_TIMEOUT), "the main service");
    let again = psql(reports_agent.port, &pki, &alice, "alice", "SELECT 1");
    assert!(
        !again.status.success(),
        "a new session reached the removed service:\n{}",
        again.describe()
    );
    drop((main_agent, reports_agent));
    let (_, records) = gateway.stop();
    let denied = events(&records, "session.denied");
    assert!(
        denied.len() == 1 && denied[0]["reason"] == "unknown_service",
        "want the new attempt denied as unknown_service:\n{}",
        show(&records)
    );
}

#[test]
fn sighup_serves_a_renewed_server_certificate_to_new_connections_and_spares_live_sessions() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let mut before = psql_held(agent.port, &pki, &alice, "alice", "SELECT 'opened'");
    wait_for_starts(&gateway, 1);
    let old_serial = serial_in(&pki.server.crt);
    assert_eq!(
        served_serial(&gateway, &pki),
        old_serial,
        "before the reload the gateway does not serve the certificate it started with"
    );

    // Renew the server certificate in place, as an operator would, then SIGHUP.
    let renewed = pki.dir.path().join("server-renewed");
    let renewed = renewed.to_str().expect("temp paths are UTF-8");
    let ca_dir = pki.ca_dir.to_str().expect("temp paths are UTF-8");
    ca_ok(&[
        "server",
        "--dir",
        ca_dir,
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--out",
        renewed,
    ]);
    let new_serial = serial_in(Path::new(&format!("{renewed}.crt")));
    assert_ne!(
        new_serial, old_serial,
        "ca server issued the renewed certificate with the old serial"
    );
    for ext in ["crt", "key"] {
        fs::copy(
            format!("{renewed}.{ext}"),
            gateway.dir.path().join(format!("server.{ext}")),
        )
        .expect("replacing the gateway's server certificate and key");
    }
    gateway.reload();
    let reload = wait_for_reload(&gateway, 1);
    assert_eq!(
        reload["outcome"], "ok",
        "reload not recorded as ok: {reload}"
    );

    assert_eq!(
        served_serial(&gateway, &pki),
        new_serial,
        "a new connection after SIGHUP is still served the old server certificate"
    );
    before.feed("SELECT 'still working';\n");
    let out = before.finish(CLIENT_TIMEOUT);
    assert!(
        out.status.success()
            && out.stdout.contains("opened")
            && out.stdout.contains("still working"),
        "the session opened before the new certificate did not keep working:\n{}",
        out.describe()
    );
    assert_logs_in(
        agent.port,
        &pki,
        &alice,
        "alice",
        "the agent could not open a tunnel to the gateway with its new certificate",
    );

    drop(agent);
    let (_, records) = gateway.stop();
    let ends = events(&records, "session.end");
    assert!(
        ends.len() == 2 && ends.iter().all(ended_on_its_own),
        "alice's sessions did not both end on their own:\n{}",
        show(&records)
    );
    let denied = events(&records, "session.denied");
    assert!(
        denied.len() == 2 && denied.iter().all(|r| r["reason"] == "no_client_cert"),
        "want only the two certificate probes refused, as no_client_cert:\n{}",
        show(&records)
    );
}
