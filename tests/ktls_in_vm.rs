//! The kernel TLS + splice pump against the kernel's real TLS layer: a gateway-side
//! session (our handshake, `pump::ktls::hand_off`, `pump::ktls::pump_ktls`) between a
//! rustls client and a plain upstream, for each TLS 1.3 cipher suite, with close_notify
//! and a client KeyUpdate.
//!
//! This machine's kernel has no kTLS, so these tests are ignored in `cargo test`; they
//! run inside a Debian kernel under qemu, started by `scripts/ktls-vm`, which runs this
//! binary with `--ignored`. Each test prints one `RESULT` line the script echoes. Inside
//! the VM there is loopback only; certificates are made by our own CA code in memory.
//! The client is rustls' buffered connection on a blocking-free socket loop: it is the
//! peer, not the code under test, and `refresh_traffic_keys` is only offered there.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use pgtunnel::audit::CloseReason;
use pgtunnel::pki::{Ca, IssuedCert, Validity};
use pgtunnel::pump::ktls::{KernelKeys, hand_off, pump_ktls};
use pgtunnel::pump::{PumpEnd, PumpError, PumpStats, Side, StopSignal};
use pgtunnel::sys::uring::{self, Runtime, Socket};
use pgtunnel::tls::handshake::handshake;
use pgtunnel::tls::record::RecordError;
use pgtunnel::tls::tickets::RotatingTicketer;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore,
    ServerConfig,
};
use sha2::{Digest, Sha256};

/// Everything in the VM runs under TCG emulation, far slower than the host.
const DEADLINE: Duration = Duration::from_secs(120);

/// Payload each way in the per-suite test: 2 MiB, so that many full records, pipe
/// refills and full socket buffers happen.
const BULK: usize = 2 << 20;

#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn ktls_probe_accepts_this_kernel() {
    let result = pgtunnel::sys::ktls::probe();
    println!("RESULT probe on Linux {}: {:?}", kernel_release(), result);
    assert_eq!(result, Ok(()), "the VM's kernel has the tls module loaded");
}

#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn ktls_session_moves_data_both_ways_with_aes_128_gcm() {
    bulk_both_ways(CipherSuite::TLS13_AES_128_GCM_SHA256);
}

#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn ktls_session_moves_data_both_ways_with_aes_256_gcm() {
    bulk_both_ways(CipherSuite::TLS13_AES_256_GCM_SHA384);
}

#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn ktls_session_moves_data_both_ways_with_chacha20_poly1305() {
    bulk_both_ways(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
}

/// The client sends, then close_notify; the upstream answers only after it has seen end
/// of stream, so the answer travels on the half that is still open.
#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn client_close_notify_ends_one_direction_and_the_answer_still_arrives() {
    let started = Instant::now();
    let pki = Pki::new();
    let request = pattern(256 << 10, 7);
    let (gateway, upstream_rx) = start(&pki, Upstream::DigestAfterEof);
    let mut client = Client::connect(gateway.addr, &pki, None);

    let mut received = Vec::new();
    let end = client
        .drive(&request, true, &mut received, |_, _| false)
        .expect("client exchange");

    let upstream = upstream_rx.recv_timeout(DEADLINE).expect("upstream result");
    assert_eq!(
        upstream.received_sha256,
        sha256(&request),
        "upstream must get the request unchanged"
    );
    assert_eq!(
        received,
        sha256(&request).to_vec(),
        "the digest sent after end of stream must reach the client"
    );
    assert_eq!(
        end,
        PeerEnd::CloseNotify,
        "the gateway closes with close_notify"
    );
    let outcome = gateway.outcome();
    assert!(
        matches!(outcome.end, PumpEnd::Closed { first: Side::Tls }),
        "the client closed first, got {:?}",
        outcome.end
    );
    println!(
        "RESULT close_notify: client half-closed after {} KiB, answer arrived, gateway {:?}, {:.1}s",
        request.len() >> 10,
        outcome.end,
        started.elapsed().as_secs_f64()
    );
}

/// rustls' `refresh_traffic_keys` sends KeyUpdate(update_requested). Linux 6.14 and
/// later take the new keys and the session goes on; older kernels cannot, and the
/// session must end cleanly: close_notify, `key_update_unsupported`, and nothing sent
/// after the KeyUpdate forwarded as garbage.
#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn client_key_update_rekeys_or_closes_with_key_update_unsupported() {
    let started = Instant::now();
    let pki = Pki::new();
    let before = pattern(200 << 10, 3);
    let after = pattern(100 << 10, 4);
    let (gateway, upstream_rx) = start(&pki, Upstream::Echo);
    let mut client = Client::connect(gateway.addr, &pki, None);

    let mut echoed = Vec::new();
    let end = client
        .drive(&before, false, &mut echoed, |got, _| {
            got.len() >= before.len()
        })
        .expect("exchange before the KeyUpdate");
    assert_eq!(
        end,
        PeerEnd::Open,
        "the session is open before the KeyUpdate"
    );
    assert!(echoed == before, "echo before the KeyUpdate must match");

    client
        .conn
        .refresh_traffic_keys()
        .expect("rustls queues a KeyUpdate");
    let mut echoed = Vec::new();
    let end = client
        .drive(&after, false, &mut echoed, |got, _| {
            got.len() >= after.len()
        })
        .expect("exchange after the KeyUpdate");

    let rekey_supported = kernel_at_least(6, 14);
    let outcome = if rekey_supported {
        assert!(
            echoed == after,
            "after re-keying, {} of {} echoed bytes came back (or differ)",
            echoed.len(),
            after.len()
        );
        let mut rest = Vec::new();
        client
            .drive(&[], true, &mut rest, |_, _| false)
            .expect("closing after the KeyUpdate");
        let outcome = gateway.outcome();
        assert!(
            matches!(outcome.end, PumpEnd::Closed { .. }),
            "a re-keyed session ends normally, got {:?}",
            outcome.end
        );
        // The client asked for an update too: the gateway must have sent its own
        // KeyUpdate and switched keys, or the echo above would not have decrypted.
        assert_eq!(
            (outcome.rx_rekeys, outcome.tx_rekeys),
            (1, 1),
            "one receive and one transmit re-key"
        );
        outcome
    } else {
        assert_eq!(
            end,
            PeerEnd::CloseNotify,
            "a kernel that cannot re-key must close with close_notify"
        );
        assert!(
            echoed.is_empty(),
            "nothing sent after the KeyUpdate may come back, got {} bytes",
            echoed.len()
        );
        let outcome = gateway.outcome();
        assert!(
            matches!(
                outcome.end,
                PumpEnd::Stopped(CloseReason::KeyUpdateUnsupported)
            ),
            "the session must end with key_update_unsupported, got {:?}",
            outcome.end
        );
        outcome
    };
    let upstream = upstream_rx.recv_timeout(DEADLINE).expect("upstream result");
    let expected: Vec<u8> = if rekey_supported {
        [before.as_slice(), after.as_slice()].concat()
    } else {
        before.clone()
    };
    assert_eq!(
        (upstream.received_len, upstream.received_sha256),
        (expected.len(), sha256(&expected)),
        "upstream must get exactly what was sent under keys the kernel had"
    );
    println!(
        "RESULT KeyUpdate on Linux {}: {} ({:?}, re-keys rx {} tx {}), {:.1}s",
        kernel_release(),
        if rekey_supported {
            "re-keyed both ways, data intact"
        } else {
            "closed cleanly with close_notify"
        },
        outcome.end,
        outcome.rx_rekeys,
        outcome.tx_rekeys,
        started.elapsed().as_secs_f64()
    );
}

/// A record that does not authenticate ends the session as a TLS failure of the
/// client's making, and the client is told bad_record_mac.
#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn a_tampered_record_ends_the_session_with_bad_record_mac() {
    let pki = Pki::new();
    let (gateway, upstream_rx) = start(&pki, Upstream::Echo);
    let mut client = Client::connect(gateway.addr, &pki, None);
    let mut echoed = Vec::new();
    client
        .drive(b"intact", false, &mut echoed, |got, _| got.len() >= 6)
        .expect("exchange before tampering");
    assert_eq!(echoed, b"intact", "the session works before the bad record");

    // An application-data record of the right shape under no key at all.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend(pattern(40, 9));
    client
        .sock
        .write_all(&forged)
        .expect("sending the forged record");
    let mut rest = Vec::new();
    let result = client.drive(&[], false, &mut rest, |_, _| false);

    let outcome = gateway.outcome();
    assert!(
        matches!(
            &outcome.end,
            PumpEnd::Failed {
                side: Side::Tls,
                error: PumpError::Record(RecordError::BadRecordMac),
            }
        ),
        "a forged record is bad_record_mac from the client, got {:?}",
        outcome.end
    );
    let told = match &result {
        Err(err) => err.contains("BadRecordMac") || err.contains("bad_record_mac"),
        Ok(_) => false,
    };
    assert!(
        told,
        "the client must receive the bad_record_mac alert, got {result:?}"
    );
    let upstream = upstream_rx.recv_timeout(DEADLINE).expect("upstream result");
    assert_eq!(
        upstream.received_len, 6,
        "nothing forged reaches the upstream"
    );
    println!(
        "RESULT tampered record: {:?}, client told: {result:?}",
        outcome.end
    );
}

/// The session's owner stops it (revocation, expiry, shutdown): the client gets a real
/// close_notify from the kernel, and the reason is the owner's.
#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn a_session_stopped_by_its_owner_ends_with_close_notify() {
    let pki = Pki::new();
    let (gateway, _upstream_rx) = start(&pki, Upstream::Echo);
    let mut client = Client::connect(gateway.addr, &pki, None);
    let mut echoed = Vec::new();
    client
        .drive(b"still here", false, &mut echoed, |got, _| got.len() >= 10)
        .expect("exchange before the stop");
    assert_eq!(echoed, b"still here", "the session works before the stop");

    gateway.stop.store(true, Ordering::Release);
    let mut rest = Vec::new();
    let end = client
        .drive(&[], false, &mut rest, |_, _| false)
        .expect("client after the stop");
    assert_eq!(
        end,
        PeerEnd::CloseNotify,
        "a stopped session says close_notify"
    );
    let outcome = gateway.outcome();
    assert!(
        matches!(outcome.end, PumpEnd::Stopped(CloseReason::Revoked)),
        "the owner's reason ends the session, got {:?}",
        outcome.end
    );
    println!("RESULT owner stop: {:?}, client saw {end:?}", outcome.end);
}

fn bulk_both_ways(suite: CipherSuite) {
    let started = Instant::now();
    let pki = Pki::new();
    let upload = pattern(BULK, 1);
    let download = pattern(BULK + 12345, 2);
    let (gateway, upstream_rx) = start(&pki, Upstream::SinkAndSend(download.clone()));
    let mut client = Client::connect(gateway.addr, &pki, Some(suite));
    let negotiated = client.conn.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(negotiated, Some(suite), "the client forces one suite");

    let mut received = Vec::new();
    let end = client
        .drive(&upload, true, &mut received, |_, _| false)
        .expect("client exchange");

    let upstream = upstream_rx.recv_timeout(DEADLINE).expect("upstream result");
    let outcome = gateway.outcome();
    assert_eq!(
        (upstream.received_len, upstream.received_sha256),
        (upload.len(), sha256(&upload)),
        "upstream must get the client's bytes unchanged"
    );
    assert_eq!(
        (received.len(), sha256(&received)),
        (download.len(), sha256(&download)),
        "the client must get upstream's bytes unchanged"
    );
    assert_eq!(
        end,
        PeerEnd::CloseNotify,
        "the gateway ends its direction with close_notify"
    );
    assert!(
        matches!(outcome.end, PumpEnd::Closed { .. }),
        "both sides closed cleanly, got {:?}",
        outcome.end
    );
    assert_eq!(
        outcome.tx_seq_at_hand_off, 1,
        "the session ticket went out under the first key, so the kernel continues at 1"
    );
    assert_eq!(
        (outcome.stats.from_tls, outcome.stats.to_tls),
        (upload.len() as u64, download.len() as u64),
        "the pump counts the payload each way"
    );
    println!(
        "RESULT {suite:?}: {} KiB up, {} KiB down, sha256 equal both ways, close_notify both ways, {:?}, {:.1}s",
        upload.len() >> 10,
        download.len() >> 10,
        outcome.end,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// The gateway side: our handshake, the hand-off, the kTLS pump.
// ---------------------------------------------------------------------------------------

struct Outcome {
    end: PumpEnd,
    stats: PumpStats,
    /// How often the pump asked rustls for the next receive and transmit secrets.
    rx_rekeys: usize,
    tx_rekeys: usize,
    /// The transmit record sequence number the kernel started from.
    tx_seq_at_hand_off: u64,
}

/// rustls' kernel connection, with a count of the re-keys the pump asked for.
struct Counting<K> {
    inner: K,
    rx: usize,
    tx: usize,
}

impl<K: KernelKeys> KernelKeys for Counting<K> {
    fn next_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.rx += 1;
        self.inner.next_rx_secret()
    }
    fn next_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.tx += 1;
        self.inner.next_tx_secret()
    }
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error> {
        self.inner.new_session_ticket(payload)
    }
}

/// Starts the upstream and a one-session gateway in front of it; returns the gateway's
/// outcome channel, the upstream's result channel, and the address to connect to.
/// A one-session gateway: where to connect, how to stop it, and how it ended.
struct Gateway {
    addr: SocketAddr,
    /// Set it to make the session's owner stop it (as revocation does).
    stop: Arc<AtomicBool>,
    outcome: mpsc::Receiver<Result<Outcome, String>>,
}

impl Gateway {
    fn outcome(&self) -> Outcome {
        self.outcome
            .recv_timeout(DEADLINE)
            .expect("gateway result in time")
            .expect("gateway session")
    }
}

/// Starts the upstream and a one-session gateway in front of it.
fn start(pki: &Pki, upstream: Upstream) -> (Gateway, mpsc::Receiver<UpstreamResult>) {
    let upstream_listener = TcpListener::bind("127.0.0.1:0").expect("upstream listener");
    let upstream_addr = upstream_listener.local_addr().unwrap();
    let upstream_rx = run_upstream(upstream_listener, upstream);

    let listener = TcpListener::bind("127.0.0.1:0").expect("gateway listener");
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, outcome) = mpsc::channel();
    let flag = stop.clone();
    thread::spawn(move || {
        let _ = tx.send(gateway_session(listener, upstream_addr, config, flag));
    });
    let gateway = Gateway {
        addr,
        stop,
        outcome,
    };
    (gateway, upstream_rx)
}

fn gateway_session(
    listener: TcpListener,
    upstream: SocketAddr,
    config: Arc<ServerConfig>,
    stop_flag: Arc<AtomicBool>,
) -> Result<Outcome, String> {
    let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let runtime = Runtime::new().map_err(|e| format!("io_uring: {e}"))?;
    runtime
        .block_on(async move {
            let sock = Socket::from_owned(OwnedFd::from(stream));
            let conn = UnbufferedServerConnection::new(config).map_err(|e| e.to_string())?;
            let established = handshake(sock, conn)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let tx_seq_at_hand_off = established.secrets.tx.0;
            hand_off(&established.sock, established.secrets)
                .map_err(|e| format!("kTLS hand-off: {e}"))?;
            let upstream = TcpStream::connect(upstream).map_err(|e| format!("upstream: {e}"))?;
            upstream.set_nodelay(true).map_err(|e| e.to_string())?;
            let plain = Socket::from_owned(OwnedFd::from(upstream));
            let stop = Rc::new(StopSignal::default());
            let owner = stop.clone();
            uring::spawn(async move {
                while !stop_flag.load(Ordering::Acquire) {
                    uring::sleep(Duration::from_millis(10)).await;
                }
                owner.stop(CloseReason::Revoked);
            });
            let mut kernel = Counting {
                inner: established.kernel,
                rx: 0,
                tx: 0,
            };
            let (end, stats) = pump_ktls(&established.sock, &mut kernel, &plain, &stop).await;
            Ok(Outcome {
                end,
                stats,
                rx_rekeys: kernel.rx,
                tx_rekeys: kernel.tx,
                tx_seq_at_hand_off,
            })
        })
        .map_err(|e| format!("runtime: {e}"))?
}

// ---------------------------------------------------------------------------------------
// The upstream: a plain TCP server standing in for PostgreSQL.
// ---------------------------------------------------------------------------------------

enum Upstream {
    /// Reads everything while sending these bytes, then closes.
    SinkAndSend(Vec<u8>),
    /// Sends back what it reads, until end of stream.
    Echo,
    /// Reads everything, then sends the SHA-256 of it and closes.
    DigestAfterEof,
}

struct UpstreamResult {
    received_len: usize,
    received_sha256: [u8; 32],
}

fn run_upstream(listener: TcpListener, mode: Upstream) -> mpsc::Receiver<UpstreamResult> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("upstream accept");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut hasher = Sha256::new();
        let mut received_len = 0;
        let mut buf = vec![0u8; 64 << 10];
        let sender = match &mode {
            Upstream::SinkAndSend(data) => {
                let mut writer = stream.try_clone().unwrap();
                let data = data.clone();
                Some(thread::spawn(move || {
                    writer.write_all(&data).expect("upstream send");
                    writer.shutdown(Shutdown::Write).expect("upstream shutdown");
                }))
            }
            _ => None,
        };
        loop {
            let n = match stream.read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(err) => panic!("upstream read: {err}"),
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            received_len += n;
            if let Upstream::Echo = mode {
                // The gateway may be gone (an unsupported KeyUpdate): stop echoing then.
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        let received_sha256: [u8; 32] = hasher.finalize().into();
        if let Upstream::DigestAfterEof = mode {
            stream.write_all(&received_sha256).expect("upstream digest");
        }
        let _ = stream.shutdown(Shutdown::Write);
        if let Some(sender) = sender {
            sender.join().expect("upstream sender");
        }
        let _ = tx.send(UpstreamResult {
            received_len,
            received_sha256,
        });
    });
    rx
}

// ---------------------------------------------------------------------------------------
// The client: rustls' buffered connection, driven without blocking.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerEnd {
    Open,
    CloseNotify,
    /// End of stream without close_notify.
    Eof,
}

struct Client {
    conn: ClientConnection,
    sock: TcpStream,
    shut: bool,
}

impl Client {
    fn connect(addr: SocketAddr, pki: &Pki, suite: Option<CipherSuite>) -> Client {
        let mut sock = TcpStream::connect(addr).expect("connect to the gateway");
        sock.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn =
            ClientConnection::new(pki.client_config(suite), name).expect("client connection");
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).expect("client handshake");
        }
        sock.set_nonblocking(true).unwrap();
        Client {
            conn,
            sock,
            shut: false,
        }
    }

    /// Sends `data` (then close_notify and FIN, if `close`) while receiving into
    /// `received`, until the peer has closed or `enough` says so.
    fn drive(
        &mut self,
        data: &[u8],
        close: bool,
        received: &mut Vec<u8>,
        enough: impl Fn(&[u8], PeerEnd) -> bool,
    ) -> Result<PeerEnd, String> {
        let deadline = Instant::now() + DEADLINE;
        let mut sent = 0;
        let mut close_notify_queued = false;
        let mut peer = PeerEnd::Open;
        let mut tcp_eof = false;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out: sent {sent} of {}, received {}",
                    data.len(),
                    received.len()
                ));
            }
            let mut progress = false;

            // Plaintext in small steps, so that rustls' send buffer stays short.
            if sent < data.len() && !self.conn.wants_write() {
                let end = (sent + (64 << 10)).min(data.len());
                sent += self.conn.writer().write(&data[sent..end]).unwrap_or(0);
                progress = true;
            }
            if close && sent == data.len() && !close_notify_queued {
                self.conn.send_close_notify();
                close_notify_queued = true;
            }
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(_) => progress = true,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    // The gateway is gone; what it said last is still to be read.
                    Err(_) => {
                        sent = data.len();
                        self.shut = true;
                        break;
                    }
                }
            }
            if close && sent == data.len() && !self.shut && !self.conn.wants_write() {
                let _ = self.sock.shutdown(Shutdown::Write);
                self.shut = true;
            }

            if !tcp_eof {
                match self.conn.read_tls(&mut self.sock) {
                    Ok(0) => tcp_eof = true,
                    Ok(_) => {
                        progress = true;
                        self.conn
                            .process_new_packets()
                            .map_err(|e| format!("client TLS: {e}"))?;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == io::ErrorKind::ConnectionReset => tcp_eof = true,
                    Err(err) => return Err(format!("client read: {err}")),
                }
            }
            loop {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => {
                        peer = PeerEnd::CloseNotify;
                        break;
                    }
                    Ok(n) => {
                        received.extend_from_slice(&buf[..n]);
                        progress = true;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                        peer = PeerEnd::Eof;
                        break;
                    }
                    Err(err) => return Err(format!("client plaintext: {err}")),
                }
            }

            if enough(received, peer) {
                return Ok(peer);
            }
            let done_sending = sent == data.len() && (!close || self.shut);
            if peer != PeerEnd::Open && done_sending {
                return Ok(peer);
            }
            if tcp_eof && peer == PeerEnd::Open {
                return Ok(PeerEnd::Eof);
            }
            if !progress {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Certificates, from our own CA code.
// ---------------------------------------------------------------------------------------

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server: IssuedCert,
    login: IssuedCert,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::init(dir.path()).expect("making a CA");
        let hour = Duration::from_secs(3600);
        let server = ca
            .issue_server(
                &["localhost".to_string()],
                &["127.0.0.1".parse().unwrap()],
                Validity::starting_now(hour),
            )
            .expect("server certificate");
        let login = ca
            .issue_login("alice", &[], Validity::starting_now(hour))
            .expect("login certificate");
        Pki {
            _dir: dir,
            ca,
            server,
            login,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.cert_der().clone()).expect("our root");
        roots
    }

    /// The gateway's real configuration, session tickets on: the ticket is the one
    /// record the gateway sends after its Finished, so the kernel must start the
    /// transmit sequence at 1, not 0.
    fn server_config(&self) -> Arc<ServerConfig> {
        let ticketer = RotatingTicketer::random(Duration::from_secs(3600)).expect("ticket key");
        let config = pgtunnel::tls::server_config(
            vec![self.server.cert_der().clone()],
            self.server.private_key_der(),
            self.roots(),
            Vec::new(),
            Some(Arc::new(ticketer)),
        )
        .expect("server config");
        assert!(
            config.enable_secret_extraction,
            "the kTLS hand-off needs the traffic secrets"
        );
        Arc::new(config)
    }

    /// A client offering only `suite`, if given.
    fn client_config(&self, suite: Option<CipherSuite>) -> Arc<ClientConfig> {
        let mut provider = (*pgtunnel::tls::provider()).clone();
        if let Some(suite) = suite {
            provider.cipher_suites.retain(|s| s.suite() == suite);
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(
                vec![self.login.cert_der().clone()],
                self.login.private_key_der(),
            )
            .expect("login certificate");
        config.alpn_protocols = vec![pgtunnel::tls::ALPN_PGTUNNEL.to_vec()];
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            // xorshift32: cheap bytes that no two offsets or seeds share by accident.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

/// The whole gateway, as `pgtunnel gateway` runs it, with `ktls = "require"`: it loads
/// the config, probes the kernel, serves one authorized session through the kernel TLS
/// pump, and its `session.end` record says so. The tests above drive the pump directly;
/// this one proves the gateway chooses it.
#[test]
#[ignore = "needs kernel TLS: run scripts/ktls-vm"]
fn gateway_with_ktls_require_carries_a_session_in_the_kernel_and_audits_the_pump() {
    let started = Instant::now();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = pki
        .server
        .write(&dir.path().join("server"))
        .expect("server files");
    std::fs::write(dir.path().join("ca.crt"), pki.ca.cert_pem()).expect("ca.crt");
    let upstream_listener = TcpListener::bind("127.0.0.1:0").expect("upstream listener");
    let upstream_addr = upstream_listener.local_addr().unwrap();
    let upstream_rx = run_upstream(upstream_listener, Upstream::Echo);
    // A free port for the gateway: its workers bind their own SO_REUSEPORT sockets.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let audit = dir.path().join("audit.jsonl");
    let config_path = dir.path().join("gateway.toml");
    // The service is named as the client's SNI, which is the server certificate's name.
    let config = format!(
        "[gateway]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\n\
         client_ca = \"ca.crt\"\naudit_log = \"audit.jsonl\"\nworkers = 1\nktls = \"require\"\n\n\
         [[service]]\nname = \"localhost\"\nupstream = \"{upstream_addr}\"\nallow_users = [\"alice\"]\n"
    );
    std::fs::write(&config_path, config).expect("gateway.toml");
    let config = pgtunnel::config::GatewayConfig::load(&config_path).expect("config loads");
    let shared = pgtunnel::gateway::Shared::load(config).expect("ktls = require loads here");
    assert_eq!(shared.data_path, pgtunnel::gateway::DataPath::KernelTls);
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(pgtunnel::gateway::run(shared).map_err(|e| e.to_string()));
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the gateway never listened");
        thread::sleep(Duration::from_millis(20));
    }

    let request = pattern(1 << 20, 9);
    let mut client = Client::connect(addr, &pki, None);
    let mut received = Vec::new();
    let end = client
        .drive(&request, true, &mut received, |_, _| false)
        .expect("client exchange");
    let upstream = upstream_rx.recv_timeout(DEADLINE).expect("upstream result");
    assert_eq!(
        upstream.received_sha256,
        sha256(&request),
        "upstream got the bytes"
    );
    assert_eq!(
        sha256(&received),
        sha256(&request),
        "the echo came back whole"
    );
    assert_eq!(
        end,
        PeerEnd::CloseNotify,
        "the gateway closed with close_notify"
    );

    // The probe connection above is a session too (refused: it sent no handshake), so
    // wait for the end record of ours, then stop the gateway as an operator would.
    let end_record = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["event"] == "session.end");
        if let Some(record) = found {
            break record;
        }
        assert!(Instant::now() < deadline, "no session.end in:\n{text}");
        thread::sleep(Duration::from_millis(50));
    };
    // The gateway registered SIGTERM with signal-hook, so raising it here drains it.
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).expect("raise SIGTERM");
    let stopped = done_rx
        .recv_timeout(DEADLINE)
        .expect("the gateway stops on SIGTERM");
    assert_eq!(stopped, Ok(()), "the gateway exits cleanly");
    assert_eq!(
        end_record["pump"], "ktls",
        "the session was not carried by kTLS: {end_record}"
    );
    assert_eq!(end_record["user"], "alice", "{end_record}");
    assert_eq!(
        (
            end_record["bytes_from_client"].as_u64(),
            end_record["bytes_to_client"].as_u64()
        ),
        (Some(request.len() as u64), Some(request.len() as u64)),
        "byte counts: {end_record}"
    );
    println!(
        "RESULT gateway: ktls = require, session.end pump {}, close_reason {}, {:.1}s",
        end_record["pump"],
        end_record["close_reason"],
        started.elapsed().as_secs_f64()
    );
}
