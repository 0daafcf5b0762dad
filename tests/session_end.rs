//! A session ends when its client goes. psql sends Terminate and closes its socket at
//! once, so the last bytes and the end of stream often reach the agent together; the
//! pumps must still see the end of stream, or the tunnel and the gateway's session stay
//! open (and unrecorded as ended) until something else closes them. Many short psql
//! runs side by side make that timing common; every one of them must leave a
//! `session.end` shortly after psql exits.

mod common;

use std::sync::Arc;
use std::thread;

use common::*;

/// psql runs per thread, and threads; enough that the end of stream arrives together
/// with data many times over.
const RUNS: usize = 40;
const THREADS: usize = 3;

#[test]
fn every_short_psql_session_ends_in_the_gateway_when_psql_exits() {
    let pki = Arc::new(Pki::new());
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (pki, alice, port) = (pki.clone(), alice.clone(), agent.port);
            thread::spawn(move || {
                for _ in 0..RUNS {
                    let out = psql(port, &pki, &alice, "alice", "SELECT 1");
                    assert!(
                        out.status.success() && out.stdout.trim() == "1",
                        "psql failed:\n{}",
                        out.describe()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("psql thread");
    }

    // Every psql has exited; each session's end is due within moments, long before
    // any timeout of ours.
    let total = RUNS * THREADS;
    let records = gateway.wait_for_audit(&format!("{total} session.end records"), |r| {
        events(r, "session.end").len() >= total
    });
    assert_eq!(
        events(&records, "session.start").len(),
        total,
        "want one session per psql run:\n{}",
        show(&records)
    );
    let lingering: Vec<_> = events(&records, "session.end")
        .into_iter()
        .filter(|r| {
            !matches!(
                r["close_reason"].as_str(),
                Some("client_closed" | "upstream_closed")
            )
        })
        .collect();
    assert!(
        lingering.is_empty(),
        "sessions ended otherwise than by their client or PostgreSQL:\n{}",
        show(lingering)
    );
    let log = agent.stderr();
    assert_eq!(
        log.matches("tunnel closed").count(),
        total,
        "the agent did not close one tunnel per psql run:\n{log}"
    );
}
