//! The capacity estimate per gateway core, and the model behind it (the report prints
//! the same explanation next to the numbers).
//!
//! Each gateway worker owns one core and shares nothing with the others, so one core is
//! modelled as one M/M/1 queue: Poisson arrivals, exponentially distributed service
//! time S, where S is the gateway's measured CPU time per operation. In an M/M/1 queue
//! the response time is exponential with mean S / (1 − ρ) at utilisation ρ, so its
//! 99th percentile is S · ln(100) / (1 − ρ). Everything else on the path (network,
//! client, upstream, PostgreSQL) is taken as the p99 the direct baseline measured in the
//! same run, L. The highest utilisation within a p99 budget B is then
//!
//!   ρ_max = 1 − S · ln(100) / (B − L), kept between 0 and 0.9,
//!
//! and a core carries ρ_max / S operations per second. Throughput (MB/s) has no latency
//! budget; it is planned at a fixed 80 % utilisation. Concurrent sessions are the
//! queries per second a core carries divided by an assumed per-session query rate.

use std::f64::consts::LN_10;

use crate::bench::results::{BenchResult, RouteResult, ScenarioResult};
use crate::bench::scenario::{AGENT, GATEWAY};

/// Highest utilisation the model plans for, whatever the budget allows: beyond it a
/// small change in load moves latency a lot, and real service times are burstier than
/// exponential.
pub const MAX_UTILISATION: f64 = 0.9;
/// Utilisation at which throughput is planned.
pub const THROUGHPUT_UTILISATION: f64 = 0.8;

/// ln(100): the 99th percentile of an exponential distribution in units of its mean.
const LN_100: f64 = 2.0 * LN_10;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub p99_budget_us: f64,
    /// Queries per second one active session sends, for the sessions estimate.
    pub session_rate: f64,
}

/// One line of the capacity table.
#[derive(Debug, Clone)]
pub struct Row {
    /// "full mTLS handshakes/s", "queries/s (SELECT 1)", ...
    pub what: String,
    pub run: String,
    pub route: String,
    /// The estimate per core; `None` when the gateway's CPU was not measured.
    pub per_core: Option<f64>,
    pub unit: String,
    /// Gateway CPU per operation (per MB for throughput), µs.
    pub service_us: Option<f64>,
    /// Direct p99 taken as the rest of the path, µs.
    pub base_us: Option<f64>,
    pub utilisation: Option<f64>,
    /// What the run itself showed, for the reader to check the model against.
    pub evidence: String,
    /// Measured p99 of the tunnel route was within the budget.
    pub within_budget: Option<bool>,
    pub note: Option<String>,
}

/// The highest utilisation at which an M/M/1 core with service time `service_us`, behind
/// a path that already costs `base_us` at p99, keeps p99 within `budget_us`.
pub fn max_utilisation(service_us: f64, base_us: f64, budget_us: f64) -> f64 {
    let room = budget_us - base_us;
    if room <= 0.0 || service_us <= 0.0 {
        return 0.0;
    }
    (1.0 - service_us * LN_100 / room).clamp(0.0, MAX_UTILISATION)
}

/// Capacity rows for every run, scenario by scenario.
pub fn estimate(runs: &[(String, BenchResult)], options: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    for (label, run) in runs {
        let mut queries_per_core = None;
        for s in &run.scenarios {
            match (s.name.as_str(), s.variant.as_str()) {
                ("handshake", "full") => rows.extend(latency_row(
                    s,
                    label,
                    GATEWAY,
                    "full mTLS handshakes/s",
                    options,
                )),
                ("echo", size) => rows.extend(latency_row(
                    s,
                    label,
                    GATEWAY,
                    &format!("round trips/s ({size})"),
                    options,
                )),
                ("pg", query) => {
                    let row =
                        latency_row(s, label, AGENT, &format!("queries/s ({query})"), options);
                    queries_per_core = row.as_ref().and_then(|r| r.per_core).or(queries_per_core);
                    rows.extend(row);
                }
                ("bulk", direction) => rows.extend(throughput_row(s, label, direction)),
                _ => {}
            }
        }
        if let Some(qps) = queries_per_core {
            rows.push(Row {
                what: "concurrent active sessions".to_owned(),
                run: label.clone(),
                route: AGENT.to_owned(),
                per_core: Some(qps / options.session_rate),
                unit: "sessions".to_owned(),
                service_us: None,
                base_us: None,
                utilisation: None,
                evidence: format!(
                    "queries/s per core ÷ {} queries/s per session",
                    trim(options.session_rate)
                ),
                within_budget: None,
                note: Some("idle sessions cost memory, not CPU".to_owned()),
            });
        }
    }
    rows
}

fn latency_row(
    s: &ScenarioResult,
    run: &str,
    route_name: &str,
    what: &str,
    options: &Options,
) -> Option<Row> {
    let route = pick(s, route_name)?;
    let base = s
        .routes
        .iter()
        .find(|r| r.name == s.baseline)
        .and_then(RouteResult::primary)
        .map(|m| m.p99 as f64);
    let measured = route.primary()?;
    let service = (route.cpu.gateway_us > 0.0).then_some(route.cpu.gateway_per_op_us);
    let (per_core, utilisation, note) = match (service, base) {
        (Some(svc), Some(base)) => {
            let rho = max_utilisation(svc, base, options.p99_budget_us);
            let note = (rho == 0.0).then(|| {
                "the direct path alone, plus one service time, exceeds the budget".to_owned()
            });
            (Some(rho * 1e6 / svc), Some(rho), note)
        }
        (None, _) => (
            None,
            None,
            Some("gateway CPU not measured (give --gateway-pid)".to_owned()),
        ),
        (_, None) => (
            None,
            None,
            Some("no direct baseline in this run".to_owned()),
        ),
    };
    Some(Row {
        what: what.to_owned(),
        run: run.to_owned(),
        route: route.name.clone(),
        per_core,
        unit: "/s".to_owned(),
        service_us: service,
        base_us: base,
        utilisation,
        evidence: format!(
            "{}/s at p99 {} with {:.2} gateway cores busy",
            trim(route.rate),
            crate::bench::histogram::format_us(measured.p99 as f64),
            route.cpu.gateway_cores
        ),
        within_budget: Some((measured.p99 as f64) <= options.p99_budget_us),
        note,
    })
}

fn throughput_row(s: &ScenarioResult, run: &str, direction: &str) -> Option<Row> {
    let route = pick(s, GATEWAY)?;
    let service = (route.cpu.gateway_us > 0.0).then_some(route.cpu.gateway_per_op_us);
    Some(Row {
        what: format!("MB/s ({direction})"),
        run: run.to_owned(),
        route: route.name.clone(),
        per_core: service.map(|svc| THROUGHPUT_UTILISATION * 1e6 / svc),
        unit: "MB/s".to_owned(),
        service_us: service,
        base_us: None,
        utilisation: service.map(|_| THROUGHPUT_UTILISATION),
        evidence: format!(
            "{:.0} MB/s with {:.2} gateway cores busy",
            route.mb_per_s(),
            route.cpu.gateway_cores
        ),
        within_budget: None,
        note: service
            .is_none()
            .then(|| "gateway CPU not measured (give --gateway-pid)".to_owned()),
    })
}

/// The route named `preferred`, else any tunnel route.
fn pick<'a>(s: &'a ScenarioResult, preferred: &str) -> Option<&'a RouteResult> {
    s.routes.iter().find(|r| r.name == preferred).or_else(|| {
        s.routes
            .iter()
            .find(|r| r.name == GATEWAY || r.name == AGENT)
    })
}

/// A count without pointless decimals: 1234, 12.5, 0.25.
pub fn trim(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_leaves_room_for_queueing_within_the_budget() {
        // S = 100 µs, L = 1 ms, B = 5 ms: 1 - 100 × 4.605 / 4000 = 0.885.
        let rho = max_utilisation(100.0, 1_000.0, 5_000.0);
        assert!((rho - 0.8849).abs() < 0.001, "ρ = {rho}");
        // The M/M/1 p99 at that utilisation lands exactly on the budget.
        let p99 = 1_000.0 + 100.0 * LN_100 / (1.0 - rho);
        assert!((p99 - 5_000.0).abs() < 1.0, "p99 at ρ_max = {p99}");
    }

    #[test]
    fn utilisation_is_capped_and_never_negative() {
        assert_eq!(
            max_utilisation(1.0, 0.0, 1e6),
            MAX_UTILISATION,
            "capped at 0.9"
        );
        assert_eq!(
            max_utilisation(2_000.0, 1_000.0, 5_000.0),
            0.0,
            "service too slow"
        );
        assert_eq!(
            max_utilisation(10.0, 6_000.0, 5_000.0),
            0.0,
            "path already over budget"
        );
    }
}
