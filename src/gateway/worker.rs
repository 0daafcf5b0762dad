//! One worker: a thread pinned to a CPU, with its own ring, listener and sessions.
//!
//! The accept loop runs a multishot accept and spawns a task per connection. Limits are
//! checked at accept: a worker over its share of `max_sessions` or `max_handshakes`
//! refuses the connection at once (audited as `overloaded`) instead of queueing it. The
//! refusal comes before any TLS, so the client learns no reason (the agent sees a reset);
//! spending a handshake on it would defeat the limit.
//! Shutdown arrives through an eventfd the main thread writes: the first write stops
//! accepting and lets sessions finish within `drain_timeout`; the deadline (or a second
//! write) tells every remaining connection to stop, and each still writes its record: a
//! session its end, a connection still being admitted its denial (`shutdown`).
//!
//! A sweep task re-checks live sessions every [`SWEEP_EVERY`]: certificate expiry, the
//! CRL, and, after a reload, the policy. A session that no longer passes is told to stop
//! with the reason, which its `session.end` record carries.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::Instrument;

use super::SharedCell;
use super::policy::{Decision, authorize};
use super::session;
use crate::audit::{AuditSink, CloseReason, DenyReason};
use crate::pki::Identity;
use crate::pump::StopSignal;
use crate::sys::uring::{self, Incoming, Runtime, Socket};

/// How often live sessions are re-checked. A revocation seen by the main thread (which
/// polls the CRL every 500 ms) thus closes the session well within a second.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Everything a worker thread needs to start.
pub struct WorkerSetup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub shared: SharedCell,
    pub audit: AuditSink,
    pub listener: socket2::Socket,
    pub wake: OwnedFd,
    pub ready: Sender<std::io::Result<()>>,
}

/// A worker's own state, shared by its tasks (single thread, hence `Rc` and `Cell`).
pub struct Worker {
    pub id: usize,
    pub shared: SharedCell,
    pub audit: AuditSink,
    /// Authorized sessions, by slab key, for the sweep.
    sessions: RefCell<Slab<LiveSession>>,
    /// The stop signal of every accepted connection, admitted or not, for shutdown: a
    /// connection still in its handshake at the drain deadline must end (and be
    /// recorded) like a session does.
    stops: RefCell<Slab<Rc<StopSignal>>>,
    /// Connections accepted and not yet finished (including handshakes).
    connections: Cell<usize>,
    handshakes: Cell<usize>,
    max_connections: usize,
    max_handshakes: usize,
    next_session: Cell<u64>,
    session_prefix: String,
}

/// Thread entry point.
pub fn run(setup: WorkerSetup) {
    if let Some(cpu) = setup.cpu
        && let Err(err) = crate::sys::affinity::pin_current_thread(cpu)
    {
        tracing::warn!(worker = setup.id, cpu, error = %err, "cannot pin worker to its CPU");
    }
    let runtime = match Runtime::new() {
        Ok(rt) => {
            let _ = setup.ready.send(Ok(()));
            rt
        }
        Err(err) => {
            let _ = setup.ready.send(Err(err));
            return;
        }
    };
    let config = &setup.shared.load().config;
    let workers = config.workers.max(1);
    let (max_sessions, max_handshakes) = (config.max_sessions, config.max_handshakes);
    let worker = Rc::new(Worker {
        id: setup.id,
        max_connections: share_of(max_sessions, workers),
        max_handshakes: share_of(max_handshakes, workers),
        shared: setup.shared,
        audit: setup.audit,
        sessions: RefCell::new(Slab::new()),
        stops: RefCell::new(Slab::new()),
        connections: Cell::new(0),
        handshakes: Cell::new(0),
        next_session: Cell::new(0),
        session_prefix: session_prefix(setup.id),
    });
    let span = tracing::info_span!("worker", worker = setup.id);
    let result = runtime.block_on(serve(worker, setup.listener, setup.wake).instrument(span));
    if let Err(err) = result {
        tracing::error!(worker = setup.id, error = %err, "worker ring failed");
    }
}

/// A worker's share of a gateway-wide cap; never zero.
fn share_of(total: usize, workers: usize) -> usize {
    total.div_ceil(workers).max(1)
}

/// Session ids are unique across workers and restarts: a per-process random prefix,
/// the worker number and a counter.
fn session_prefix(worker: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; we only need unpredictability
    // across restarts, not cryptographic strength.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nonce = hasher.finish() as u32;
    format!("{nonce:08x}-{worker}")
}

async fn serve(worker: Rc<Worker>, listener: socket2::Socket, wake: OwnedFd) {
    let wake = Socket::from_owned(wake);
    uring::spawn(sweep(worker.clone()));
    let mut incoming = Incoming::new(listener.as_raw_fd());
    let mut wake_read = uring::read(wake.as_raw_fd(), Vec::with_capacity(8));

    // Accept until the first shutdown signal.
    let mut signals = loop {
        let accepted = {
            let next = std::pin::pin!(incoming.next());
            futures_select(next, &mut wake_read).await
        };
        match accepted {
            Either::Left(Ok(sock)) => worker.clone().admit(sock),
            Either::Left(Err(err)) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                uring::sleep(Duration::from_millis(50)).await;
            }
            Either::Right((res, buf)) => {
                let count = eventfd_count(&res, &buf);
                wake_read = uring::read(wake.as_raw_fd(), Vec::with_capacity(8));
                break count;
            }
        }
    };
    drop(incoming);
    drop(listener);

    // Drain: wait for sessions to finish, until the deadline or a second signal.
    let deadline = Instant::now() + worker.shared.load().config.drain_timeout;
    while worker.connections.get() > 0 && signals < 2 && Instant::now() < deadline {
        let tick = std::pin::pin!(uring::sleep(Duration::from_millis(20)));
        if let Either::Right((res, buf)) = futures_select(tick, &mut wake_read).await {
            signals += eventfd_count(&res, &buf);
            wake_read = uring::read(wake.as_raw_fd(), Vec::with_capacity(8));
        }
    }

    // Whatever is left is told to stop; each connection then writes its one record:
    // a session its end, a connection not yet admitted its denial.
    if worker.connections.get() > 0 {
        tracing::warn!(
            sessions = worker.connections.get(),
            "drain timeout: closing sessions"
        );
        for (_, stop) in worker.stops.borrow().iter() {
            stop.stop(CloseReason::Shutdown);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while worker.connections.get() > 0 && Instant::now() < deadline {
            uring::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Worker {
    /// Applies the limits and starts a session task for an accepted connection.
    fn admit(self: Rc<Self>, sock: Socket) {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        let session_id = format!("{}-{id}", self.session_prefix);
        let refuse = if self.connections.get() >= self.max_connections
            || self.handshakes.get() >= self.max_handshakes
        {
            Some(DenyReason::Overloaded)
        } else if !self.audit.admits_sessions() {
            // Fail closed: with the audit log unwritable, nobody gets in unrecorded.
            Some(DenyReason::AuditUnavailable)
        } else {
            None
        };
        let span = tracing::debug_span!("session", session.id = %session_id, worker = self.id);
        let guard = ConnectionGuard::new(self.clone());
        uring::spawn(
            async move {
                let stop = guard.stop.clone();
                session::serve(&guard.worker, sock, session_id, refuse, stop).await;
                drop(guard);
            }
            .instrument(span),
        );
    }

    /// Registers an authorized session so that the sweep can reach it through `stop`
    /// (its connection's signal); unregisters on drop. `generation` is that of the
    /// state it was authorized under.
    pub fn register(
        self: &Rc<Self>,
        identity: &Identity,
        service: &str,
        generation: u64,
        stop: Rc<StopSignal>,
    ) -> Registration {
        let session = LiveSession {
            stop: stop.clone(),
            identity: identity.clone(),
            service: service.to_string(),
            generation: Cell::new(generation),
        };
        let key = self.sessions.borrow_mut().insert(session);
        Registration {
            worker: self.clone(),
            key,
            stop,
        }
    }

    /// Counts a handshake in progress until the guard drops.
    pub fn handshake_guard(self: &Rc<Self>) -> HandshakeGuard {
        self.handshakes.set(self.handshakes.get() + 1);
        HandshakeGuard {
            worker: self.clone(),
        }
    }
}

/// What the sweep needs to know about a live session.
struct LiveSession {
    stop: Rc<StopSignal>,
    identity: Identity,
    service: String,
    /// The `Shared::generation` this session was last checked against.
    generation: Cell<u64>,
}

/// Re-checks every live session against the clock and the current shared state.
async fn sweep(worker: Rc<Worker>) {
    loop {
        uring::sleep(SWEEP_EVERY).await;
        let shared = worker.shared.load();
        let now = time::OffsetDateTime::now_utc();
        for (_, session) in worker.sessions.borrow().iter() {
            if session.stop.reason().is_some() {
                continue;
            }
            if let Some(reason) = recheck(session, &shared, now) {
                tracing::info!(user = %session.identity.user, reason = ?reason, "closing live session");
                session.stop.stop(reason);
            }
            session.generation.set(shared.generation);
        }
    }
}

fn recheck(
    session: &LiveSession,
    shared: &super::Shared,
    now: time::OffsetDateTime,
) -> Option<CloseReason> {
    let config = &shared.config;
    let grace = time::Duration::try_from(config.cert_expiry_grace).unwrap_or(time::Duration::ZERO);
    if config.close_on_cert_expiry && now >= session.identity.not_after + grace {
        return Some(CloseReason::CertExpired);
    }
    if shared.is_revoked(&session.identity.serial_hex) {
        return Some(CloseReason::Revoked);
    }
    if session.generation.get() != shared.generation {
        let allowed = config
            .service(&session.service)
            .is_some_and(|service| authorize(&session.identity, service) == Decision::Allow);
        if !allowed {
            return Some(CloseReason::PolicyChanged);
        }
    }
    None
}

pub struct Registration {
    worker: Rc<Worker>,
    key: usize,
    pub stop: Rc<StopSignal>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.worker.sessions.borrow_mut().try_remove(self.key);
    }
}

/// Counts an accepted connection and keeps its stop signal reachable for shutdown until
/// its task ends, however it ends (a task dropped at shutdown or after a panic still
/// gives its count back).
struct ConnectionGuard {
    worker: Rc<Worker>,
    stop: Rc<StopSignal>,
    key: usize,
}

impl ConnectionGuard {
    fn new(worker: Rc<Worker>) -> ConnectionGuard {
        worker.connections.set(worker.connections.get() + 1);
        let stop = Rc::new(StopSignal::default());
        let key = worker.stops.borrow_mut().insert(stop.clone());
        ConnectionGuard { worker, stop, key }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.worker.stops.borrow_mut().try_remove(self.key);
        self.worker
            .connections
            .set(self.worker.connections.get() - 1);
    }
}

pub struct HandshakeGuard {
    worker: Rc<Worker>,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.worker.handshakes.set(self.worker.handshakes.get() - 1);
    }
}

fn eventfd_count(res: &std::io::Result<usize>, buf: &[u8]) -> u64 {
    match (res, <[u8; 8]>::try_from(buf)) {
        (Ok(8), Ok(bytes)) => u64::from_ne_bytes(bytes),
        // A failed read still means someone tried to wake us: treat it as one signal.
        _ => 1,
    }
}

pub(crate) enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Polls two futures and returns the first output. The second is borrowed, so if the
/// first wins it stays pending and can be polled again later (a shutdown eventfd read
/// must not be dropped and re-issued on every accepted connection).
pub(crate) async fn futures_select<A, B>(
    mut a: std::pin::Pin<&mut A>,
    b: &mut B,
) -> Either<A::Output, B::Output>
where
    A: std::future::Future,
    B: std::future::Future + Unpin,
{
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(Either::Left(v));
        }
        if let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut *b).poll(cx) {
            return std::task::Poll::Ready(Either::Right(v));
        }
        std::task::Poll::Pending
    })
    .await
}
