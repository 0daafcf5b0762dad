//! The audit trail of a real gateway: sessions through the agent with real psql, a
//! refusal, a `kill -9` of the gateway, a restart on the same audit log, more sessions
//! and a SIGTERM. Afterwards `pgtunnel audit verify` must find one unbroken chain, and
//! `pgtunnel audit show --config` must list every session.

mod common;

use std::process::Command;

use common::*;

fn audit(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .output()
        .expect("pgtunnel audit runs")
}

fn login_ok(agent: &Agent, pki: &Pki, cert: &CertPair, gateway: &Gateway) {
    let out = psql(agent.port, pki, cert, "alice", "SELECT 1");
    assert!(
        out.status.success(),
        "psql through the tunnel failed:\n{}\nagent stderr:\n{}\ngateway stderr:\n{}",
        out.describe(),
        agent.stderr(),
        gateway.stderr()
    );
}

#[test]
fn a_gateways_trail_stays_one_verifiable_chain_across_a_kill_9_and_a_restart() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let alice = pki.login("alice", &[]);
    let bob = pki.login("bob", &[]);
    let mut gateway = Gateway::start(&pki, &main_service(&cluster));

    // Two sessions and a refusal, then a crash.
    {
        let agent = Agent::start(&pki, &gateway, SERVICE, &alice);
        login_ok(&agent, &pki, &alice, &gateway);
        login_ok(&agent, &pki, &alice, &gateway);
        let refused = Agent::start(&pki, &gateway, SERVICE, &bob);
        let out = psql(refused.port, &pki, &bob, "bob", "SELECT 1");
        assert!(
            !out.status.success(),
            "bob is not allowed on main:\n{}",
            out.describe()
        );
        gateway.wait_for_audit("two session ends and a denial", |r| {
            events(r, "session.end").len() == 2 && events(r, "session.denied").len() == 1
        });
    }
    gateway.kill();
    let log = gateway.audit_log.display().to_string();
    let out = audit(&["verify", &log]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "what the gateway wrote before kill -9 must verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The restarted gateway continues the same chain.
    gateway.restart();
    {
        let agent = Agent::start(&pki, &gateway, SERVICE, &alice);
        login_ok(&agent, &pki, &alice, &gateway);
    }
    let config = gateway.config.display().to_string();
    let status = gateway.terminate();
    let records = gateway.audit();
    assert!(
        status.success(),
        "gateway did not exit 0 after SIGTERM: {status}"
    );
    assert_eq!(
        events(&records, "session.start").len(),
        3,
        "three sessions:\n{}",
        show(&records)
    );
    assert_eq!(
        events(&records, "session.end").len(),
        3,
        "three ends:\n{}",
        show(&records)
    );
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record["seq"],
            i as u64 + 1,
            "seq must count every record: {record}"
        );
    }

    let out = audit(&["verify", "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the whole trail must verify:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("ok: {} record(s)", records.len())),
        "verify must count every record: {stdout}"
    );

    let out = audit(&[
        "show", "--config", &config, "--user", "alice", "--event", "session",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table
            .lines()
            .skip(1)
            .filter(|l| l.contains("alice"))
            .count(),
        6,
        "show must list alice's 3 starts and 3 ends:\n{table}"
    );
}
