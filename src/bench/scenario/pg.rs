//! The pg scenario: a query (`SELECT 1` unless `--query`) over long-lived sessions to
//! real PostgreSQL, through agent + gateway and directly, interleaved. Each load thread
//! logs in once per route before the first round (SSLRequest, TLS with the login
//! certificate, certificate authentication: see `pgwire`) and then runs the query over
//! and over with the simple-query protocol. Through the agent, the bench's TLS to
//! PostgreSQL runs inside the tunnel's TLS, exactly as psql's does.

use std::time::Duration;

use super::{Context, Spec, measure, metric};
use crate::bench::load::{Live, Pacing, RealClock, Tally, Window, Worker, drive};
use crate::bench::pgwire::{PgSession, PgTarget};
use crate::bench::results::{ScenarioResult, Unit};

/// A way to reach PostgreSQL, named like the other scenarios' routes.
#[derive(Clone)]
pub struct PgRoute {
    pub name: String,
    pub path: String,
    pub target: PgTarget,
}

pub fn run(ctx: &Context, routes: &[PgRoute], query: &str) -> anyhow::Result<ScenarioResult> {
    let mut workers: Vec<Box<dyn Worker>> = Vec::new();
    for _ in 0..ctx.settings.connections {
        workers.push(Box::new(PgWorker::new(routes, query)?));
    }
    let spec = Spec {
        name: "pg",
        variant: query.to_owned(),
        unit: "query",
        metrics: vec![metric("query", "Query sent → ReadyForQuery received")],
        counting: Unit::PerOp,
        baseline: super::DIRECT,
        notes: vec![
            "direct: the bench logs in to PostgreSQL itself, with the same TLS and login \
             certificate (sslmode=verify-full, pg_hba `cert`); through the agent that TLS \
             runs inside the tunnel"
                .to_owned(),
            "PostgreSQL's own CPU is part of \"other\" in the CPU columns".to_owned(),
        ],
    };
    // The routes' connectors are only used to describe the paths here.
    let described: Vec<super::Route> = routes
        .iter()
        .map(|r| super::Route::new(&r.name, &r.path, r.target.connector.clone()))
        .collect();
    measure(ctx, spec, &described, workers, Duration::ZERO)
}

struct PgWorker {
    routes: Vec<PgRoute>,
    sessions: Vec<Option<PgSession>>,
    query: String,
}

impl PgWorker {
    fn new(routes: &[PgRoute], query: &str) -> anyhow::Result<PgWorker> {
        let mut sessions = Vec::new();
        for route in routes {
            let mut session = PgSession::open(&route.target).map_err(|err| {
                anyhow::anyhow!(
                    "logging in to PostgreSQL via {} ({}): {err}",
                    route.name,
                    route.path
                )
            })?;
            // A query that fails is a usage mistake; say so before any round starts.
            session
                .simple_query(query)
                .map_err(|err| anyhow::anyhow!("--query {query:?}: {err}"))?;
            sessions.push(Some(session));
        }
        Ok(PgWorker {
            routes: routes.to_vec(),
            sessions,
            query: query.to_owned(),
        })
    }
}

impl Worker for PgWorker {
    fn round(&mut self, route: usize, window: &Window, pacing: Pacing, live: &Live) -> Tally {
        let mut tally = Tally::new(1);
        let target = &self.routes[route].target;
        let session = &mut self.sessions[route];
        let query = &self.query;
        drive(&RealClock, window, pacing, &mut tally, live, |_, _| {
            let s = match session {
                Some(s) => s,
                None => session
                    .insert(PgSession::open(target).map_err(|e| format!("logging in again: {e}"))?),
            };
            match s.simple_query(query) {
                Ok(_rows) => Ok(()),
                Err(err) => {
                    *session = None;
                    Err(err.to_string())
                }
            }
        });
        tally
    }
}
