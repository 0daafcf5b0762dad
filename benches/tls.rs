//! Per-record and per-handshake costs of the TLS data path, in one process, no sockets:
//!
//! - `record/*`: sealing and opening one record with our in-place record layer against
//!   rustls' buffered API doing the same (write, write_tls, read_tls, process, read).
//! - `handshake/*`: a full mutually authenticated TLS 1.3 handshake, client and server in
//!   one thread, and a resumed one (session ticket), through rustls' unbuffered API and
//!   our hand-off.
//!
//! Run: `cargo bench --bench tls` (aws-lc-rs), and
//! `cargo bench --bench tls --no-default-features --features ring` for ring.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgtunnel::pki::{Ca, Validity};
use pgtunnel::tls::handshake::in_memory;
use pgtunnel::tls::record::{HEADER_LEN, Opened, RECORD_OVERHEAD, RecordLayer};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;

struct Fixture {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

fn fixture(tickets: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path()).unwrap();
    let hour = Validity::starting_now(Duration::from_secs(3600));
    let server = ca.issue_server(&["localhost".into()], &[], hour).unwrap();
    let login = ca
        .issue_login(
            "alice",
            &[],
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = tickets.then(|| {
        Arc::new(
            pgtunnel::tls::tickets::RotatingTicketer::random(Duration::from_secs(3600)).unwrap(),
        ) as _
    });
    let server_config = pgtunnel::tls::server_config(
        vec![server.cert_der().clone()],
        server.private_key_der(),
        roots.clone(),
        Vec::new(),
        ticketer,
    )
    .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(pgtunnel::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![login.cert_der().clone()], login.private_key_der())
        .unwrap();
    client.enable_secret_extraction = true;
    Fixture {
        server: Arc::new(server_config),
        client: Arc::new(client),
        _dir: dir,
    }
}

fn name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from("localhost").unwrap()
}

fn records(c: &mut Criterion) {
    let fx = fixture(false);
    let mut group = c.benchmark_group("record");
    for size in [64usize, 16 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        let data = vec![0x5au8; size];

        let pair = in_memory(
            UnbufferedClientConnection::new(fx.client.clone(), name()).unwrap(),
            UnbufferedServerConnection::new(fx.server.clone()).unwrap(),
        )
        .unwrap();
        let mut client = RecordLayer::new(pair.client.0, pair.client.1).unwrap();
        let mut server = RecordLayer::new(pair.server.0, pair.server.1).unwrap();
        let mut record = vec![0u8; size + RECORD_OVERHEAD];
        group.bench_with_input(
            BenchmarkId::new("pgtunnel_in_place", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    record[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&data);
                    let len = client.seal_data(&mut record, size);
                    let opened = server.open(&mut record[..len]).unwrap();
                    assert!(matches!(opened, Opened::Data(_)));
                })
            },
        );

        let (mut rc, mut rs) = buffered_pair(&fx);
        let mut wire = Vec::with_capacity(size + 64);
        let mut out = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("rustls_buffered", size), &size, |b, _| {
            b.iter(|| {
                rc.writer().write_all(&data).unwrap();
                wire.clear();
                while rc.wants_write() {
                    rc.write_tls(&mut wire).unwrap();
                }
                // read_tls takes at most one buffer's worth per call.
                let mut input = &wire[..];
                while !input.is_empty() {
                    rs.read_tls(&mut input).unwrap();
                    rs.process_new_packets().unwrap();
                }
                rs.reader().read_exact(&mut out).unwrap();
            })
        });
    }
    group.finish();
}

/// A connected pair on rustls' buffered API, handshake done.
fn buffered_pair(fx: &Fixture) -> (rustls::ClientConnection, rustls::ServerConnection) {
    let mut client = rustls::ClientConnection::new(fx.client.clone(), name()).unwrap();
    let mut server = rustls::ServerConnection::new(fx.server.clone()).unwrap();
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    (client, server)
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let fx = fixture(false);
    group.bench_function("full_mtls", |b| {
        b.iter(|| {
            in_memory(
                UnbufferedClientConnection::new(fx.client.clone(), name()).unwrap(),
                UnbufferedServerConnection::new(fx.server.clone()).unwrap(),
            )
            .unwrap()
        })
    });

    // Resumption: prime the client's session store with one ticket per iteration's
    // worth of connections (TLS 1.3 tickets are single-use), then measure the resumed
    // handshakes.
    let fx = fixture(true);
    group.bench_function("resumed_mtls", |b| {
        b.iter_batched(
            || {
                let pair = in_memory(
                    UnbufferedClientConnection::new(fx.client.clone(), name()).unwrap(),
                    UnbufferedServerConnection::new(fx.server.clone()).unwrap(),
                )
                .unwrap();
                let mut client = RecordLayer::new(pair.client.0, pair.client.1).unwrap();
                let mut ticket = pair.to_client;
                let len = HEADER_LEN + usize::from(u16::from_be_bytes([ticket[3], ticket[4]]));
                client.open(&mut ticket[..len]).unwrap();
            },
            |()| {
                let pair = in_memory(
                    UnbufferedClientConnection::new(fx.client.clone(), name()).unwrap(),
                    UnbufferedServerConnection::new(fx.server.clone()).unwrap(),
                )
                .unwrap();
                assert!(pair.resumed, "the measured handshake must be a resumption");
                pair
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = records, handshakes
}
criterion_main!(benches);
