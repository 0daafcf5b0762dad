//! The agent checks the gateway before it sends anything of psql's: a gateway whose
//! server certificate comes from another CA than the agent's `--ca` (an impostor), or
//! does not carry the name the agent expects (`--server-name`, by default the host in
//! `--gateway`), gets no tunnel. psql fails, the agent's log says why, and the gateway,
//! which would have let the login certificate in, records no session: the agent ends
//! the handshake with an alert, which the gateway audits as one `session.denied`.

mod common;

use common::*;

/// Runs psql through `agent` as alice, checks that the tunnel was refused, stops the
/// gateway, and returns the agent's log after checking the gateway's audit log.
fn tunnel_refused_by_the_agent(
    pki: &Pki,
    alice: &CertPair,
    gateway: Gateway,
    agent: Agent,
) -> String {
    let out = psql(agent.port, pki, alice, "alice", WHOAMI_SQL);
    assert!(
        !out.status.success(),
        "psql logged in through a gateway the agent should not trust:\n{}",
        out.describe()
    );
    let log = agent.stderr();
    assert!(
        log.contains("tunnel not opened"),
        "the agent's log does not say it refused the tunnel:\n{log}"
    );

    drop(agent);
    let records = gateway.stop_ok();
    assert!(
        events(&records, "session.start").is_empty(),
        "a session started through a gateway the agent refused:\n{}",
        show(&records)
    );
    let denied = events(&records, "session.denied");
    assert!(
        records.len() == 1 && denied.len() == 1 && denied[0]["reason"] == "handshake_failed",
        "want the one connection recorded as a handshake the agent broke off:\n{}",
        show(&records)
    );
    log
}

#[test]
fn agent_refuses_a_gateway_whose_certificate_comes_from_another_ca() {
    let pki = Pki::new();
    let impostor_ca = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    // The gateway trusts alice's CA; only its own certificate is from elsewhere.
    let gateway = Gateway::start_serving(&pki, &impostor_ca.server, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let log = tunnel_refused_by_the_agent(&pki, &alice, gateway, agent);

    assert!(
        log.contains("certificate is not trusted")
            && log.contains("UnknownIssuer")
            && log.contains("--ca"),
        "the agent's log does not say the gateway's certificate has an unknown issuer:\n{log}"
    );
}

#[test]
fn agent_refuses_a_gateway_whose_certificate_does_not_carry_the_server_name() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    // The gateway's certificate is for localhost and 127.0.0.1 (Pki::new).
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start_with(
        &pki,
        &gateway,
        SERVICE,
        &alice,
        &["--server-name", "db.example.com"],
    );

    let log = tunnel_refused_by_the_agent(&pki, &alice, gateway, agent);

    assert!(
        log.contains("not valid for name") && log.contains("db.example.com"),
        "the agent's log does not say the gateway's certificate lacks db.example.com:\n{log}"
    );
}
