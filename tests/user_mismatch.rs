//! A login certificate names one database user: alice's certificate cannot log in as
//! bob, whether psql talks to PostgreSQL directly or through the tunnel (where the
//! gateway admits alice and PostgreSQL's `cert` method is the one that refuses).

mod common;

use common::*;

/// libpq's text for a `cert` login whose CN is not the requested user.
const CERT_AUTH_FAILED: &str = "certificate authentication failed for user \"bob\"";

#[test]
fn alices_certificate_cannot_log_in_as_bob_directly() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let alice = pki.login("alice", &["dba"]);

    let out = psql(cluster.port(), &pki, &alice, "bob", "SELECT current_user");

    assert!(
        !out.status.success(),
        "alice logged in as bob directly:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(CERT_AUTH_FAILED),
        "PostgreSQL did not refuse with the cert method:\n{}",
        out.describe()
    );
}

#[test]
fn alices_certificate_cannot_log_in_as_bob_through_the_tunnel() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let out = psql(agent.port, &pki, &alice, "bob", "SELECT current_user");

    assert!(
        !out.status.success(),
        "alice logged in as bob via tunnel:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(CERT_AUTH_FAILED),
        "PostgreSQL (not the gateway) should refuse:\n{}\ngateway stderr:\n{}",
        out.describe(),
        gateway.stderr()
    );

    // The gateway's part was right: alice may use the service, so it admitted her.
    drop(agent);
    let (_, records) = gateway.stop();
    let starts = events(&records, "session.start");
    assert_eq!(
        starts.len(),
        1,
        "want one admitted session:\n{}",
        show(&records)
    );
    assert_eq!(
        starts[0]["user"], "alice",
        "admitted as someone else: {}",
        starts[0]
    );
    assert!(
        events(&records, "session.denied").is_empty(),
        "the gateway refused, so PostgreSQL's check was not exercised:\n{}",
        show(&records)
    );
}
