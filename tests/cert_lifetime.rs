//! Short-lived is enforced, not hoped for: the gateway refuses a login certificate whose
//! validity period is longer than `max_cert_lifetime` (default 24h), and ends a live
//! session when its certificate expires (after `cert_expiry_grace`, if set), with
//! `close_reason: "cert_expired"` in its `session.end` record.
//!
//! Refusals are checked with real psql through the agent without inner TLS
//! (`sslmode=disable`), so the gateway's ErrorResponse reaches psql and its text can be
//! asserted. Expiry is checked with real certificates a few seconds from their end and a
//! psql session kept busy with `pg_sleep`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long the expiring certificates live. Long enough for the gateway, the agent and
/// psql's inner TLS login to be ready on a loaded machine, short enough to keep the
/// tests quick.
const SHORT_TTL: &str = "6s";

/// The most a session may outlive its deadline: the worker re-checks live sessions every
/// 250 ms, and the session then needs a moment to stop its pump and write its record.
const CLOSE_SLACK: Duration = Duration::from_millis(1500);

/// Starts a gateway with `gateway_extra`, an agent for alice with a certificate issued
/// with `issue_args`, and psql through them; returns psql's output and the audit log.
fn login_through_gateway(gateway_extra: &str, issue_args: &[&str]) -> (ClientOutput, Vec<Value>) {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let cert = pki.login_with("alice-long", "alice", &["dba"], issue_args);
    let gateway = Gateway::start_with(&pki, gateway_extra, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &cert);

    let out = psql_plain(agent.port, "alice", "SELECT 1");

    drop(agent);
    let records = gateway.stop_ok();
    (out, records)
}

/// Checks that psql was refused with the lifetime message and that the audit log holds
/// exactly one `session.denied` for alice with reason `lifetime_exceeds_max`.
fn assert_refused_for_lifetime(out: &ClientOutput, records: &[Value], max: &str) {
    assert!(
        !out.status.success(),
        "psql got through with an over-long certificate:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("exceeds max_cert_lifetime") && out.stderr.contains(max),
        "psql did not print why (lifetime over {max}):\n{}",
        out.describe()
    );
    assert_eq!(
        records.len(),
        1,
        "want exactly one audit record for one refused login:\n{}",
        show(records)
    );
    let record = &records[0];
    assert_eq!(record["event"], "session.denied", "not a refusal: {record}");
    assert_eq!(
        record["reason"], "lifetime_exceeds_max",
        "wrong reason: {record}"
    );
    assert_eq!(
        record["user"], "alice",
        "refused identity not recorded: {record}"
    );
}

#[test]
fn certificate_valid_for_48h_is_refused_as_lifetime_exceeds_max_under_the_default_24h() {
    let (out, records) = login_through_gateway("", &["--ttl", "48h"]);
    assert_refused_for_lifetime(&out, &records, "1d");
}

/// The clock-skew allowance (five minutes, see the next test) is all the slack there is:
/// a certificate spanning 24h06m exactly is refused.
#[test]
fn certificate_spanning_24h_and_6m_is_refused_under_the_default_24h() {
    let not_before = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(10));
    let (out, records) =
        login_through_gateway("", &["--not-before", &not_before, "--ttl", "1446m"]);
    assert_refused_for_lifetime(&out, &records, "1d");
}

#[test]
fn certificate_valid_for_1h_is_refused_when_max_cert_lifetime_is_30m() {
    let (out, records) = login_through_gateway("max_cert_lifetime = \"30m\"", &["--ttl", "1h"]);
    assert_refused_for_lifetime(&out, &records, "30m");
}

/// `ca issue` starts a certificate five minutes in the past for clock skew, so one issued
/// for the full 24h spans 24h05m; the gateway must not count that allowance against it.
#[test]
fn certificate_issued_for_exactly_the_default_24h_is_admitted() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let cert = pki.login_with("alice-day", "alice", &["dba"], &["--ttl", "24h"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &cert);

    let out = psql(agent.port, &pki, &cert, "alice", "SELECT current_user");

    drop(agent);
    let (_, records) = gateway.stop();
    assert!(
        out.status.success() && out.stdout.trim() == "alice",
        "a certificate issued for the maximum lifetime was refused:\n{}\naudit:\n{}",
        out.describe(),
        show(&records)
    );
    assert!(
        events(&records, "session.denied").is_empty(),
        "unexpected refusal:\n{}",
        show(&records)
    );
}

/// Runs one session whose certificate expires a few seconds after it starts, and
/// returns the `session.end` record and psql's output. `gateway_extra` configures the
/// gateway's expiry handling.
fn session_outliving_its_certificate(gateway_extra: &str, wait: Duration) -> (Value, ClientOutput) {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let gateway = Gateway::start_with(&pki, gateway_extra, &main_service(&cluster));
    // Issued last, so that its few seconds are not spent starting PostgreSQL.
    let cert = pki.login_with("alice-short", "alice", &["dba"], &["--ttl", SHORT_TTL]);
    let agent = Agent::start(&pki, &gateway, SERVICE, &cert);

    let query = Background::spawn(psql_command(
        agent.port,
        &pki,
        &cert,
        "alice",
        "SELECT pg_sleep(30)",
    ));
    gateway.wait_for_audit("alice's session.start", |r| {
        !events(r, "session.start").is_empty()
    });
    let deadline = Instant::now() + wait;
    let mut records = gateway.audit();
    while events(&records, "session.end").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        records = gateway.audit();
    }
    let ends = events(&records, "session.end");
    assert_eq!(
        ends.len(),
        1,
        "the session was not closed within {wait:?} of starting:\n{}\ngateway stderr:\n{}",
        show(&records),
        gateway.stderr()
    );
    let end = ends[0].clone();
    let out = query.finish(CLIENT_TIMEOUT);
    drop(agent);
    (end, out)
}

#[test]
fn session_whose_certificate_expires_mid_session_is_closed_as_cert_expired() {
    let (end, out) = session_outliving_its_certificate("", Duration::from_secs(15));

    assert_eq!(
        end["close_reason"], "cert_expired",
        "wrong close reason: {end}"
    );
    let closed = ts_field(&end, "ts");
    let not_after = ts_field(&end, "cert_not_after");
    assert!(
        closed >= not_after,
        "closed at {closed} before the certificate expired at {not_after}: {end}"
    );
    assert!(
        closed - not_after < CLOSE_SLACK,
        "closed at {closed}, more than {CLOSE_SLACK:?} after expiry at {not_after}: {end}"
    );
    assert!(
        !out.status.success(),
        "psql's 30 s query completed although its session was closed:\n{}",
        out.describe()
    );
}

#[test]
fn with_a_grace_period_an_expired_certificates_session_is_closed_only_when_the_grace_ends() {
    let grace = Duration::from_secs(3);
    let (end, out) =
        session_outliving_its_certificate("cert_expiry_grace = \"3s\"", Duration::from_secs(20));

    assert_eq!(
        end["close_reason"], "cert_expired",
        "wrong close reason: {end}"
    );
    let closed = ts_field(&end, "ts");
    let deadline = ts_field(&end, "cert_not_after") + grace;
    assert!(
        closed >= deadline,
        "closed at {closed}, before the grace period ended at {deadline}: {end}"
    );
    assert!(
        closed - deadline < CLOSE_SLACK,
        "closed at {closed}, more than {CLOSE_SLACK:?} after the grace ended at {deadline}: \
         {end}"
    );
    assert!(
        !out.status.success(),
        "psql's 30 s query completed although its session was closed:\n{}",
        out.describe()
    );
}

/// With `close_on_cert_expiry = false` the certificate is checked at login only: a
/// session started with a valid certificate runs to its natural end.
#[test]
fn with_close_on_cert_expiry_off_a_session_outlives_its_certificate() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let gateway = Gateway::start_with(
        &pki,
        "close_on_cert_expiry = false",
        &main_service(&cluster),
    );
    let cert = pki.login_with("alice-short", "alice", &["dba"], &["--ttl", SHORT_TTL]);
    let agent = Agent::start(&pki, &gateway, SERVICE, &cert);

    // Three seconds longer than the certificate lives.
    let out = psql(
        agent.port,
        &pki,
        &cert,
        "alice",
        "SELECT pg_sleep(9), 'done'",
    );

    assert!(
        out.status.success() && out.stdout.contains("done"),
        "a session outliving its certificate was cut off with close_on_cert_expiry off:\n{}",
        out.describe()
    );
    drop(agent);
    let (_, records) = gateway.stop();
    let ends = events(&records, "session.end");
    assert_eq!(ends.len(), 1, "want one session:\n{}", show(&records));
    let end = ends[0];
    assert!(
        ts_field(end, "ts") > ts_field(end, "cert_not_after"),
        "the session did not outlive its certificate, so this proves nothing: {end}"
    );
    // psql's Terminate makes PostgreSQL close too, so either side may be seen first.
    assert!(
        end["close_reason"] == "client_closed" || end["close_reason"] == "upstream_closed",
        "the session did not end on its own: {end}"
    );
}
