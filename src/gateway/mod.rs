//! The gateway: per-core workers that accept mTLS connections, decide who may reach which
//! PostgreSQL service, audit the decision and pump the bytes.
//!
//! The main thread loads the configuration and TLS material into an immutable [`Shared`],
//! binds one SO_REUSEPORT listener per worker (the kernel spreads connections across
//! them), starts the pinned workers and the audit writer, and then only waits for
//! signals: SIGTERM/SIGINT drain and exit. Workers share nothing mutable; each owns its
//! ring, listener, sessions and counters (`worker`). One session, start to end, is in
//! `session`; the allow/deny decision in `policy`.

mod listener;
mod policy;
mod session;
mod worker;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::audit::{AuditError, AuditWriter};
use crate::config::GatewayConfig;
use crate::sys;
use crate::{pki, tls};

pub use policy::{Decision, authorize};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file named in the config cannot be used; `field` is the config key.
    #[error("{field}: {path:?}: {reason}")]
    File { field: &'static str, path: String, reason: String },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("io_uring is not available ({0}); check kernel.io_uring_disabled and seccomp profiles")]
    Uring(std::io::Error),
    #[error("{0}: {1}")]
    Os(&'static str, std::io::Error),
}

/// What every worker reads and nobody writes: the configuration and the TLS settings
/// built from it.
pub struct Shared {
    pub config: GatewayConfig,
    pub server_tls: Arc<rustls::ServerConfig>,
}

impl Shared {
    /// Loads everything the config names (certificate, key, client CA). This is also
    /// what `gateway --check` runs. Errors name the config field of the file at fault.
    pub fn load(config: GatewayConfig) -> Result<Shared, GatewayError> {
        let field = |name: &'static str, path: &std::path::Path, reason: String| {
            GatewayError::File { field: name, path: path.display().to_string(), reason }
        };
        let chain = pki::load_certs(&config.cert)
            .map_err(|err| field("gateway.cert", &config.cert, err.to_string()))?;
        let key = pki::load_private_key(&config.key)
            .map_err(|err| field("gateway.key", &config.key, err.to_string()))?;
        let roots = tls::load_roots(&config.client_ca)
            .map_err(|err| field("gateway.client_ca", &config.client_ca, err.to_string()))?;
        let server_tls = tls::server_config(chain, key, roots).map_err(|err| {
            let reason = format!("does not go with gateway.key: {err}");
            field("gateway.cert", &config.cert, reason)
        })?;
        Ok(Shared { config, server_tls: Arc::new(server_tls) })
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub fn run(shared: Shared) -> Result<(), GatewayError> {
    let shared = Arc::new(shared);
    let config = &shared.config;
    let (audit_writer, audit_sink) = AuditWriter::start(&config.audit_log, config.audit.clone())?;
    let listeners = listener::bind(config.listen, config.workers)?;
    let local = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket());
    let local = local.map(|a| a.to_string()).unwrap_or_default();

    // Signals are registered before the workers start, so an early SIGTERM is not lost.
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|err| GatewayError::Os("signals", err))?;

    let cpus = sys::affinity::allowed_cpus().unwrap_or_default();
    let mut workers: Vec<(JoinHandle<()>, OwnedFd)> = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (id, listener) in listeners.into_iter().enumerate() {
        let wake = sys::fd::eventfd().map_err(|err| GatewayError::Os("eventfd", err))?;
        let wake_worker = wake
            .try_clone()
            .map_err(|err| GatewayError::Os("eventfd", err))?;
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let ctx = worker::WorkerSetup {
            id,
            cpu,
            shared: shared.clone(),
            audit: audit_sink.clone(),
            listener,
            wake: wake_worker,
            ready: ready_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("pgtunnel-w{id}"))
            .spawn(move || worker::run(ctx))
            .map_err(|err| GatewayError::Os("spawning worker", err))?;
        workers.push((handle, wake));
    }
    drop(ready_tx);
    drop(audit_sink);

    // Every worker reports whether its ring came up; io_uring being disabled is fatal
    // and said in one line, never papered over with another engine.
    let mut startup_error = None;
    for _ in 0..workers.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => startup_error = Some(GatewayError::Uring(err)),
            Err(_) => {
                let err = std::io::Error::other("worker exited during start-up");
                startup_error = Some(GatewayError::Os("worker", err));
            }
        }
    }
    if let Some(err) = startup_error {
        stop_workers(workers);
        audit_writer.close();
        return Err(err);
    }

    tracing::info!(
        listen.addr = %local,
        workers = shared.config.workers,
        services = shared.config.services.len(),
        data_path = "userspace",
        "gateway listening"
    );

    // First stop signal: drain. A second one ends the drain early (every session is
    // closed at once, still with its end record).
    let _ = signals.forever().next();
    tracing::info!(
        drain.timeout_s = shared.config.drain_timeout.as_secs_f64(),
        "stop signal: draining sessions"
    );
    let wakes: Vec<OwnedFd> = workers
        .iter()
        .filter_map(|(_, w)| w.try_clone().ok())
        .collect();
    signal_all(&wakes);
    let signals_handle = signals.handle();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            tracing::warn!("second stop signal: closing all sessions now");
            signal_all(&wakes);
        }
    });

    join_workers(workers);
    signals_handle.close();
    let written = audit_writer.close();
    tracing::info!(audit.records = written, "gateway stopped");
    Ok(())
}

fn signal_all(wakes: &[OwnedFd]) {
    for wake in wakes {
        let _ = sys::fd::eventfd_signal(wake);
    }
}

/// Tells every worker to stop now and waits for them (used when start-up failed).
fn stop_workers(workers: Vec<(JoinHandle<()>, OwnedFd)>) {
    for (_, wake) in &workers {
        // Twice: once to start draining, once to end it (there are no sessions yet).
        let _ = sys::fd::eventfd_signal(wake);
        let _ = sys::fd::eventfd_signal(wake);
    }
    join_workers(workers);
}

fn join_workers(workers: Vec<(JoinHandle<()>, OwnedFd)>) {
    for (handle, _wake) in workers {
        if handle.join().is_err() {
            tracing::error!("worker thread panicked");
        }
    }
}
