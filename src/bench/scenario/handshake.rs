//! The handshake scenario: a new connection per operation. Each operation connects,
//! completes a full mutually authenticated TLS 1.3 handshake where the bench speaks
//! TLS, sends one byte and waits for its echo, then closes (close_notify, FIN).
//!
//! Two latencies per operation: `handshake`, from TCP connect to the client's handshake
//! being complete (for routes where the bench speaks TLS), and `setup`, from TCP
//! connect to the first echoed byte: the full cost of a new session, including what the
//! server does after the client's last flight (verifying the client certificate,
//! policy, audit, connecting upstream). Routes through the agent have only `setup`: the
//! agent does the handshake.
//!
//! Resumed handshakes are measured wherever the target offers resumption: a probe
//! makes a full handshake with a client that keeps tickets and checks whether the next
//! one resumes. The gateway issues tickets unless `session_tickets = false`; a target
//! that issues none is reported as "resumption not offered by target". Full handshakes
//! use a client that never resumes, so the server still pays for issuing its ticket,
//! as it does for every new agent.

use std::io::{Read, Write};
use std::time::Duration;

use rustls::HandshakeKind;

use super::{Context, DIRECT, Route, Spec, measure, metric};
use crate::bench::load::{Live, Pacing, RealClock, Tally, Window, Worker, drive};
use crate::bench::net::Connector;
use crate::bench::pgwire::refusal;
use crate::bench::results::{ScenarioResult, Unit};

/// Suffix of a route that resumes sessions.
const RESUMED: &str = " (resumed)";

/// The routes a handshake run can have.
pub struct HandshakeRoutes {
    /// The in-process TLS terminator, for full handshakes.
    pub direct: Option<Route>,
    /// The terminator to probe and use for the resumed baseline.
    pub direct_resumable: Option<Route>,
    pub gateway: Option<Route>,
    pub agent: Option<Route>,
}

/// Runs full and (where offered) resumed handshakes, interleaved, and returns one
/// result for full handshakes and, if any route resumed, one for resumed ones.
pub fn run(ctx: &Context, given: HandshakeRoutes) -> anyhow::Result<Vec<ScenarioResult>> {
    let mut routes: Vec<Route> = Vec::new();
    let mut notes = vec![
        "direct: an in-process rustls server with the same CA, certificate types and TLS \
         settings as the gateway, which answers the byte itself; it is the cost of TLS \
         termination without pgtunnel"
            .to_owned(),
    ];
    for route in [&given.direct, &given.gateway, &given.agent]
        .into_iter()
        .flatten()
    {
        let mut full = route.clone();
        full.connector = route.connector.without_resumption();
        routes.push(full);
    }

    // Resumption: probe every TLS target; keep the ones that resume.
    let mut resumed = Vec::new();
    for route in [&given.direct_resumable, &given.gateway]
        .into_iter()
        .flatten()
    {
        let Some(connector) = route.connector.with_resumption() else {
            continue;
        };
        let label = if route.name == DIRECT {
            "direct TLS terminator"
        } else {
            &route.name
        };
        match offers_resumption(&connector) {
            Ok(true) => resumed.push(Route {
                name: format!("{}{RESUMED}", route.name),
                path: route.path.clone(),
                connector,
            }),
            Ok(false) => notes.push(format!(
                "{label}: resumption not offered by target (no session ticket after a full \
                 handshake)"
            )),
            Err(err) => notes.push(format!("{label}: resumption probe failed: {err}")),
        }
    }
    let resumed_names: Vec<String> = resumed.iter().map(|r| r.name.clone()).collect();
    routes.extend(resumed);

    let mut workers: Vec<Box<dyn Worker>> = Vec::new();
    for _ in 0..ctx.settings.connections {
        workers.push(Box::new(HandshakeWorker {
            routes: routes.clone(),
        }));
    }
    let spec = Spec {
        name: "handshake",
        variant: "full".to_owned(),
        unit: "handshake",
        metrics: vec![
            metric(
                "setup",
                "TCP connect → first echoed byte (new session ready)",
            ),
            metric(
                "handshake",
                "TCP connect → TLS handshake complete (client side)",
            ),
        ],
        counting: Unit::PerOp,
        baseline: DIRECT,
        notes,
    };
    let all = measure(ctx, spec, &routes, workers, Duration::ZERO)?;
    Ok(split_resumed(all, &resumed_names))
}

/// Separates the resumed routes into their own result with its own baseline.
fn split_resumed(mut all: ScenarioResult, resumed: &[String]) -> Vec<ScenarioResult> {
    if resumed.is_empty() {
        return vec![all];
    }
    let (res, full): (Vec<_>, Vec<_>) = all
        .routes
        .drain(..)
        .partition(|r| resumed.contains(&r.name));
    let mut resumed_result = all.clone();
    all.routes = full;
    all.warnings
        .retain(|w| !resumed.iter().any(|n| w.contains(n.as_str())));
    resumed_result.variant = "resumed".to_owned();
    resumed_result.routes = res;
    resumed_result.baseline = format!("{DIRECT}{RESUMED}");
    resumed_result.notes = vec![
        "resumed: TLS 1.3 session tickets (PSK with ECDHE); the first handshake of each \
         connection slot is full and happens during warm-up"
            .to_owned(),
    ];
    resumed_result
        .warnings
        .retain(|w| resumed.iter().any(|n| w.contains(n.as_str())));
    for r in &mut all.routes {
        r.ratio = None;
    }
    for r in &mut resumed_result.routes {
        r.ratio = None;
    }
    all.compute_ratios();
    resumed_result.compute_ratios();
    vec![all, resumed_result]
}

/// Two connections with a ticket-keeping client: does the second one resume?
fn offers_resumption(connector: &Connector) -> Result<bool, String> {
    let mut kind = None;
    for _ in 0..2 {
        let (mut conn, opened) = connector.connect_timed().map_err(|e| e.to_string())?;
        ping(&mut conn)?;
        let _ = conn.shutdown_write();
        kind = opened.kind;
    }
    Ok(kind == Some(HandshakeKind::Resumed))
}

/// One byte there and back: the server has finished its side of the handshake (and
/// sent any tickets) once the echo arrives.
fn ping(conn: &mut impl ReadWriteShut) -> Result<(), String> {
    conn.write_all(b"h")
        .and_then(|()| conn.flush())
        .map_err(|e| format!("sending: {e}"))?;
    let mut one = [0u8; 1];
    conn.read_exact(&mut one)
        .map_err(|e| format!("receiving: {e}"))?;
    if one != *b"h" {
        return Err(match refusal(one[0], conn) {
            Some(text) => format!("session refused: {text}"),
            None => "the echo differs from what was sent".to_owned(),
        });
    }
    Ok(())
}

trait ReadWriteShut: Read + Write {}
impl<T: Read + Write> ReadWriteShut for T {}

struct HandshakeWorker {
    routes: Vec<Route>,
}

impl Worker for HandshakeWorker {
    fn round(&mut self, route: usize, window: &Window, pacing: Pacing, live: &Live) -> Tally {
        let mut tally = Tally::new(2);
        let route = &self.routes[route];
        let expect_resumed = route.name.ends_with(RESUMED);
        let mut full_instead = 0u64;
        drive(
            &RealClock,
            window,
            pacing,
            &mut tally,
            live,
            |intended, tally| {
                let (mut conn, opened) = route
                    .connector
                    .connect_timed()
                    .map_err(|e| format!("connecting: {e}"))?;
                if route.connector.is_tls() {
                    tally.latency[1].record(opened.handshaken.saturating_duration_since(intended));
                }
                if expect_resumed && opened.kind != Some(HandshakeKind::Resumed) {
                    full_instead += 1;
                }
                ping(&mut conn)?;
                if tally.facts.is_empty()
                    && let Some(tls) = conn.tls_description()
                {
                    tally.fact(format!("TLS {tls}"));
                }
                let _ = conn.shutdown_write();
                Ok(())
            },
        );
        if full_instead > 0 && !window.warmup {
            tally.fact(format!(
                "{full_instead} handshake(s) on this route were full (no ticket at hand)"
            ));
        }
        tally
    }
}
