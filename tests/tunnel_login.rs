//! The main path: psql → `pgtunnel connect` → `pgtunnel gateway` → PostgreSQL, with
//! one login certificate checked twice, by the gateway (mTLS) and by PostgreSQL
//! itself (`cert` method, its own TLS inside the tunnel); the session is audited.

mod common;

use common::*;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

#[test]
fn psql_through_agent_and_gateway_logs_in_with_the_login_certificate_and_is_audited() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let out = psql(agent.port, &pki, &alice, "alice", WHOAMI_SQL);

    assert!(
        out.status.success(),
        "psql through the tunnel failed:\n{}\nagent stderr:\n{}\ngateway stderr:\n{}",
        out.describe(),
        agent.stderr(),
        gateway.stderr()
    );
    let row = out.stdout.trim();
    let (user, dn) = row
        .split_once('|')
        .unwrap_or_else(|| panic!("unexpected row {row:?}"));
    assert_eq!(
        user,
        "alice",
        "PostgreSQL's current_user:\n{}",
        out.describe()
    );
    assert!(
        dn.contains("CN=alice"),
        "PostgreSQL's own TLS did not see alice's certificate: client_dn {dn:?}"
    );

    drop(agent);
    let records = gateway.stop_ok();
    let starts = events(&records, "session.start");
    let ends = events(&records, "session.end");
    assert_eq!(
        starts.len(),
        1,
        "want one session.start:\n{}",
        show(&records)
    );
    assert_eq!(ends.len(), 1, "want one session.end:\n{}", show(&records));
    assert!(
        events(&records, "session.denied").is_empty(),
        "unexpected refusals:\n{}",
        show(&records)
    );
    let (start, end) = (starts[0], ends[0]);
    // Whichever pump the kernel allows carried the session, and the end record says so.
    let pump = match pgtunnel::sys::ktls::probe() {
        Ok(()) => "ktls",
        Err(_) => "userspace",
    };
    assert_eq!(
        end["pump"], pump,
        "session.end does not name the pump: {end}"
    );
    assert_eq!(
        start["session_id"], end["session_id"],
        "start and end differ in session_id"
    );

    for record in [start, end] {
        assert_eq!(record["user"], "alice", "user not recorded: {record}");
        assert_eq!(record["service"], SERVICE, "service not recorded: {record}");
        for field in ["ts", "peer", "cert_serial", "cert_sha256", "cert_not_after"] {
            assert!(
                record[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} missing or empty: {record}"
            );
        }
        assert!(
            record["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "dba")),
            "groups do not hold dba: {record}"
        );
    }
    assert_eq!(
        start["cert_serial"], end["cert_serial"],
        "serial changed within a session"
    );
    for field in ["bytes_from_client", "bytes_to_client"] {
        assert!(
            end[field].as_u64().is_some_and(|n| n > 0),
            "{field} is not a positive count: {end}"
        );
    }
    assert!(end["duration_ms"].is_u64(), "duration_ms missing: {end}");
    assert!(
        end["close_reason"].as_str().is_some_and(|s| !s.is_empty()),
        "close_reason missing: {end}"
    );
    assert!(
        start["cert_sha256"].as_str().is_some_and(is_sha256_hex),
        "cert_sha256 is not 64 hex digits: {start}"
    );
}

fn is_sha256_hex(s: &str) -> bool {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// PostgreSQL offers no TLS on a unix socket (it answers SSLRequest with `N`), so over
/// a `unix:` upstream psql's own TLS, and with it PostgreSQL's `cert` check, cannot
/// happen: only the gateway checks the certificate, and pg_hba's `local` lines decide
/// (here the throwaway cluster's `local all all trust`). This test shows the path works
/// and that PostgreSQL indeed refuses TLS there; docs/limitations.md says what follows.
#[test]
fn gateway_reaches_postgresql_over_a_unix_socket_upstream_where_only_the_gateway_checks_the_certificate()
 {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let upstream = format!("unix:{}", cluster.socket_path().display());
    let gateway = Gateway::start(
        &pki,
        &service_toml(SERVICE, &upstream, &["alice"], &["dba"]),
    );
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let sql = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let verified = psql(agent.port, &pki, &alice, "alice", sql);
    let conn = format!(
        "host=127.0.0.1 port={} sslmode=disable user=alice dbname=postgres \
         connect_timeout=10 gssencmode=disable",
        agent.port
    );
    let mut plain = std::process::Command::new(psql_bin());
    clear_pg_env(&mut plain);
    plain.arg(conn).args(["-X", "-A", "-t", "-w", "-c", sql]);
    let plain = run_bounded(plain, CLIENT_TIMEOUT);
    let plain_out = String::from_utf8_lossy(&plain.stdout);

    assert!(
        !verified.status.success() && verified.stderr.contains("does not support SSL"),
        "PostgreSQL offered TLS over its unix socket?\n{}",
        verified.describe()
    );
    assert!(
        plain.status.success() && plain_out.trim() == "alice|f",
        "psql without inner TLS did not reach PostgreSQL over the unix upstream: {}\n{}\n{}",
        plain.status,
        plain_out,
        String::from_utf8_lossy(&plain.stderr)
    );
    drop(agent);
    let (_, records) = gateway.stop();
    assert_eq!(
        events(&records, "session.start").len(),
        2,
        "want both sessions admitted by the gateway:\n{}",
        show(&records)
    );
}

/// The writer flushes at least every 100 ms, so a record is readable while the gateway
/// still runs; `ts` is RFC 3339 in UTC with microseconds.
#[test]
fn audit_records_are_readable_while_the_gateway_runs_and_stamped_in_utc_microseconds() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let out = psql(agent.port, &pki, &alice, "alice", "SELECT 1");
    assert!(
        out.status.success(),
        "psql through the tunnel failed:\n{}",
        out.describe()
    );

    let records = gateway.wait_for_audit("a session.end", |r| !events(r, "session.end").is_empty());

    for record in &records {
        let ts = record["ts"].as_str().unwrap_or_default();
        let parsed = time::OffsetDateTime::parse(ts, &Rfc3339);
        assert!(parsed.is_ok(), "ts {ts:?} is not RFC 3339: {record}");
        let fraction = ts
            .strip_suffix('Z')
            .and_then(|t| t.rsplit_once('.'))
            .map(|(_, f)| f.len());
        assert_eq!(
            fraction,
            Some(6),
            "ts {ts:?} is not UTC (Z) with microseconds"
        );
        let id_ok = match &record["session_id"] {
            Value::String(s) => !s.is_empty(),
            Value::Number(_) => true,
            _ => false,
        };
        assert!(id_ok, "session_id missing: {record}");
    }
}
