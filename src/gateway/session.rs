//! One session from accept to close, in the order of docs/design.md: limits, handshake,
//! identity, service, authorize, upstream, audit, pump, close.
//!
//! Every connection ends in exactly one of two audit shapes: a single `session.denied`
//! (with a reason) or a `session.start` followed by a `session.end`. Nothing a peer sends
//! can make this code panic or stall the worker: every wait has a deadline or a stop
//! signal, and every failure becomes a denied record and a close. Refusals after the
//! handshake are explained in a PostgreSQL ErrorResponse, which psql prints.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use socket2::{Domain, SockAddr, SockRef, Type};

use super::policy::{Decision, authorize};
use super::worker::Worker;
use super::{DataPath, Shared};
use crate::audit::{AuditRecord, CloseReason, DenyReason, Event};
use crate::config::{Service, Upstream};
use crate::pg::wire::{self, SqlState};
use crate::pki::Identity;
use crate::pump::{self, PumpEnd, Side, StopSignal};
use crate::sys::uring::{self, Socket};
use crate::tls::handshake::{self, Established, HandshakeError};
use crate::tls::record::RecordLayer;
use crate::tls::{self};

type ServerRecords = RecordLayer<ServerConnectionData>;

/// Serves one accepted connection to its end.
/// `refuse` is a decision taken at accept (overloaded, audit unavailable): no TLS then.
/// `stop` is this connection's shutdown signal: it cuts the handshake or the wait for
/// PostgreSQL short (a denial, `shutdown`) as well as the pump (an end, `shutdown`).
pub async fn serve(
    worker: &Rc<Worker>,
    sock: Socket,
    session_id: String,
    refuse: Option<DenyReason>,
    stop: Rc<StopSignal>,
) {
    let peer = SockRef::from(sock.as_fd())
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let ctx = Ctx {
        worker,
        session_id: &session_id,
        peer,
        stop,
    };
    if let Some(reason) = refuse {
        // No TLS, no questions: refusing early is what keeps an overloaded worker alive.
        let detail = match reason {
            DenyReason::Overloaded => "worker at its session or handshake cap",
            _ => "the audit log cannot be written",
        };
        ctx.deny(&Refusal::early(reason, detail.to_string()));
        return;
    }
    let _ = SockRef::from(sock.as_fd()).set_tcp_nodelay(true);

    // The snapshot of shared state is taken once, so a reload mid-session never mixes
    // two configurations in one decision.
    let shared = worker.shared.load_full();
    let Some(established) = ctx.handshake(sock, &shared).await else {
        return;
    };
    let Established {
        sock,
        secrets,
        kernel,
        peer_certificates,
        sni,
        ..
    } = established;

    let admitted = match admit(&shared, peer_certificates.as_deref(), sni.as_deref()) {
        Ok(admitted) => admitted,
        Err(refusal) => return ctx.refuse(&sock, secrets, kernel, *refusal).await,
    };
    let upstream = match unless_stopped(&ctx.stop, connect_upstream(&shared, &admitted)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(refusal)) => return ctx.refuse(&sock, secrets, kernel, refusal).await,
        Err(_) => {
            let mut refusal = Refusal::early(DenyReason::Shutdown, SHUTDOWN_DETAIL.into());
            refusal.identity = Some(admitted.identity);
            refusal.service = Some(admitted.service.name);
            refusal.code = SqlState::CANNOT_CONNECT_NOW;
            return ctx.refuse(&sock, secrets, kernel, refusal).await;
        }
    };
    // Only an authorized session with its upstream connected is handed to the kernel:
    // a refusal above is written by our record layer, which then still holds the keys.
    let transport = match shared.data_path {
        DataPath::KernelTls => match pump::ktls::hand_off(&sock, secrets) {
            Ok(()) => Transport::Kernel(kernel),
            Err(err) => {
                // The kernel may already hold one direction's key, so the socket can no
                // longer speak TLS from here: the client only sees the connection close.
                let detail = format!("kernel TLS hand-off failed: {err}");
                tracing::warn!(error = %err, "kernel TLS hand-off failed; session closed");
                let mut refusal = Refusal::early(DenyReason::HandshakeFailed, detail);
                refusal.identity = Some(admitted.identity.clone());
                refusal.service = Some(admitted.service.name.clone());
                return ctx.deny(&refusal);
            }
        },
        DataPath::Userspace { .. } => match RecordLayer::new(secrets, kernel) {
            Ok(records) => Transport::Userspace(records),
            Err(err) => {
                return ctx.deny(&Refusal::early(
                    DenyReason::HandshakeFailed,
                    err.to_string(),
                ));
            }
        },
    };
    ctx.run(&shared, sock, transport, upstream, admitted).await;
}

/// Who protects the TLS records of an authorized session.
enum Transport {
    /// Our record layer, in the userspace pump.
    Userspace(ServerRecords),
    /// The kernel, after `pump::ktls::hand_off`; rustls keeps what it needs for KeyUpdate.
    Kernel(KernelConnection<ServerConnectionData>),
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Userspace(_) => "userspace",
            Transport::Kernel(_) => "ktls",
        }
    }
}

/// An identity allowed on a service.
struct Admitted {
    identity: Identity,
    service: Service,
}

/// A refusal: what the audit record and the client are told.
struct Refusal {
    reason: DenyReason,
    identity: Option<Identity>,
    service: Option<String>,
    detail: String,
    code: SqlState,
}

impl Refusal {
    fn early(reason: DenyReason, detail: String) -> Refusal {
        Refusal {
            reason,
            identity: None,
            service: None,
            detail,
            code: SqlState::INVALID_AUTHORIZATION,
        }
    }
}

/// Steps 3 and 4 of a session: who is this, which service, and may they use it. The
/// checks after the handshake also cover resumed sessions, whose certificate rustls
/// does not verify again.
fn admit(
    shared: &Shared,
    certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    sni: Option<&str>,
) -> Result<Admitted, Box<Refusal>> {
    let leaf = certs.and_then(<[_]>::first).ok_or_else(|| {
        let detail = "no client certificate after the handshake".to_string();
        Box::new(Refusal::early(DenyReason::NoClientCert, detail))
    })?;
    let identity = Identity::from_der(leaf.as_ref())
        .map_err(|err| Box::new(Refusal::early(DenyReason::BadCert, err.to_string())))?;
    let refuse = |reason, detail: String, service: Option<&str>, code| {
        Box::new(Refusal {
            reason,
            identity: Some(identity.clone()),
            service: service.map(str::to_string),
            detail,
            code,
        })
    };
    let auth = SqlState::INVALID_AUTHORIZATION;

    // Short-lived is enforced, not hoped for: a certificate issued for longer than
    // max_cert_lifetime is refused even though it chains and is in its validity period.
    // `ca issue` starts every certificate CLOCK_SKEW in the past, so one issued for
    // exactly the maximum spans that much more; that allowance is not held against it.
    let lifetime = identity.not_after - identity.not_before;
    let max =
        time::Duration::try_from(shared.config.max_cert_lifetime).unwrap_or(time::Duration::MAX);
    let skew = time::Duration::try_from(crate::pki::CLOCK_SKEW).unwrap_or(time::Duration::ZERO);
    if lifetime > max.saturating_add(skew) {
        let detail = format!(
            "certificate lifetime {} exceeds max_cert_lifetime {}",
            crate::pki::human_duration(lifetime),
            crate::pki::human_duration(max)
        );
        return Err(refuse(DenyReason::LifetimeExceedsMax, detail, None, auth));
    }
    let now = time::OffsetDateTime::now_utc();
    if now >= identity.not_after {
        return Err(refuse(
            DenyReason::CertExpired,
            "certificate expired".into(),
            None,
            auth,
        ));
    }
    if shared.is_revoked(&identity.serial_hex) {
        return Err(refuse(
            DenyReason::Revoked,
            "certificate is revoked".into(),
            None,
            auth,
        ));
    }

    // Service by SNI; without SNI, the only service if there is exactly one.
    let service = match sni {
        Some(name) => shared.config.service(name),
        None if shared.config.services.len() == 1 => shared.config.services.first(),
        None => None,
    };
    let Some(service) = service else {
        let detail = match sni {
            Some(name) => format!("no service named {name:?}"),
            None => "no SNI and more than one service".to_string(),
        };
        return Err(refuse(
            DenyReason::UnknownService,
            detail,
            sni,
            SqlState::REJECTED_CONNECTION,
        ));
    };
    if let Decision::Deny(detail) = authorize(&identity, service) {
        return Err(refuse(
            DenyReason::PolicyDenied,
            detail,
            Some(&service.name),
            auth,
        ));
    }
    Ok(Admitted {
        identity,
        service: service.clone(),
    })
}

/// Step 6: the upstream connection, under its deadline.
async fn connect_upstream(shared: &Shared, admitted: &Admitted) -> Result<Socket, Refusal> {
    let upstream = &admitted.service.upstream;
    let detail = match uring::timeout(shared.config.connect_timeout, connect(upstream)).await {
        Ok(Ok(sock)) => return Ok(sock),
        Ok(Err(err)) => format!("{upstream}: {err}"),
        Err(uring::Elapsed) => format!("{upstream}: no answer within the connect timeout"),
    };
    Err(Refusal {
        reason: DenyReason::UpstreamUnavailable,
        identity: Some(admitted.identity.clone()),
        service: Some(admitted.service.name.clone()),
        detail,
        code: SqlState::CANNOT_CONNECT_NOW,
    })
}

/// Why a connection still being admitted at the drain deadline was refused.
const SHUTDOWN_DETAIL: &str = "the gateway is shutting down";

/// Runs `future` to its end unless `stop` is signalled first (then it is dropped, which
/// cancels its ring operations).
async fn unless_stopped<F: Future>(stop: &StopSignal, future: F) -> Result<F::Output, CloseReason> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        stop.poll_stopped(cx).map(Err)
    })
    .await
}

/// What every record of this session shares.
struct Ctx<'a> {
    worker: &'a Rc<Worker>,
    session_id: &'a str,
    peer: SocketAddr,
    /// The connection's shutdown signal (see [`serve`]).
    stop: Rc<StopSignal>,
}

impl Ctx<'_> {
    /// Step 2: the handshake under its deadline; a failure is audited here.
    async fn handshake(
        &self,
        sock: Socket,
        shared: &Arc<Shared>,
    ) -> Option<Established<ServerConnectionData>> {
        let conn = match UnbufferedServerConnection::new(shared.server_tls.clone()) {
            Ok(conn) => conn,
            Err(err) => {
                self.deny(&Refusal::early(
                    DenyReason::HandshakeFailed,
                    err.to_string(),
                ));
                return None;
            }
        };
        let result = {
            let _guard = self.worker.handshake_guard();
            let handshake = uring::timeout(
                shared.config.handshake_timeout,
                handshake::handshake(sock, conn),
            );
            unless_stopped(&self.stop, handshake).await
        };
        let (reason, detail) = match result {
            Ok(Ok(Ok(established))) => return Some(established),
            Ok(Ok(Err(HandshakeError::Tls(err)))) => {
                (tls::deny_reason(&err), Some(err.to_string()))
            }
            Ok(Ok(Err(err))) => (DenyReason::HandshakeFailed, Some(err.to_string())),
            Ok(Err(uring::Elapsed)) => (DenyReason::HandshakeTimeout, None),
            // Dropping the handshake closes the socket: no alert, the client is mid-way.
            Err(_) => (DenyReason::Shutdown, Some(SHUTDOWN_DETAIL.into())),
        };
        let mut refusal = Refusal::early(reason, String::new());
        refusal.detail = detail.unwrap_or_default();
        self.deny(&refusal);
        None
    }

    /// Steps 5, 7 and 8: the start record, the pump, the end record.
    async fn run(
        &self,
        shared: &Shared,
        tls: Socket,
        mut transport: Transport,
        upstream: Socket,
        admitted: Admitted,
    ) {
        let Admitted { identity, service } = admitted;
        let started = Instant::now();
        let registration = self.worker.register(
            &identity,
            &service.name,
            shared.generation,
            self.stop.clone(),
        );
        let start = AuditRecord::new(Event::SessionStart, self.session_id, self.peer)
            .identity(&identity)
            .service(Some(&service.name));
        if let Err(err) = self.worker.audit.record(start) {
            // Fail closed: a session that cannot be recorded does not run.
            tracing::error!(error = %err, "audit record not queued: refusing session");
            let msg = wire::fatal_error(
                SqlState::CANNOT_CONNECT_NOW,
                "pgtunnel: audit log unavailable",
                None,
            );
            let deadline = Duration::from_secs(1);
            let _ = match &mut transport {
                Transport::Userspace(records) => {
                    uring::timeout(deadline, pump::farewell(&tls, records, &msg)).await
                }
                Transport::Kernel(_) => {
                    uring::timeout(deadline, pump::ktls::farewell(&tls, msg)).await
                }
            };
            return;
        }
        let pump_name = transport.name();
        tracing::info!(user = %identity.user, service = %service.name, pump = pump_name, "session started");

        let stop = &registration.stop;
        let (end, stats) = match &mut transport {
            Transport::Userspace(records) => pump::pump(&tls, records, &upstream, stop).await,
            Transport::Kernel(kernel) => pump::ktls::pump_ktls(&tls, kernel, &upstream, stop).await,
        };
        let (close_reason, detail) = match end {
            PumpEnd::Closed { first: Side::Tls } => (CloseReason::ClientClosed, None),
            PumpEnd::Closed { first: Side::Plain } => (CloseReason::UpstreamClosed, None),
            PumpEnd::Failed {
                side: Side::Tls,
                error,
            } => (CloseReason::ClientError, Some(error.to_string())),
            PumpEnd::Failed {
                side: Side::Plain,
                error,
            } => (CloseReason::UpstreamError, Some(error.to_string())),
            PumpEnd::Stopped(reason) => (reason, None),
        };
        let mut end = AuditRecord::new(Event::SessionEnd, self.session_id, self.peer)
            .identity(&identity)
            .service(Some(&service.name));
        end.bytes_from_client = Some(stats.from_tls);
        end.bytes_to_client = Some(stats.to_tls);
        end.duration_ms = Some(started.elapsed().as_millis() as u64);
        end.close_reason = Some(close_reason);
        end.detail = detail;
        end.pump = Some(pump_name);
        if let Err(err) = self.worker.audit.record(end) {
            tracing::error!(error = %err, "session.end record lost");
        }
        tracing::info!(
            close_reason = ?close_reason,
            bytes.from_client = stats.from_tls,
            bytes.to_client = stats.to_tls,
            "session ended"
        );
    }

    /// Writes the one `session.denied` record of this connection.
    fn deny(&self, refusal: &Refusal) {
        let detail = (!refusal.detail.is_empty()).then(|| refusal.detail.clone());
        let mut record = AuditRecord::new(Event::SessionDenied, self.session_id, self.peer)
            .service(refusal.service.as_deref())
            .reason(refusal.reason, detail);
        if let Some(identity) = &refusal.identity {
            record = record.identity(identity);
        }
        tracing::info!(reason = ?refusal.reason, detail = %refusal.detail, "session denied");
        if let Err(err) = self.worker.audit.record(record) {
            tracing::error!(error = %err, "session.denied record lost");
        }
    }

    /// Denies after a completed handshake: audit, then tell the client in PostgreSQL's
    /// own words (psql prints the ErrorResponse), then close_notify.
    async fn refuse(
        &self,
        sock: &Socket,
        secrets: rustls::ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
        refusal: Refusal,
    ) {
        self.deny(&refusal);
        // Without a record layer there are no words to send; the close says enough.
        let Ok(mut records) = RecordLayer::new(secrets, kernel) else {
            return;
        };
        let message = format!("pgtunnel: access denied: {}", refusal.detail);
        let response = wire::fatal_error(refusal.code, &message, None);
        let _ = uring::timeout(
            Duration::from_secs(1),
            pump::farewell(sock, &mut records, &response),
        )
        .await;
    }
}

/// Opens the upstream connection: TCP with TCP_NODELAY (PostgreSQL's messages are small
/// and latency-bound), or a unix socket.
async fn connect(upstream: &Upstream) -> std::io::Result<Socket> {
    let (domain, addr) = match upstream {
        Upstream::Tcp(addr) => (Domain::for_address(*addr), SockAddr::from(*addr)),
        Upstream::Unix(path) => (Domain::UNIX, SockAddr::unix(path)?),
    };
    let socket = socket2::Socket::new(domain, Type::STREAM.cloexec(), None)?;
    if matches!(upstream, Upstream::Tcp(_)) {
        socket.set_tcp_nodelay(true)?;
    }
    let socket = Socket::from_owned(socket.into());
    uring::connect(socket.as_raw_fd(), addr).await?;
    Ok(socket)
}
