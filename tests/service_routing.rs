//! Which service a session reaches: SNI names it; an unknown name or an upstream that
//! does not answer is a refusal with its own reason; a client without SNI reaches the
//! only service there is.

mod common;

use std::io::{Read, Write};

use common::*;

/// psql through an agent with alice's certificate must fail, leaving exactly one
/// `session.denied` with `reason`.
fn psql_is_refused(gateway: Gateway, pki: &Pki, service: &str, reason: &str) {
    let alice = pki.login("alice", &["dba"]);
    let agent = Agent::start(pki, &gateway, service, &alice);

    let out = psql(agent.port, pki, &alice, "alice", "SELECT current_user");

    assert!(
        !out.status.success(),
        "psql got through:\n{}",
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
    assert_eq!(record["reason"], reason, "wrong reason: {record}");
    assert_eq!(record["user"], "alice", "identity not recorded: {record}");
}

#[test]
fn unknown_service_is_refused_as_unknown_service() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));

    psql_is_refused(gateway, &pki, "nosuch", "unknown_service");
}

#[test]
fn upstream_that_is_down_is_refused_as_upstream_unavailable() {
    let pki = Pki::new();
    // A socket bound but never listening: connecting to its port is refused, and no
    // other test can take the port while we hold it.
    let closed =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    closed
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("binding a loopback port");
    let closed = closed
        .local_addr()
        .expect("bound address")
        .as_socket()
        .expect("an IP address");
    let service = service_toml(SERVICE, &closed.to_string(), &["alice"], &[]);
    let gateway = Gateway::start(&pki, &service);

    psql_is_refused(gateway, &pki, SERVICE, "upstream_unavailable");
}

#[test]
fn client_without_sni_reaches_the_only_service() {
    let pki = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let alice = pki.login("alice", &["dba"]);
    let mut config = (*tls_client(&pki.ca_crt, Some(&alice))).clone();
    config.enable_sni = false;

    let (local, mut stream, handshake) =
        tls_handshake(gateway.addr, std::sync::Arc::new(config), "localhost");
    assert!(
        handshake.is_ok(),
        "handshake without SNI failed: {handshake:?}"
    );
    stream
        .write_all(&SSL_REQUEST)
        .expect("sending SSLRequest through the tunnel");
    let mut answer = [0u8; 1];
    let read = stream.read(&mut answer);

    assert!(
        matches!(read, Ok(1)) && answer[0] == b'S',
        "PostgreSQL did not answer the SSLRequest through the tunnel: {read:?} {answer:?}\n\
         gateway stderr:\n{}",
        gateway.stderr()
    );
    drop(stream);
    let records = gateway.wait_for_audit("our session.start", |r| {
        from_peer(r, local)
            .iter()
            .any(|r| r["event"] == "session.start")
    });
    let start = from_peer(&records, local)[0];
    assert_eq!(start["service"], SERVICE, "wrong service: {start}");
}
