//! Clients that never complete a TLS handshake (garbage bytes, half a ClientHello, a
//! silent connection) are closed and audited, and do not disturb a healthy session
//! that runs at the same time, nor the next one.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

/// Long enough for the gateway's one-second handshake timeout to pass for the stalled
/// clients, short enough to keep the test quick.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[test]
fn garbage_half_handshakes_and_silent_clients_do_not_disturb_a_healthy_session() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let alice = pki.login("alice", &["dba"]);
    let gateway = Gateway::start_with(&pki, "handshake_timeout = \"1s\"", &main_service(&cluster));
    let agent = Agent::start(&pki, &gateway, SERVICE, &alice);

    // 1. A healthy session that is mid-query while the others misbehave.
    let slow = psql_command(agent.port, &pki, &alice, "alice", "SELECT pg_sleep(3), 42");
    let healthy = thread::spawn(move || run_bounded(slow, CLIENT_TIMEOUT));
    gateway.wait_for_audit("the healthy session.start", |r| {
        events(r, "session.start")
            .iter()
            .any(|r| r["user"] == "alice")
    });

    // 2. Three misbehaving clients at once.
    let addr = gateway.addr;
    let mut garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    garbage.extend((0u8..=255).cycle().take(2048));
    let hello = client_hello(&pki.ca_crt, SERVICE);
    let half = hello[..hello.len() / 2].to_vec();
    let clients: Vec<_> = [
        ("garbage", garbage),
        ("half handshake", half),
        ("silent", vec![]),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        (
            name,
            thread::spawn(move || send_and_wait_for_close(addr, &bytes, CLOSE_WAIT)),
        )
    })
    .collect();
    let mut peers = Vec::new();
    for (name, client) in clients {
        let (local, closed) = client.join().expect("client thread");
        assert!(
            closed,
            "gateway did not close the {name} client within {CLOSE_WAIT:?}"
        );
        peers.push((name, local));
    }

    // 3. The healthy session finished its query, and a new one works too.
    let out = healthy.join().expect("psql thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim().ends_with("|42"),
        "healthy session was disturbed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let next = psql(agent.port, &pki, &alice, "alice", "SELECT 7");
    assert_eq!(
        next.stdout.trim(),
        "7",
        "a new session failed:\n{}",
        next.describe()
    );

    // 4. One refusal each, with the reason; two whole sessions for alice.
    drop(agent);
    let records = gateway.stop_ok();
    for (name, local) in peers {
        let mine = from_peer(&records, local);
        let want = if name == "garbage" {
            "handshake_failed"
        } else {
            "handshake_timeout"
        };
        assert_eq!(
            mine.len(),
            1,
            "want one record for the {name} client:\n{}",
            show(&records)
        );
        assert_eq!(mine[0]["event"], "session.denied", "{name}: {}", mine[0]);
        assert_eq!(mine[0]["reason"], want, "{name}: wrong reason: {}", mine[0]);
    }
    let starts = events(&records, "session.start");
    let ends = events(&records, "session.end");
    assert_eq!(
        starts.len(),
        2,
        "want two admitted sessions:\n{}",
        show(&records)
    );
    assert_eq!(
        ends.len(),
        2,
        "want two ended sessions:\n{}",
        show(&records)
    );
}
