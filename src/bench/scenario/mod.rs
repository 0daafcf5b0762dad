//! The four scenarios — handshake, echo, bulk, pg — each a set of `Worker`s for the load
//! engine plus the description of what its numbers mean. What they have in common
//! lives here: a `Route` (one way to reach the upstream, named and described), the
//! `Context` every scenario runs in, and turning the engine's outcomes into a
//! `ScenarioResult` with ratios and warnings.
//!
//! What "direct" means differs per scenario and is stated in each result's notes:
//! for echo and bulk it is the bench talking plain TCP to the same upstream the gateway
//! forwards to; for handshake it is an in-process rustls server with the same kind of
//! certificates (the cost of TLS termination itself, without pgtunnel); for pg it is
//! the bench logging in to PostgreSQL directly, with the same TLS and certificate.

pub mod bulk;
pub mod echo;
pub mod handshake;
pub mod pg;

use std::time::Duration;

use super::load::{self, Plan, Probes, Worker};
use super::net::Connector;
use super::progress::Progress;
use super::results::{LoadRecord, MetricInfo, RouteResult, ScenarioResult, Unit};
use super::settings::Settings;

/// Route names used across scenarios; the tunnel routes are judged against the target.
pub const DIRECT: &str = "direct";
pub const GATEWAY: &str = "gateway";
pub const AGENT: &str = "agent+gateway";

/// One way to reach the upstream.
#[derive(Clone)]
pub struct Route {
    pub name: String,
    /// The hops, e.g. "bench → agent → gateway → upstream".
    pub path: String,
    pub connector: Connector,
}

impl Route {
    pub fn new(name: &str, path: &str, connector: Connector) -> Route {
        Route {
            name: name.to_owned(),
            path: path.to_owned(),
            connector,
        }
    }
}

/// What every scenario needs besides its routes.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub probes: &'a Probes,
    pub progress: &'a Progress,
    pub cores: usize,
}

impl Context<'_> {
    /// The engine plan for `routes` under the run's settings.
    pub fn plan(&self, title: &str, routes: &[String], round_floor: Duration) -> Plan {
        Plan {
            title: title.to_owned(),
            routes: routes.to_vec(),
            warmup: self.settings.warmup,
            duration: self.settings.duration,
            round: self.settings.round.max(round_floor),
            rate: self.settings.rate,
        }
    }

    fn load_record(&self, plan: &Plan, connections: usize) -> LoadRecord {
        LoadRecord {
            model: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            connections,
            rate: plan.rate,
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            round_s: plan.round.as_secs_f64(),
        }
    }
}

/// What a scenario tells `measure` about itself.
pub struct Spec<'a> {
    pub name: &'a str,
    pub variant: String,
    pub unit: &'a str,
    pub metrics: Vec<MetricInfo>,
    pub counting: Unit,
    pub baseline: &'a str,
    pub notes: Vec<String>,
}

/// Runs `workers` over `routes` and builds the scenario's result.
pub fn measure(
    ctx: &Context,
    spec: Spec,
    routes: &[Route],
    workers: Vec<Box<dyn Worker>>,
    round_floor: Duration,
) -> anyhow::Result<ScenarioResult> {
    let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
    let title = format!("{} {}", spec.name, spec.variant);
    let plan = ctx.plan(&title, &names, round_floor);
    let connections = workers.len();
    let busy = settle(ctx.probes);
    let outcomes = load::run(&plan, workers, spec.metrics.len(), ctx.probes, ctx.progress)?;
    let mut results = Vec::new();
    for (outcome, route) in outcomes.into_iter().zip(routes) {
        results.push(RouteResult::from_outcome(
            outcome,
            &route.path,
            &spec.metrics,
            spec.counting,
        )?);
    }
    let mut scenario = ScenarioResult {
        name: spec.name.to_owned(),
        variant: spec.variant,
        unit: spec.unit.to_owned(),
        metrics: spec.metrics,
        load: ctx.load_record(&plan, connections),
        baseline: spec.baseline.to_owned(),
        routes: results,
        notes: spec.notes,
        warnings: busy.map(idle_warning).into_iter().collect(),
    };
    scenario.compute_ratios();
    let tunnel: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(GATEWAY) || n.starts_with(AGENT))
        .collect();
    scenario.judge(ctx.cores, &tunnel);
    Ok(scenario)
}

/// Targets busier than this while nothing is sent to them are still serving old
/// sessions.
const IDLE_LIMIT_CORES: f64 = 0.05;

/// Waits (a few seconds at most) for the gateway and agents to go idle before a
/// scenario starts. Returns the cores they still used if they never did.
pub fn settle(probes: &Probes) -> Option<f64> {
    if probes.gateway.is_none() && probes.agents.is_empty() {
        return None;
    }
    let mut cores = 0.0;
    for _ in 0..10 {
        cores = load::target_idle_cores(probes, Duration::from_millis(300));
        if cores < IDLE_LIMIT_CORES {
            return None;
        }
    }
    Some(cores)
}

fn idle_warning(cores: f64) -> String {
    format!(
        "TARGET NOT IDLE: before this scenario the gateway and agent used {cores:.2} cores with \
         no traffic from the bench, so sessions of an earlier scenario were still being served; \
         their CPU columns include that work"
    )
}

pub fn metric(name: &str, span: &str) -> MetricInfo {
    MetricInfo {
        name: name.to_owned(),
        span: span.to_owned(),
    }
}

/// A byte count the way people read it: "64 B", "16 KiB", "1 MiB".
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}
