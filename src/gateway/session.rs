//! One session from accept to close, in the order of docs/design.md: limits, handshake,
//! identity, service, authorize, upstream, audit, pump, close.
//!
//! Every connection ends in exactly one of two audit shapes: a single `session.denied`
//! (with a reason) or a `session.start` followed by a `session.end`. Nothing a peer sends
//! can make this function panic or stall the worker: every wait has a deadline or a stop
//! signal, and every failure becomes a denied record and a close.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use socket2::{Domain, SockAddr, SockRef, Type};

use super::policy::{Decision, authorize};
use super::worker::Worker;
use crate::audit::{AuditRecord, CloseReason, DenyReason, Event};
use crate::config::Upstream;
use crate::pg::wire::{self, SqlState};
use crate::pki::Identity;
use crate::pump::{self, HandshakeError, PumpEnd, Side, TlsSession};
use crate::sys::uring::{self, Socket};
use crate::tls;

/// Serves one accepted connection to its end.
pub async fn serve(worker: &Rc<Worker>, sock: Socket, session_id: String, overloaded: bool) {
    let peer = SockRef::from(sock.as_fd())
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let ctx = Ctx {
        worker,
        session_id: &session_id,
        peer,
    };

    if overloaded {
        // No TLS, no questions: refusing early is what keeps an overloaded worker alive.
        ctx.deny(
            DenyReason::Overloaded,
            None,
            None,
            Some("worker at its session or handshake cap".into()),
        );
        return;
    }
    let _ = SockRef::from(sock.as_fd()).set_tcp_nodelay(true);

    // Handshake, under a deadline. The snapshot of shared state is taken once, so a
    // reload mid-session never mixes two configurations in one decision.
    let shared = worker.shared.load_full();
    let conn = match rustls::ServerConnection::new(shared.server_tls.clone()) {
        Ok(conn) => conn,
        Err(err) => {
            ctx.deny(
                DenyReason::HandshakeFailed,
                None,
                None,
                Some(err.to_string()),
            );
            return;
        }
    };
    let mut tls = TlsSession::new(sock, rustls::Connection::Server(conn));
    let handshake = {
        let _guard = worker.handshake_guard();
        uring::timeout(shared.config.handshake_timeout, tls.handshake()).await
    };
    match handshake {
        Ok(Ok(())) => {}
        Ok(Err(HandshakeError::Tls(err))) => {
            ctx.deny(tls::deny_reason(&err), None, None, Some(err.to_string()));
            return;
        }
        Ok(Err(err)) => {
            ctx.deny(
                DenyReason::HandshakeFailed,
                None,
                None,
                Some(err.to_string()),
            );
            return;
        }
        Err(uring::Elapsed) => {
            ctx.deny(DenyReason::HandshakeTimeout, None, None, None);
            return;
        }
    }

    // Identity from the certificate rustls has verified against the client CA.
    let identity = match peer_identity(&tls.conn) {
        Ok(identity) => identity,
        Err(detail) => {
            ctx.deny(DenyReason::BadCert, None, None, Some(detail));
            return;
        }
    };
    tracing::debug!(user = %identity.user, "client certificate verified");

    // Short-lived is enforced, not hoped for: a certificate issued for longer than
    // max_cert_lifetime is refused even though it chains and is in its validity period.
    let lifetime = identity.not_after - identity.not_before;
    let max =
        time::Duration::try_from(shared.config.max_cert_lifetime).unwrap_or(time::Duration::MAX);
    if lifetime > max {
        let detail = format!(
            "certificate lifetime {} exceeds max_cert_lifetime {}",
            crate::pki::human_duration(lifetime),
            crate::pki::human_duration(max)
        );
        ctx.deny(
            DenyReason::LifetimeExceedsMax,
            Some(&identity),
            None,
            Some(detail.clone()),
        );
        let msg = wire::fatal_error(
            SqlState::INVALID_AUTHORIZATION,
            &format!("pgtunnel: {detail}"),
            None,
        );
        let _ = uring::timeout(std::time::Duration::from_secs(1), tls.send_and_close(&msg)).await;
        return;
    }
    // rustls checked the CRL in the handshake; this catches a CRL swapped in between.
    if shared.is_revoked(&identity.serial_hex) {
        ctx.deny(
            DenyReason::Revoked,
            Some(&identity),
            None,
            Some("certificate is revoked".into()),
        );
        return;
    }

    // Service by SNI; without SNI, the only service if there is exactly one.
    let sni = server_name(&tls.conn);
    let service = match &sni {
        Some(name) => shared.config.service(name),
        None if shared.config.services.len() == 1 => shared.config.services.first(),
        None => None,
    };
    let Some(service) = service else {
        let detail = match &sni {
            Some(name) => format!("no service named {name:?}"),
            None => "no SNI and more than one service".to_string(),
        };
        ctx.refuse(
            &mut tls,
            DenyReason::UnknownService,
            &identity,
            sni.as_deref(),
            detail,
            SqlState::REJECTED_CONNECTION,
        )
        .await;
        return;
    };

    if let Decision::Deny(detail) = authorize(&identity, service) {
        ctx.refuse(
            &mut tls,
            DenyReason::PolicyDenied,
            &identity,
            Some(&service.name),
            detail,
            SqlState::INVALID_AUTHORIZATION,
        )
        .await;
        return;
    }

    let upstream =
        match uring::timeout(shared.config.connect_timeout, connect(&service.upstream)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(err)) => {
                let detail = format!("{}: {err}", service.upstream);
                ctx.refuse(
                    &mut tls,
                    DenyReason::UpstreamUnavailable,
                    &identity,
                    Some(&service.name),
                    detail,
                    SqlState::CANNOT_CONNECT_NOW,
                )
                .await;
                return;
            }
            Err(uring::Elapsed) => {
                let detail = format!("{}: no answer within the connect timeout", service.upstream);
                ctx.refuse(
                    &mut tls,
                    DenyReason::UpstreamUnavailable,
                    &identity,
                    Some(&service.name),
                    detail,
                    SqlState::CANNOT_CONNECT_NOW,
                )
                .await;
                return;
            }
        };

    // Authorized and connected: the start record, then the pump.
    let started = Instant::now();
    let registration = worker.register(&identity, &service.name, shared.generation);
    let start = AuditRecord::new(Event::SessionStart, ctx.session_id, peer)
        .identity(&identity)
        .service(Some(&service.name));
    if let Err(err) = worker.audit.record(start) {
        // Fail closed: a session that cannot be recorded does not run.
        tracing::error!(error = %err, "audit record not queued: refusing session");
        let msg = wire::fatal_error(
            SqlState::CANNOT_CONNECT_NOW,
            "pgtunnel: audit log unavailable",
            None,
        );
        let _ = tls.send_and_close(&msg).await;
        return;
    }
    tracing::info!(user = %identity.user, service = %service.name, "session started");

    let (end, stats) = pump::pump(&mut tls, &upstream, &registration.stop).await;
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
        PumpEnd::Stopped(reason) => {
            tls.conn.send_close_notify();
            let _ = uring::timeout(std::time::Duration::from_millis(200), tls.flush()).await;
            (reason, None)
        }
    };
    let mut end = AuditRecord::new(Event::SessionEnd, ctx.session_id, peer)
        .identity(&identity)
        .service(Some(&service.name));
    end.bytes_from_client = Some(stats.from_tls);
    end.bytes_to_client = Some(stats.to_tls);
    end.duration_ms = Some(started.elapsed().as_millis() as u64);
    end.close_reason = Some(close_reason);
    end.detail = detail;
    if let Err(err) = worker.audit.record(end) {
        tracing::error!(error = %err, "session.end record lost");
    }
    tracing::info!(
        close_reason = ?close_reason,
        bytes.from_client = stats.from_tls,
        bytes.to_client = stats.to_tls,
        "session ended"
    );
}

/// What every record of this session shares.
struct Ctx<'a> {
    worker: &'a Rc<Worker>,
    session_id: &'a str,
    peer: SocketAddr,
}

impl Ctx<'_> {
    /// Writes the one `session.denied` record of this connection.
    fn deny(
        &self,
        reason: DenyReason,
        identity: Option<&Identity>,
        service: Option<&str>,
        detail: Option<String>,
    ) {
        let mut record = AuditRecord::new(Event::SessionDenied, self.session_id, self.peer)
            .service(service)
            .reason(reason, detail.clone());
        if let Some(identity) = identity {
            record = record.identity(identity);
        }
        tracing::info!(reason = ?reason, detail = detail.as_deref().unwrap_or(""), "session denied");
        if let Err(err) = self.worker.audit.record(record) {
            tracing::error!(error = %err, "session.denied record lost");
        }
    }

    /// Denies after a completed handshake: audit, then tell the client in PostgreSQL's
    /// own words (psql prints the ErrorResponse), then close_notify.
    async fn refuse(
        &self,
        tls: &mut TlsSession,
        reason: DenyReason,
        identity: &Identity,
        service: Option<&str>,
        detail: String,
        code: SqlState,
    ) {
        let message = format!("pgtunnel: access denied: {detail}");
        self.deny(reason, Some(identity), service, Some(detail));
        let response = wire::fatal_error(code, &message, None);
        let deadline = std::time::Duration::from_secs(1);
        let _ = uring::timeout(deadline, tls.send_and_close(&response)).await;
    }
}

fn peer_identity(conn: &rustls::Connection) -> Result<Identity, String> {
    let certs = conn
        .peer_certificates()
        .ok_or("no client certificate after handshake")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    Identity::from_der(leaf.as_ref()).map_err(|err| err.to_string())
}

fn server_name(conn: &rustls::Connection) -> Option<String> {
    match conn {
        rustls::Connection::Server(server) => server.server_name().map(str::to_string),
        rustls::Connection::Client(_) => None,
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
