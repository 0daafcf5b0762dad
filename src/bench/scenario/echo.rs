//! The echo scenario: round trips of `--size` bytes over long-lived sessions. Each load
//! thread keeps one session per route, opened before the first round, and sends a
//! message and waits for all of it to come back, checking every byte. The round trip
//! is what a small query costs in transport alone.

use std::io::{Read, Write};
use std::time::Duration;

use super::{Context, Route, Spec, measure, metric, size_label};
use crate::bench::load::{Live, Pacing, RealClock, Tally, Window, Worker, drive};
use crate::bench::net::Conn;
use crate::bench::pgwire::refusal;
use crate::bench::results::{ScenarioResult, Unit};

pub fn run(ctx: &Context, routes: &[Route], size: usize) -> anyhow::Result<ScenarioResult> {
    let mut workers: Vec<Box<dyn Worker>> = Vec::new();
    for _ in 0..ctx.settings.connections {
        workers.push(Box::new(EchoWorker::new(routes, size)?));
    }
    let spec = Spec {
        name: "echo",
        variant: size_label(size),
        unit: "round trip",
        metrics: vec![metric("round trip", "message sent → whole echo received")],
        counting: Unit::PerOp,
        baseline: super::DIRECT,
        notes: vec![format!(
            "direct: the bench talks plain TCP to the same upstream echo server the gateway \
             forwards to; each of {} connection(s) keeps one session per route",
            ctx.settings.connections
        )],
    };
    measure(ctx, spec, routes, workers, Duration::ZERO)
}

struct EchoWorker {
    routes: Vec<Route>,
    sessions: Vec<Option<Conn>>,
    message: Vec<u8>,
    reply: Vec<u8>,
}

impl EchoWorker {
    /// Opens this thread's session on every route now, so no measured round pays for it.
    fn new(routes: &[Route], size: usize) -> anyhow::Result<EchoWorker> {
        let mut sessions = Vec::new();
        for route in routes {
            let conn = route.connector.connect().map_err(|err| {
                anyhow::anyhow!(
                    "opening an echo session via {} ({}): {err}",
                    route.name,
                    route.path
                )
            })?;
            sessions.push(Some(conn));
        }
        Ok(EchoWorker {
            routes: routes.to_vec(),
            sessions,
            // Never starts with 'P', so the upstream cannot take it for a bulk magic.
            message: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
            reply: vec![0; size],
        })
    }
}

impl Worker for EchoWorker {
    fn round(&mut self, route: usize, window: &Window, pacing: Pacing, live: &Live) -> Tally {
        let mut tally = Tally::new(1);
        let connector = &self.routes[route].connector;
        let session = &mut self.sessions[route];
        let (message, reply) = (&self.message, &mut self.reply);
        if let Some(tls) = session.as_ref().and_then(Conn::tls_description) {
            tally.fact(format!("TLS {tls}"));
        }
        drive(&RealClock, window, pacing, &mut tally, live, |_, _| {
            let conn = match session {
                Some(conn) => conn,
                None => session.insert(
                    connector
                        .connect()
                        .map_err(|e| format!("reconnecting: {e}"))?,
                ),
            };
            let result = round_trip(conn, message, reply);
            if result.is_err() {
                *session = None;
            }
            result
        });
        tally
    }
}

fn round_trip(conn: &mut Conn, message: &[u8], reply: &mut [u8]) -> Result<(), String> {
    conn.write_all(message)
        .and_then(|()| conn.flush())
        .map_err(|e| format!("sending: {e}"))?;
    conn.read_exact(&mut reply[..1])
        .map_err(|e| format!("receiving: {e}"))?;
    if reply[0] != message[0] {
        return Err(match refusal(reply[0], conn) {
            Some(text) => format!("session refused: {text}"),
            None => "the echo differs from what was sent".to_owned(),
        });
    }
    conn.read_exact(&mut reply[1..])
        .map_err(|e| format!("receiving: {e}"))?;
    if reply != message {
        return Err("the echo differs from what was sent".into());
    }
    Ok(())
}
