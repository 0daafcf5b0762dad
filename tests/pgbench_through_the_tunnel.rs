//! Load through the tunnel: `pgbench -S -c 8 -T 5` via agent and gateway completes
//! every transaction, and the audit log holds exactly one start and one end for each
//! session. The same run against PostgreSQL directly (same TLS and certificate) gives
//! a baseline; both rates are printed for information, never asserted.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use pgtunnel::pg::cluster::Cluster;

/// What pgbench reported.
#[derive(Debug)]
struct Bench {
    processed: u64,
    failed: Option<u64>,
    tps: f64,
}

fn pgbench(cluster: &Cluster, pki: &Pki, cert: &CertPair, port: u16, what: &str) -> Bench {
    let mut cmd = Command::new(cluster.bin("pgbench"));
    clear_pg_env(&mut cmd);
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "alice")
        .env("PGDATABASE", "postgres")
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &pki.ca_crt)
        .env("PGSSLCERT", &cert.crt)
        .env("PGSSLKEY", &cert.key)
        .env("PGGSSENCMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        // -n: alice may not vacuum or truncate the superuser's tables.
        .args(["-S", "-n", "-c", "8", "-j", "2", "-T", "5"]);
    let out = run_bounded(cmd, CLIENT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = || {
        format!(
            "pgbench {what}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        )
    };
    assert!(out.status.success(), "{}", report());

    let number_after = |label: &str| -> Option<f64> {
        let rest = stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))?;
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let bench = Bench {
        processed: number_after("number of transactions actually processed:")
            .unwrap_or_else(|| panic!("no processed count\n{}", report()))
            as u64,
        // PostgreSQL 15 and later print this line; older pgbench aborts on any error.
        failed: number_after("number of failed transactions:").map(|n| n as u64),
        tps: number_after("tps =").unwrap_or_else(|| panic!("no tps line\n{}", report())),
    };
    assert!(
        bench.processed > 0,
        "no transaction processed\n{}",
        report()
    );
    assert!(
        bench.failed.unwrap_or(0) == 0,
        "transactions failed\n{}",
        report()
    );
    assert!(
        !stderr.contains("aborted"),
        "a client aborted\n{}",
        report()
    );
    bench
}

#[test]
fn pgbench_select_only_through_the_tunnel_succeeds_and_audits_each_session_once() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);

    // Tables are made directly by the superuser, then lent to alice for reading.
    let mut init = cluster.admin_command("pgbench");
    init.args(["-i", "-s", "1", "-q"]);
    let out = run_bounded(init, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .admin_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO alice")
        .expect("granting pgbench tables to alice");

    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let tunnel = pgbench(&cluster, &pki, &alice, agent.port, "through the tunnel");
    let direct = pgbench(&cluster, &pki, &alice, cluster.port(), "direct");
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "pgbench -S -c 8 -j 2 -T 5 ({build} build): through the tunnel {:.0} tps \
         ({} transactions), direct {:.0} tps ({} transactions)",
        tunnel.tps, tunnel.processed, direct.tps, direct.processed
    );

    drop(agent);
    let records = gateway.stop_ok();
    assert!(
        events(&records, "session.denied").is_empty(),
        "sessions refused under load:\n{}",
        show(&records)
    );
    let mut per_session: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for record in &records {
        let id = record["session_id"].to_string();
        let counts = per_session.entry(id).or_default();
        match record["event"].as_str() {
            Some("session.start") => counts.0 += 1,
            Some("session.end") => counts.1 += 1,
            _ => panic!("unexpected record: {record}"),
        }
    }
    assert!(
        per_session.len() >= 8,
        "want at least one session per pgbench client, got {}:\n{}",
        per_session.len(),
        show(&records)
    );
    for (id, (starts, ends)) in &per_session {
        assert_eq!(
            (*starts, *ends),
            (1, 1),
            "session {id} has {starts} starts and {ends} ends:\n{}",
            show(&records)
        );
    }
    let starts = events(&records, "session.start").len();
    let ends = events(&records, "session.end").len();
    assert_eq!(starts, ends, "{starts} starts but {ends} ends");
}
