//! Completeness of the audit trail under load: with sessions being opened, refused and
//! closed at the same time, across a SIGHUP that changes the policy and a SIGTERM whose
//! drain ends some sessions on their own and cuts the rest, every connection the test
//! made leaves exactly one `session.denied`, or one `session.start` followed by one
//! `session.end`, and nothing else. The trail then verifies as one unbroken chain.
//!
//! The clients are real: psql through three agents (alice, whom the policy always
//! allows; bob, whom the reload drops; mallory, whom it never allows), a raw TLS client
//! with a certificate from another CA, garbage bytes, and connections that close at
//! once. The test counts its own connections and compares with the log, so a missing,
//! doubled or extra record fails it, not just a malformed one.
//!
//! New connections stop before SIGTERM: the gateway closes its listeners when the drain
//! begins, and a connection still in a listener's backlog then is reset by the kernel
//! without the gateway ever accepting it, so it cannot have a record and cannot be
//! counted exactly. What runs across the SIGTERM are sessions mid-query (some finish
//! during the drain, some are cut at its deadline) and clients mid-handshake.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pgtunnel::pg::cluster::Cluster;
use serde_json::Value;

/// How long the clients keep connecting before the test moves on to the drain; the
/// reload comes half-way through.
const LOAD_FOR: Duration = Duration::from_secs(8);

/// A bound on each client thread's attempts, whatever the machine's speed.
const MAX_ATTEMPTS_PER_THREAD: usize = 400;

/// A query that ends well within the harness's 5 s drain.
const DRAINS_SQL: &str = "SELECT pg_sleep(2), 'drained'";

/// A query the drain deadline must cut.
const CUT_SQL: &str = "SELECT pg_sleep(60)";

/// What one client thread did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// psql as alice, allowed before and after the reload.
    Alice,
    /// psql as bob, allowed until the reload drops him.
    Bob,
    /// psql as mallory, whom no policy allows.
    Mallory,
    /// A raw TLS client with a certificate from another CA.
    ForeignCa,
    /// Bytes that are not TLS.
    Garbage,
    /// A TCP connection closed without sending anything.
    Hangup,
}

/// How one connection ended on the client's side.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    /// Whether the client got what it asked for (psql: a result; the others: refused).
    as_expected: bool,
    /// Our side of the connection, when the gateway sees it directly (not via an agent).
    local: Option<SocketAddr>,
    detail: String,
}

/// One connection the test made, and when, to place it before or after the reload.
#[derive(Debug)]
struct Attempt {
    outcome: Outcome,
    started: Instant,
    ended: Instant,
}

/// The service in front of `cluster` for `users` and group `dba`.
fn service(cluster: &Cluster, users: &[&str]) -> String {
    service_toml(SERVICE, &cluster.addr().to_string(), users, &["dba"])
}

fn psql_attempt(pki: &Pki, port: u16, cert: &CertPair, user: &str, kind: Kind) -> Outcome {
    let out = psql(port, pki, cert, user, "SELECT 1");
    Outcome {
        kind,
        as_expected: out.status.success() && out.stdout.trim() == "1",
        local: None,
        detail: out.describe(),
    }
}

/// Runs `attempt` in a loop on its own thread until `stop` or the per-thread bound.
fn client_thread(
    stop: &Arc<AtomicBool>,
    attempt: impl Fn(usize) -> Outcome + Send + 'static,
) -> thread::JoinHandle<Vec<Attempt>> {
    let stop = stop.clone();
    thread::spawn(move || {
        let mut done = Vec::new();
        while !stop.load(Ordering::Relaxed) && done.len() < MAX_ATTEMPTS_PER_THREAD {
            let started = Instant::now();
            let outcome = attempt(done.len());
            done.push(Attempt {
                outcome,
                started,
                ended: Instant::now(),
            });
        }
        done
    })
}

/// Opens a TCP connection, sends `bytes`, and keeps it open (reading) until the gateway
/// closes it or `limit` passes. Returns our address as soon as it is connected.
fn held_connection(
    gateway: SocketAddr,
    bytes: Vec<u8>,
    limit: Duration,
) -> (SocketAddr, thread::JoinHandle<bool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        let mut sock = TcpStream::connect_timeout(&gateway, WAIT).expect("TCP connect");
        tx.send(sock.local_addr().expect("local address"))
            .expect("test thread waiting");
        if !bytes.is_empty() {
            std::io::Write::write_all(&mut sock, &bytes).expect("sending to the gateway");
        }
        sock.set_read_timeout(Some(limit)).expect("read timeout");
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    });
    let local = rx.recv_timeout(WAIT).expect("held connection connected");
    (local, handle)
}

#[test]
fn every_connection_under_load_across_sighup_and_sigterm_has_exactly_one_outcome_in_the_audit_log()
{
    let pki = Pki::new();
    let other_ca = Pki::new();
    let cluster = start_cluster(&pki, &["alice", "bob"]);
    let alice = pki.login("alice", &["dba"]);
    let bob = pki.login("bob", &[]);
    let mallory = pki.login("mallory", &[]);
    let foreign = other_ca.login("alice", &["dba"]);

    let mut gateway = Gateway::start(&pki, &service(&cluster, &["alice", "bob"]));
    let addr = gateway.addr;
    let alice_agent = Agent::start(&pki, &gateway, SERVICE, &alice);
    let bob_agent = Agent::start(&pki, &gateway, SERVICE, &bob);
    let mallory_agent = Agent::start(&pki, &gateway, SERVICE, &mallory);

    // bob is mid-query when the reload drops him: his session must end, once.
    let bobs_long = Background::spawn(psql_command(bob_agent.port, &pki, &bob, "bob", CUT_SQL));
    gateway.wait_for_audit("bob's long session.start", |r| {
        events(r, "session.start")
            .iter()
            .any(|r| r["user"] == "bob")
    });

    // Phase 1: everyone connects at once, and the policy changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let pki = Arc::new(pki);
    let mut threads = Vec::new();
    for _ in 0..2 {
        let (pki, alice, port) = (pki.clone(), alice.clone(), alice_agent.port);
        threads.push(client_thread(&stop, move |_| {
            psql_attempt(&pki, port, &alice, "alice", Kind::Alice)
        }));
    }
    {
        let (pki, bob, port) = (pki.clone(), bob.clone(), bob_agent.port);
        threads.push(client_thread(&stop, move |_| {
            psql_attempt(&pki, port, &bob, "bob", Kind::Bob)
        }));
    }
    {
        let (pki, mallory, port) = (pki.clone(), mallory.clone(), mallory_agent.port);
        threads.push(client_thread(&stop, move |_| {
            let mut attempt = psql_attempt(&pki, port, &mallory, "mallory", Kind::Mallory);
            attempt.as_expected = !attempt.as_expected;
            attempt
        }));
    }
    {
        let config = tls_client(&pki.ca_crt, Some(&foreign));
        threads.push(client_thread(&stop, move |_| {
            let attempt = tls_attempt(addr, config.clone(), SERVICE);
            Outcome {
                kind: Kind::ForeignCa,
                as_expected: attempt.refused(),
                local: Some(attempt.local),
                detail: format!("{attempt:?}"),
            }
        }));
    }
    {
        let mut garbage = b"\x16\x03\x01\x00\x05hello, not really TLS\r\n".to_vec();
        garbage.extend((0u8..=255).cycle().take(1500));
        threads.push(client_thread(&stop, move |n| {
            if n % 2 == 0 {
                let (local, closed) = send_and_wait_for_close(addr, &garbage, WAIT);
                Outcome {
                    kind: Kind::Garbage,
                    as_expected: closed,
                    local: Some(local),
                    detail: format!("closed by the gateway: {closed}"),
                }
            } else {
                let sock = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect");
                let local = sock.local_addr().expect("local address");
                drop(sock);
                Outcome {
                    kind: Kind::Hangup,
                    as_expected: true,
                    local: Some(local),
                    detail: String::new(),
                }
            }
        }));
    }

    thread::sleep(LOAD_FOR / 2);
    gateway.rewrite_config("", &service(&cluster, &["alice"]));
    let reload_sent = Instant::now();
    gateway.reload();
    let records = gateway.wait_for_audit("the gateway.reload record", |r| {
        !events(r, "gateway.reload").is_empty()
    });
    let reload_seen = Instant::now();
    let reload = events(&records, "gateway.reload")[0].clone();
    assert_eq!(reload["outcome"], "ok", "the reload failed: {reload}");
    thread::sleep(LOAD_FOR / 2);
    stop.store(true, Ordering::Relaxed);
    let attempts: Vec<Attempt> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let bobs_long = bobs_long.finish(CLIENT_TIMEOUT);
    assert!(
        !bobs_long.status.success(),
        "bob's long query survived the reload that dropped him:\n{}",
        bobs_long.describe()
    );

    // Every client got the answer its kind deserves. bob's attempts that overlapped
    // the reload may have gone either way.
    let bob_allowed = |a: &Attempt| a.ended < reload_sent;
    let bob_dropped = |a: &Attempt| a.started > reload_seen;
    for attempt in &attempts {
        let Outcome {
            kind,
            as_expected,
            ref detail,
            ..
        } = attempt.outcome;
        if kind != Kind::Bob {
            assert!(
                as_expected,
                "a {kind:?} client did not get what it should have:\n{detail}"
            );
        } else if bob_allowed(attempt) || bob_dropped(attempt) {
            assert_eq!(
                as_expected,
                bob_allowed(attempt),
                "bob's psql {} although the policy {} him:\n{detail}",
                if as_expected { "succeeded" } else { "failed" },
                if bob_allowed(attempt) {
                    "allowed"
                } else {
                    "dropped"
                },
            );
        }
    }
    let count = |kind: Kind| attempts.iter().filter(|a| a.outcome.kind == kind).count();
    for kind in [
        Kind::Alice,
        Kind::Bob,
        Kind::Mallory,
        Kind::ForeignCa,
        Kind::Garbage,
        Kind::Hangup,
    ] {
        assert!(
            count(kind) >= 2,
            "only {} {kind:?} attempt(s) in {LOAD_FOR:?}: the load was not concurrent",
            count(kind)
        );
    }
    eprintln!(
        "connections in {LOAD_FOR:?}: alice {}, bob {}, mallory {}, foreign CA {}, \
         garbage {}, hang-up {}",
        count(Kind::Alice),
        count(Kind::Bob),
        count(Kind::Mallory),
        count(Kind::ForeignCa),
        count(Kind::Garbage),
        count(Kind::Hangup)
    );
    let bobs = |when: &dyn Fn(&Attempt) -> bool| {
        attempts
            .iter()
            .filter(|a| a.outcome.kind == Kind::Bob && when(a))
            .count()
    };
    let (bob_before, bob_after) = (bobs(&bob_allowed), bobs(&bob_dropped));
    assert!(
        bob_before > 0 && bob_after > 0,
        "bob connected {bob_before} time(s) before and {bob_after} after the reload; \
         want both"
    );

    // Phase 2: sessions and handshakes in flight when SIGTERM arrives. The held
    // connections come first, so the gateway has accepted them long before the
    // sessions below have started.
    let hello = client_hello(&pki.ca_crt, SERVICE);
    let (silent_local, silent) = held_connection(addr, Vec::new(), CLIENT_TIMEOUT);
    let (half_local, half) =
        held_connection(addr, hello[..hello.len() / 2].to_vec(), CLIENT_TIMEOUT);
    let starts_before = events(&gateway.audit(), "session.start").len();
    let in_flight: Vec<(&str, Background)> = [("drains", DRAINS_SQL), ("cut", CUT_SQL)]
        .into_iter()
        .flat_map(|(what, sql)| {
            let cmd = |sql| psql_command(alice_agent.port, &pki, &alice, "alice", sql);
            [
                (what, Background::spawn(cmd(sql))),
                (what, Background::spawn(cmd(sql))),
            ]
        })
        .collect();
    gateway.wait_for_audit("the in-flight sessions' starts", |r| {
        events(r, "session.start").len() >= starts_before + in_flight.len()
    });
    let status = gateway.terminate();

    for (what, session) in in_flight {
        let out = session.finish(CLIENT_TIMEOUT);
        let finished = out.status.success() && out.stdout.contains("drained");
        assert_eq!(
            finished,
            what == "drains",
            "a {what} session {} the drain:\n{}",
            if finished {
                "finished in"
            } else {
                "did not finish in"
            },
            out.describe()
        );
    }
    for (name, held) in [("silent", silent), ("half-handshake", half)] {
        assert!(
            held.join().expect("held connection thread"),
            "the gateway left the {name} connection open after it exited"
        );
    }
    let log = gateway.stderr();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert!(
        status.success(),
        "gateway did not exit 0 after SIGTERM ({status}):\n{log}"
    );

    // The whole trail: one outcome per connection, in order.
    let records = read_audit(&gateway.audit_log);
    let mut sessions: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for record in &records {
        let event = record["event"].as_str().unwrap_or_default();
        if event.starts_with("session.") {
            let id = record["session_id"]
                .as_str()
                .unwrap_or_else(|| panic!("session record without session_id: {record}"));
            sessions.entry(id.to_owned()).or_default().push(record);
        } else {
            assert_eq!(
                event, "gateway.reload",
                "unexpected record in the trail: {record}"
            );
        }
    }
    let reloads = events(&records, "gateway.reload").len();
    assert_eq!(reloads, 1, "want one reload record:\n{}", show(&records));
    for (id, trail) in &sessions {
        let shape: Vec<&str> = trail
            .iter()
            .map(|r| r["event"].as_str().unwrap_or_default())
            .collect();
        let whole = matches!(
            shape.as_slice(),
            ["session.denied"] | ["session.start", "session.end"]
        );
        assert!(
            whole,
            "session {id} has records {shape:?}, want one denied or a start then an end:\n{}",
            show(trail.iter().copied())
        );
        if let [start, end] = trail.as_slice() {
            for field in ["user", "service", "peer", "cert_serial"] {
                assert_eq!(
                    start[field], end[field],
                    "session {id}'s start and end disagree on {field}"
                );
            }
        }
    }

    // As many sessions as connections, and each kind where it belongs.
    let phase2 = 4 + 2; // four psql sessions and two held connections
    let made = attempts.len() + 1 + phase2; // + bob's long session
    assert_eq!(
        sessions.len(),
        made,
        "the test made {made} connections but the trail has {} sessions:\n{}",
        sessions.len(),
        show(&records)
    );
    let denied = |reason: &str, user: Option<&str>| {
        events(&records, "session.denied")
            .into_iter()
            .filter(|r| r["reason"] == reason && user.is_none_or(|u| r["user"] == u))
            .count()
    };
    let starts = |user: &str| {
        events(&records, "session.start")
            .into_iter()
            .filter(|r| r["user"] == user)
            .count()
    };
    assert_eq!(
        denied("policy_denied", Some("mallory")),
        count(Kind::Mallory),
        "mallory's refusals:\n{}",
        show(&records)
    );
    assert_eq!(
        starts("alice"),
        count(Kind::Alice) + 4,
        "alice's sessions:\n{}",
        show(&records)
    );
    assert_eq!(
        starts("bob") + denied("policy_denied", Some("bob")),
        count(Kind::Bob) + 1,
        "bob's sessions and refusals:\n{}",
        show(&records)
    );
    assert!(
        starts("bob") > bob_before && denied("policy_denied", Some("bob")) >= bob_after,
        "bob was not let in before the reload and refused after it:\n{}",
        show(&records)
    );
    assert_eq!(starts("mallory"), 0, "mallory got in:\n{}", show(&records));

    // Connections the gateway saw directly are found by their address. Over a thousand
    // connections, the kernel may hand the same local port to two of them in turn (a
    // client that did not close first keeps no TIME_WAIT), so the records of one
    // address are matched against all of our attempts from it. The agents' sessions
    // share the address space but always carry a user; these never do, as the
    // gateway refused them before it knew one.
    // The two held mid-handshake at SIGTERM outlive the 5 s drain (the handshake
    // timeout is 10 s), so the drain deadline itself refuses them.
    let unnamed = from_peer(&records, SocketAddr::from(([0, 0, 0, 0], 0)));
    assert!(
        unnamed.is_empty(),
        "records whose peer address the gateway could not read:\n{}",
        show(unnamed)
    );
    let mut raw: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    let direct = attempts.iter().filter_map(|a| {
        let what = format!("{:?}", a.outcome.kind);
        a.outcome.local.map(|local| (what, local))
    });
    for (what, local) in direct.chain([
        ("held silent".to_owned(), silent_local),
        ("held half-handshake".to_owned(), half_local),
    ]) {
        raw.entry(local).or_default().push(what);
    }
    for (local, whats) in &raw {
        let mut mine: Vec<&Value> = from_peer(&records, *local)
            .into_iter()
            .filter(|r| r.get("user").is_none())
            .collect();
        let all = show(mine.iter().copied());
        assert_eq!(
            mine.len(),
            whats.len(),
            "want one record for each of our {whats:?} clients at {local}, got:\n{all}"
        );
        for what in whats {
            let fits = |r: &&Value| {
                let reason = r["reason"].as_str().unwrap_or_default();
                r["event"] == "session.denied"
                    && match what.as_str() {
                        "ForeignCa" => reason == "unknown_ca",
                        "held silent" | "held half-handshake" => reason == "shutdown",
                        _ => matches!(reason, "handshake_failed" | "handshake_timeout"),
                    }
            };
            let found = mine.iter().position(fits).unwrap_or_else(|| {
                panic!("no fitting session.denied for the {what} client at {local}:\n{all}")
            });
            mine.swap_remove(found);
        }
    }

    // How the admitted sessions ended.
    let close = |reason: &str, user: &str| {
        events(&records, "session.end")
            .into_iter()
            .filter(|r| r["close_reason"] == reason && r["user"] == user)
            .count()
    };
    assert_eq!(
        close("shutdown", "alice"),
        2,
        "want the two long sessions cut at the drain deadline:\n{}",
        show(&records)
    );
    // bob's long session, and any short one the reload caught mid-way.
    assert!(
        close("policy_changed", "bob") >= 1
            && close("policy_changed", "bob")
                + close("client_closed", "bob")
                + close("upstream_closed", "bob")
                == starts("bob"),
        "want bob's long session closed by the reload and the others ended on their \
         own:\n{}",
        show(&records)
    );
    // psql sends Terminate and closes; PostgreSQL may close its end first.
    assert_eq!(
        close("client_closed", "alice") + close("upstream_closed", "alice"),
        count(Kind::Alice) + 2,
        "alice's short sessions and the two that finished during the drain must end \
         on their own:\n{}",
        show(&records)
    );

    // And the chain over all of it is whole.
    let mut verify = Command::new(BIN);
    verify.arg("audit").arg("verify").arg(&gateway.audit_log);
    let out = run_bounded(verify, CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "audit verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop((alice_agent, bob_agent, mallory_agent));
}
