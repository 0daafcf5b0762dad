//! Clients whose certificate the gateway must refuse during the TLS handshake: none at
//! all, one from another CA, an expired one, one not valid yet, and one that chains to
//! the CA but is not for client authentication (the gateway's own server certificate,
//! EKU serverAuth only, presented as a login certificate). Each attempt is a
//! raw TLS 1.3 client written here (SNI `main`, ALPN `pgtunnel`), because the agent
//! itself refuses to start with some of these certificates (see agent_startup.rs).
//! Each must leave exactly one `session.denied` with the right reason, and nothing
//! else: no session reaches PostgreSQL.

mod common;

use common::*;

/// Starts a gateway in front of a real cluster, makes one raw TLS attempt with the
/// certificate `client_cert` picks (from the gateway's CA or another one), and checks
/// the refusal and the single audit record.
fn refused_with(reason: &str, client_cert: impl FnOnce(&Pki, &Pki) -> Option<CertPair>) {
    let pki = Pki::new();
    let other_ca = Pki::new();
    let cluster = start_cluster(&pki, &["alice"]);
    let gateway = Gateway::start(&pki, &main_service(&cluster));
    let cert = client_cert(&pki, &other_ca);

    let attempt = tls_attempt(
        gateway.addr,
        tls_client(&pki.ca_crt, cert.as_ref()),
        SERVICE,
    );

    assert!(
        attempt.refused(),
        "gateway let the {reason} client through: {attempt:?}"
    );
    let records = gateway.stop_ok();
    assert_eq!(
        records.len(),
        1,
        "want exactly one audit record for one refused attempt:\n{}",
        show(&records)
    );
    let record = &records[0];
    assert_eq!(record["event"], "session.denied", "not a refusal: {record}");
    assert_eq!(record["reason"], reason, "wrong reason: {record}");
    assert_eq!(
        record["peer"],
        attempt.local.to_string().as_str(),
        "record is not for our connection: {record}"
    );
}

#[test]
fn client_without_a_certificate_is_refused_as_no_client_cert() {
    refused_with("no_client_cert", |_, _| None);
}

#[test]
fn certificate_from_another_ca_is_refused_as_unknown_ca() {
    refused_with("unknown_ca", |_, other_ca| {
        Some(other_ca.login("alice", &["dba"]))
    });
}

#[test]
fn expired_certificate_is_refused_as_cert_expired() {
    refused_with("cert_expired", |pki, _| Some(pki.expired_login("alice")));
}

#[test]
fn certificate_not_yet_valid_is_refused_as_cert_not_yet_valid() {
    refused_with("cert_not_yet_valid", |pki, _| {
        Some(pki.future_login("alice"))
    });
}

#[test]
fn server_certificate_presented_as_a_login_certificate_is_refused_as_bad_cert() {
    // It chains to the gateway's CA and is in its validity period; only its purpose is
    // wrong, which rustls reports as InvalidPurpose (tls::deny_reason: bad_cert).
    refused_with("bad_cert", |pki, _| Some(pki.server.clone()));
}
