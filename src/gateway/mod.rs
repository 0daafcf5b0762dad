//! The gateway: per-core workers that accept mTLS connections, decide who may reach which
//! PostgreSQL service, audit the decision and pump the bytes.
//!
//! The main thread loads the configuration and TLS material into an immutable [`Shared`],
//! binds one SO_REUSEPORT listener per worker (the kernel spreads connections across
//! them), starts the pinned workers and the audit writer, and then only handles control:
//! SIGTERM/SIGINT drain and exit; SIGHUP reloads (`reload`); a changed CRL file is picked
//! up within half a second. A reload swaps the `Arc<Shared>` atomically; workers read it
//! at each new session and their sweep re-checks live sessions against it. Workers share
//! nothing mutable; each owns its ring, listener, sessions and counters (`worker`). One
//! session, start to end, is in `session`; the allow/deny decision in `policy`.

mod listener;
mod policy;
mod reload;
mod session;
mod worker;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::audit::{AuditError, AuditWriter};
use crate::config::GatewayConfig;
use crate::pki::crl::RevocationList;
use crate::{pki, sys, tls};

pub use policy::{Decision, authorize};

/// How often the main thread looks at the CRL file for changes.
const CRL_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file named in the config cannot be used; `field` is the config key.
    #[error("{field}: {path:?}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
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

/// What every worker reads and nobody writes: the configuration and everything loaded
/// from the files it names. Replaced whole on reload.
pub struct Shared {
    pub config: GatewayConfig,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub crl: Option<RevocationList>,
    /// Kept across reloads when its settings do not change, so tickets stay valid.
    pub ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    /// Grows by one with every successful reload; the sweep uses it to re-check sessions.
    pub generation: u64,
}

/// The current [`Shared`], swapped atomically on reload.
pub type SharedCell = Arc<ArcSwap<Shared>>;

impl Shared {
    /// Loads everything the config names (certificate, key, client CA, CRL). This is
    /// also what `gateway --check` runs. Errors name the config field of the file at fault.
    pub fn load(config: GatewayConfig) -> Result<Shared, GatewayError> {
        Self::load_after(config, None)
    }

    /// Like `load`, keeping what can be kept from `previous` (the ticket keys).
    pub fn load_after(
        config: GatewayConfig,
        previous: Option<&Shared>,
    ) -> Result<Shared, GatewayError> {
        let field =
            |name: &'static str, path: &std::path::Path, reason: String| GatewayError::File {
                field: name,
                path: path.display().to_string(),
                reason,
            };
        let chain = pki::load_certs(&config.cert)
            .map_err(|err| field("gateway.cert", &config.cert, err.to_string()))?;
        let key = pki::load_private_key(&config.key)
            .map_err(|err| field("gateway.key", &config.key, err.to_string()))?;
        let roots = tls::load_roots(&config.client_ca)
            .map_err(|err| field("gateway.client_ca", &config.client_ca, err.to_string()))?;
        let crl = match &config.crl {
            Some(path) => Some(
                RevocationList::load(path)
                    .map_err(|err| field("gateway.crl", path, err.to_string()))?,
            ),
            None => None,
        };
        let ticketer = ticketer(&config, previous).map_err(|err| {
            field(
                "gateway.ticket_key_file",
                config
                    .ticket_key_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
                err.to_string(),
            )
        })?;
        let crls = crl.iter().map(|c| c.der.clone()).collect();
        let server_tls =
            tls::server_config(chain, key, roots, crls, ticketer.clone()).map_err(|err| {
                let reason = format!("cannot be used with gateway.key, client_ca and crl: {err}");
                field("gateway.cert", &config.cert, reason)
            })?;
        Ok(Shared {
            config,
            server_tls: Arc::new(server_tls),
            crl,
            ticketer,
            generation: 0,
        })
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.crl
            .as_ref()
            .is_some_and(|crl| crl.is_revoked(serial_hex))
    }
}

/// The ticket producer for `config`: reused from `previous` when the ticket settings
/// are unchanged (a reload must not invalidate every agent's ticket), else new.
fn ticketer(
    config: &GatewayConfig,
    previous: Option<&Shared>,
) -> Result<Option<Arc<dyn rustls::server::ProducesTickets>>, tls::tickets::TicketKeyError> {
    if !config.session_tickets {
        return Ok(None);
    }
    if let Some(prev) = previous
        && prev.config.ticket_key_file == config.ticket_key_file
        && prev.config.ticket_rotation == config.ticket_rotation
        && prev.ticketer.is_some()
    {
        return Ok(prev.ticketer.clone());
    }
    let ticketer = match &config.ticket_key_file {
        Some(path) => tls::tickets::RotatingTicketer::from_file(path, config.ticket_rotation)?,
        None => tls::tickets::RotatingTicketer::random(config.ticket_rotation)?,
    };
    Ok(Some(Arc::new(ticketer)))
}

/// Control events for the main thread.
enum Control {
    Stop,
    Reload,
    RotateAudit,
}

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub fn run(shared: Shared) -> Result<(), GatewayError> {
    let config = shared.config.clone();
    match sys::fd::raise_nofile_limit() {
        Ok(limit) if (limit as usize) < config.max_sessions * 2 + 64 => tracing::warn!(
            nofile = limit,
            max_sessions = config.max_sessions,
            "open-file limit is below two descriptors per allowed session"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
    }
    let cell: SharedCell = Arc::new(ArcSwap::from_pointee(shared));
    let (audit_writer, audit_sink) = AuditWriter::start(&config.audit_log, config.audit.clone())?;
    let listeners = listener::bind(config.listen, config.workers)?;
    let local = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket());
    let local = local.map(|a| a.to_string()).unwrap_or_default();

    // Signals are registered before the workers start, so an early one is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|err| GatewayError::Os("signals", err))?;
    let signals_handle = signals.handle();
    let (control_tx, control_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("pgtunnel-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Control::Reload,
                    SIGUSR1 => Control::RotateAudit,
                    _ => Control::Stop,
                };
                if control_tx.send(event).is_err() {
                    break;
                }
            }
        })
        .map_err(|err| GatewayError::Os("spawning signal thread", err))?;

    let workers = start_workers(&cell, &audit_sink, listeners)?;
    // Only the workers hold sinks: the writer's close waits for every sink to go.
    drop(audit_sink);
    let wakes: Vec<OwnedFd> = workers
        .iter()
        .filter_map(|(_, w)| w.try_clone().ok())
        .collect();
    tracing::info!(
        listen.addr = %local,
        workers = config.workers,
        services = config.services.len(),
        // The kTLS pump (pump::ktls) is not wired in yet: docs/limitations.md.
        data_path = "userspace",
        "gateway listening"
    );

    // Control loop: reloads, CRL changes, and the first stop signal.
    let mut reloader = reload::Reloader::new(cell.clone());
    loop {
        match control_rx.recv_timeout(CRL_POLL) {
            Ok(Control::Reload) => reloader.reload_all(&audit_writer),
            Ok(Control::RotateAudit) => {
                tracing::info!("SIGUSR1: rotating the audit log");
                audit_writer.rotate();
            }
            Ok(Control::Stop) => break,
            Err(RecvTimeoutError::Timeout) => reloader.poll_crl(&audit_writer),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!(
        drain.timeout_s = cell.load().config.drain_timeout.as_secs_f64(),
        "stop signal: draining sessions"
    );
    signal_all(&wakes);

    // A second stop signal ends the drain early: every session is closed at once, still
    // with its end record. Reloads are ignored while draining.
    std::thread::spawn(move || {
        while let Ok(event) = control_rx.recv() {
            if let Control::Stop = event {
                tracing::warn!("second stop signal: closing all sessions now");
                signal_all(&wakes);
            }
        }
    });

    join_workers(workers);
    drop(reloader);
    signals_handle.close();
    let written = audit_writer.close();
    tracing::info!(audit.records = written, "gateway stopped");
    Ok(())
}

fn start_workers(
    cell: &SharedCell,
    audit_sink: &crate::audit::AuditSink,
    listeners: Vec<socket2::Socket>,
) -> Result<Vec<(JoinHandle<()>, OwnedFd)>, GatewayError> {
    let cpus = sys::affinity::allowed_cpus().unwrap_or_default();
    let mut workers: Vec<(JoinHandle<()>, OwnedFd)> = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    for (id, listener) in listeners.into_iter().enumerate() {
        let wake = sys::fd::eventfd().map_err(|err| GatewayError::Os("eventfd", err))?;
        let wake_worker = wake
            .try_clone()
            .map_err(|err| GatewayError::Os("eventfd", err))?;
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let setup = worker::WorkerSetup {
            id,
            cpu,
            shared: cell.clone(),
            audit: audit_sink.clone(),
            listener,
            wake: wake_worker,
            ready: ready_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("pgtunnel-w{id}"))
            .spawn(move || worker::run(setup))
            .map_err(|err| GatewayError::Os("spawning worker", err))?;
        workers.push((handle, wake));
    }
    drop(ready_tx);

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
        return Err(err);
    }
    Ok(workers)
}

fn signal_all(wakes: &[OwnedFd]) {
    for wake in wakes {
        let _ = sys::fd::eventfd_signal(wake);
    }
}

/// Tells every worker to stop now and waits for them (used when start-up failed).
fn stop_workers(workers: Vec<(JoinHandle<()>, OwnedFd)>) {
    for (_, wake) in &workers {
        // Two signals: stop accepting, and do not wait for a drain (there are no sessions).
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
