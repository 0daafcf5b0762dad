//! The gateway's policy for a service: a certificate's user must be in `allow_users`
//! or one of its groups in `allow_groups`. Checked with real psql through the agent.

mod common;

use common::*;

#[test]
fn user_neither_listed_nor_in_an_allowed_group_is_refused_as_policy_denied() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let bob = pki.login("bob", &["sales"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &bob);

    let out = psql(agent.port, &pki, &bob, "bob", "SELECT current_user");

    assert!(
        !out.status.success(),
        "bob got through:\n{}",
        out.describe()
    );
    drop(agent);
    let (_, records) = gateway.stop();
    assert_eq!(
        records.len(),
        1,
        "want exactly one record:\n{}",
        show(&records)
    );
    let record = &records[0];
    assert_eq!(record["event"], "session.denied", "not a refusal: {record}");
    assert_eq!(record["reason"], "policy_denied", "wrong reason: {record}");
    assert_eq!(
        record["user"], "bob",
        "refused identity not recorded: {record}"
    );
    assert_eq!(record["service"], SERVICE, "service not recorded: {record}");
}

#[test]
fn user_in_an_allowed_group_is_admitted_without_being_listed() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["carol"]);
    let carol = pki.login("carol", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &carol);

    let out = psql(agent.port, &pki, &carol, "carol", "SELECT current_user");

    assert!(
        out.status.success(),
        "carol (group dba) was refused:\n{}",
        out.describe()
    );
    assert_eq!(
        out.stdout.trim(),
        "carol",
        "wrong user:\n{}",
        out.describe()
    );
    drop(agent);
    let (_, records) = gateway.stop();
    let starts = events(&records, "session.start");
    assert_eq!(
        starts.len(),
        1,
        "want one session.start:\n{}",
        show(&records)
    );
    assert_eq!(
        starts[0]["user"], "carol",
        "wrong user recorded: {}",
        starts[0]
    );
}
