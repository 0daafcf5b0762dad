//! The local agent (`pgtunnel connect`): listens on loopback and turns every accepted
//! connection (psql, pgbench, any libpq client) into a TLS 1.3 connection to the gateway
//! that presents the user's login certificate, with SNI = the service name.
//!
//! It runs on the same ring runtime and pump as the gateway. When the tunnel cannot be
//! opened (gateway down, certificate refused), the agent answers the client in
//! PostgreSQL's own words, an ErrorResponse, so psql prints why instead of "server
//! closed the connection unexpectedly". When the gateway itself refuses inside the
//! tunnel (after a resumed handshake), its ErrorResponse is passed on as it is and its
//! message is also logged. The agent does not decide anything about access; the gateway
//! does.

mod credentials;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use rustls::client::UnbufferedClientConnection;
use rustls_pki_types::ServerName;
use socket2::{Domain, SockAddr, SockRef, Type};
use tracing::Instrument;

use crate::pg::wire::{self, SqlState};
use crate::pump::{self, PumpEnd, PumpError, Side, StopSignal};
use crate::sys::uring::{self, Incoming, Runtime, Socket};
use crate::tls::handshake::{self, HandshakeError};
use crate::tls::record::{RecordError, RecordLayer};

pub use credentials::{Credentials, Loaded, LoginFiles};

/// Validated agent settings.
pub struct AgentConfig {
    pub gateway: SocketAddr,
    pub service: String,
    pub listen: SocketAddr,
    /// Where the login certificate, key and CA live (re-read when they change).
    pub login: LoginFiles,
    /// Those files as loaded and checked at start-up.
    pub loaded: Loaded,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("io_uring is not available ({0}); check kernel.io_uring_disabled and seccomp profiles")]
    Uring(std::io::Error),
    #[error("service name {0:?} cannot be sent as SNI")]
    ServiceName(String),
}

/// A bound agent, ready to serve (binding first lets callers report the address).
pub struct Agent {
    config: AgentConfig,
    credentials: Credentials,
    listener: socket2::Socket,
    sni: ServerName<'static>,
}

impl Agent {
    pub fn bind(config: AgentConfig) -> Result<Agent, AgentError> {
        let sni = ServerName::try_from(config.service.clone())
            .map_err(|_| AgentError::ServiceName(config.service.clone()))?;
        let listener = bind(config.listen).map_err(|source| AgentError::Bind {
            addr: config.listen,
            source,
        })?;
        let credentials = Credentials::new(config.login.clone(), config.loaded.clone());
        Ok(Agent {
            config,
            credentials,
            listener,
            sni,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok().and_then(|a| a.as_socket())
    }

    /// Serves connections on the calling thread until the process ends.
    pub fn run(self) -> Result<(), AgentError> {
        // Two descriptors per tunnel; the default soft limit of 1024 is easily reached.
        if let Err(err) = crate::sys::fd::raise_nofile_limit() {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
        }
        let runtime = Runtime::new().map_err(AgentError::Uring)?;
        let shared = Rc::new(self);
        let result = runtime.block_on(accept_loop(shared));
        result.map_err(AgentError::Uring)
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    Ok(socket)
}

async fn accept_loop(agent: Rc<Agent>) {
    let mut incoming = Incoming::new(agent.listener.as_raw_fd());
    let mut next_id: u64 = 0;
    loop {
        match incoming.next().await {
            Ok(client) => {
                next_id += 1;
                let span = tracing::debug_span!("tunnel", tunnel.id = next_id);
                uring::spawn(tunnel(agent.clone(), client).instrument(span));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                uring::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: open the tunnel, then pump until either end closes.
async fn tunnel(agent: Rc<Agent>, client: Socket) {
    let _ = SockRef::from(client.as_fd()).set_tcp_nodelay(true);
    let config = &agent.config;

    // Credentials first: an expired certificate is explained here rather than refused,
    // less legibly, by the gateway.
    let login = agent.credentials.current();
    let cert_path = &agent.credentials.files().cert;
    if let Some(why) = login.unusable_at(time::OffsetDateTime::now_utc(), cert_path) {
        return turn_away(&client, &why).await;
    }

    let sock = match uring::timeout(config.connect_timeout, open_gateway(config.gateway)).await {
        Ok(Ok(sock)) => sock,
        Ok(Err(err)) => {
            let why = format!("cannot reach the gateway at {}: {err}", config.gateway);
            return turn_away(&client, &why).await;
        }
        Err(uring::Elapsed) => {
            let why = format!("the gateway at {} did not answer in time", config.gateway);
            return turn_away(&client, &why).await;
        }
    };
    let conn = match UnbufferedClientConnection::new(login.tls.clone(), agent.sni.clone()) {
        Ok(conn) => conn,
        Err(err) => return turn_away(&client, &format!("TLS set-up failed: {err}")).await,
    };
    let established =
        match uring::timeout(config.handshake_timeout, handshake::handshake(sock, conn)).await {
            Ok(Ok(established)) => established,
            Ok(Err(err)) => return turn_away(&client, &handshake_message(&err)).await,
            Err(uring::Elapsed) => {
                return turn_away(
                    &client,
                    "the gateway did not finish the TLS handshake in time",
                )
                .await;
            }
        };
    let mut records = match RecordLayer::new(established.secrets, established.kernel) {
        Ok(records) => records,
        Err(err) => return turn_away(&client, &format!("TLS hand-off failed: {err}")).await,
    };

    let stop = StopSignal::default();
    let mut watch = log_gateway_refusal;
    let (end, stats) = pump::pump_watching(
        &established.sock,
        &mut records,
        &client,
        &stop,
        Some(&mut watch),
    )
    .await;
    match end {
        // In TLS 1.3 the client's handshake is over before the gateway has looked at the
        // certificate, so a refusal arrives as an alert on the first read. Nothing has
        // reached the client yet: it can still be told why.
        PumpEnd::Failed {
            side: Side::Tls,
            error: PumpError::Record(RecordError::PeerAlert(alert)),
        } if stats.from_tls == 0 => {
            turn_away(&client, &refusal_message(alert, &login)).await;
        }
        PumpEnd::Failed { side, error } => {
            tracing::debug!(?side, error = %error, "tunnel failed");
        }
        end => tracing::debug!(
            ?end,
            bytes.up = stats.to_tls,
            bytes.down = stats.from_tls,
            "tunnel closed"
        ),
    }
}

/// Looks at the first bytes the gateway sends on a tunnel, which are passed on to the
/// client unchanged whatever they are.
///
/// After a resumed handshake (or any completed one) the gateway refuses inside the
/// tunnel: an ErrorResponse and close_notify (gateway/session.rs, `refuse`). psql asks
/// for TLS first, PostgreSQL answers that SSLRequest with a single `S` or `N`, so an
/// ErrorResponse first is the gateway's; its messages start with "pgtunnel:". libpq
/// shows none of it to a psql that asked for TLS (docs/limitations.md), so the reason
/// is logged here, where the person running psql can find it. An ErrorResponse from
/// PostgreSQL itself (a client that skips TLS and is refused at start-up) is passed on,
/// and psql prints it; it is only noted at debug level.
fn log_gateway_refusal(first: &[u8]) {
    let Some(error) = wire::parse_error_response(first) else {
        if first.first() == Some(&b'E') {
            // Ours always fit in the first record; a cut or malformed one is not ours
            // to explain, but whoever reads this log should know psql got an error.
            tracing::warn!(
                "the first answer through the tunnel is an ErrorResponse this agent cannot \
                 read; psql may show only libpq's own message"
            );
        }
        return;
    };
    match error.message.strip_prefix("pgtunnel: ") {
        Some(why) => tracing::warn!(
            reason = %format!("the gateway refused the session: {why}"),
            sqlstate = %error.code,
            "tunnel not opened"
        ),
        None => tracing::debug!(
            message = %error.message,
            sqlstate = %error.code,
            "first answer through the tunnel is an error from PostgreSQL"
        ),
    }
}

/// Explains the gateway's refusal of a completed handshake (a TLS alert, RFC 8446
/// section 6.2 numbering).
fn refusal_message(alert: u8, login: &Loaded) -> String {
    match alert {
        44 => format!(
            "the gateway refused the login certificate for {:?}: it has been revoked; \
             ask for a new one (pgtunnel ca issue)",
            login.user
        ),
        45 => format!(
            "the gateway refused the login certificate for {:?} as expired or not yet valid \
             (valid until {}); check the clocks, or ask for a new one (pgtunnel ca issue)",
            login.user,
            crate::audit::format_ts(login.not_after)
        ),
        42 | 43 | 48 => format!(
            "the gateway does not accept the login certificate for {:?} (TLS alert {alert}); \
             it may come from another CA",
            login.user
        ),
        other => format!("the gateway refused the connection (TLS alert {other})"),
    }
}

async fn open_gateway(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = socket2::Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_tcp_nodelay(true)?;
    let socket = Socket::from_owned(socket.into());
    uring::connect(socket.as_raw_fd(), SockAddr::from(addr)).await?;
    Ok(socket)
}

/// Explains a failed handshake in words for the person running psql.
fn handshake_message(err: &HandshakeError) -> String {
    match err {
        HandshakeError::Tls(rustls::Error::AlertReceived(alert)) => format!(
            "the gateway refused the login certificate (TLS alert: {alert:?}); \
             check that it is current and issued by the right CA"
        ),
        HandshakeError::Tls(rustls::Error::InvalidCertificate(why)) => format!(
            "the gateway's certificate is not trusted ({why}): it must be issued by the CA \
             in --ca and name the gateway as --server-name (or the --gateway host) says"
        ),
        HandshakeError::Tls(err) => format!("TLS handshake with the gateway failed: {err}"),
        HandshakeError::Eof => "the gateway closed the connection during the handshake".into(),
        HandshakeError::Io(err) => format!("connection to the gateway failed: {err}"),
        HandshakeError::Protocol(what) => format!("TLS handshake with the gateway failed: {what}"),
    }
}

/// Answers the client with a PostgreSQL ErrorResponse (FATAL, 28000) and closes.
///
/// psql prints the message in full when it is not asking for TLS (sslmode=disable, or
/// the tunnel's usual set-up with TLS to PostgreSQL switched off). When psql asks for
/// TLS, current libpq (since the fix for CVE-2024-10977) does not trust any text sent
/// before TLS and prints only "server sent an error response during SSL exchange"; the
/// full reason is then in this agent's log, which is why it is logged at warn.
async fn turn_away(client: &Socket, why: &str) {
    tracing::warn!(reason = why, "tunnel not opened");
    let message = format!("pgtunnel: {why}");
    let response = wire::fatal_error(SqlState::INVALID_AUTHORIZATION, &message, None);
    let len = response.len();
    let send = uring::send_all(client.as_raw_fd(), response, 0..len);
    let _ = uring::timeout(Duration::from_secs(1), send).await;
}
