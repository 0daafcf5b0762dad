//! The session cap: a gateway holding `max_sessions` connections refuses the next one
//! at accept, before any TLS, and audits it as one `session.denied` with reason
//! `overloaded`; the sessions within the cap keep working, and a slot they give back
//! takes a new session again. The cap is split across workers (a worker's share is
//! `max_sessions / workers`, rounded up), and the kernel spreads connections across
//! workers by hash, so the scenario runs one worker to make the count exact.

mod common;

use common::*;

/// The cap in this scenario, all of it on one worker.
const CAP: usize = 2;

#[test]
fn connection_beyond_max_sessions_is_refused_as_overloaded_and_the_held_sessions_keep_working() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start_with(
        &pki,
        &format!("workers = 1\nmax_sessions = {CAP}"),
        &main_service(&cluster),
    );
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    // Fill the cap with sessions the test holds open.
    let mut held: Vec<Background> = (0..CAP)
        .map(|_| psql_held(agent.port, &pki, &alice, "alice", "SELECT 'opened'"))
        .collect();
    gateway.wait_for_events("session.start", CAP);

    let over = psql(agent.port, &pki, &alice, "alice", "SELECT current_user");
    assert!(
        !over.status.success(),
        "a session beyond max_sessions = {CAP} got through:\n{}",
        over.describe()
    );
    let records = gateway.wait_for_events("session.denied", 1);
    let denied = events(&records, "session.denied");
    assert_eq!(
        denied[0]["reason"], "overloaded",
        "the connection beyond the cap was refused for another reason: {}",
        denied[0]
    );
    assert!(
        denied[0].get("user").is_none(),
        "an overloaded refusal comes before TLS, so it cannot name a user: {}",
        denied[0]
    );

    // The held sessions still carry queries after the refusal.
    for (i, session) in held.iter_mut().enumerate() {
        session.feed(&format!("SELECT 'still working {i}';\n"));
    }
    for (i, session) in held.into_iter().enumerate() {
        let out = session.finish(CLIENT_TIMEOUT);
        assert!(
            out.status.success()
                && out.stdout.contains("opened")
                && out.stdout.contains(&format!("still working {i}")),
            "held session {i} did not keep working after the refusal:\n{}",
            out.describe()
        );
    }

    // The slots are given back: a new session gets in.
    gateway.wait_for_events("session.end", CAP);
    assert_logs_in(
        agent.port,
        &pki,
        &alice,
        "alice",
        "no new session got in after the held ones ended",
    );

    drop(agent);
    let records = gateway.stop_ok();
    let denied = events(&records, "session.denied");
    assert!(
        denied.len() == 1 && denied[0]["reason"] == "overloaded",
        "want exactly one session.denied (overloaded) for one connection over the cap:\n{}",
        show(&records)
    );
    assert_eq!(
        events(&records, "session.start").len(),
        CAP + 1,
        "want a session.start for each held session and the one after them:\n{}",
        show(&records)
    );
    let ends = events(&records, "session.end");
    assert!(
        ends.len() == CAP + 1
            && ends.iter().all(|end| matches!(
                end["close_reason"].as_str(),
                Some("client_closed" | "upstream_closed")
            )),
        "a session within the cap did not end on its own:\n{}",
        show(&records)
    );
}
