//! The results of a bench run as data: what `--json` writes and `pgtunnel report`
//! reads. One `BenchResult` per run; one `ScenarioResult` per scenario variant (echo
//! 64 B, bulk upload, ...); one `RouteResult` per path measured (direct, gateway,
//! agent+gateway). Latency histograms travel whole (encoded HDR) next to their
//! summaries, so a report can re-plot and re-merge them. Times are microseconds unless
//! a field name says otherwise; throughput is MB/s with 1 MB = 10^6 bytes.
//!
//! This module also turns the engine's raw outcome into these records, computing
//! rates, ratios to the baseline and CPU per operation, and the warnings a reader must
//! see (load generator saturated, machine noisy, schedule not kept).

use serde::{Deserialize, Serialize};

use super::histogram::{Latency, Summary};
use super::load::{CpuUse, RouteOutcome};
use super::machine::Machine;

/// Bumped when a field changes meaning; `report` refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub tool: String,
    pub format: u32,
    pub started_at: String,
    pub finished_at: String,
    /// The command line as run.
    pub command: Vec<String>,
    pub settings: SettingsRecord,
    pub machine: Machine,
    pub targets: TargetsRecord,
    pub scenarios: Vec<ScenarioResult>,
    /// Scenarios not run, each with the reason.
    pub skipped: Vec<String>,
    /// Run-wide warnings (debug build, machine noise); scenario ones live there.
    pub warnings: Vec<String>,
}

/// The settings that shaped the numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub scenarios: Vec<String>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub round_s: f64,
    pub connections: usize,
    pub rate: Option<f64>,
    pub sizes: Vec<usize>,
    pub query: String,
    pub gateway_workers: Option<usize>,
}

/// What was measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetsRecord {
    /// True when the bench started gateway, agent and upstream itself.
    pub self_hosted: bool,
    pub gateway: Option<String>,
    pub agent: Option<String>,
    pub upstream: Option<String>,
    pub postgres: Option<String>,
    /// Negotiated TLS to the gateway: "suite / key exchange group".
    pub tls: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// handshake, echo, bulk, pg.
    pub name: String,
    /// "64 B", "upload", "SELECT 1", "full".
    pub variant: String,
    /// What one operation is ("handshake", "round trip", "query"), or "transfer".
    pub unit: String,
    /// Latency metric names, in the order of each route's `latency`.
    pub metrics: Vec<MetricInfo>,
    pub load: LoadRecord,
    /// The route the others are compared with.
    pub baseline: String,
    pub routes: Vec<RouteResult>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricInfo {
    pub name: String,
    /// From where to where the latency runs, for table titles and plot captions.
    pub span: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecord {
    /// "closed" or "open".
    pub model: String,
    /// Load threads (one connection each).
    pub connections: usize,
    /// Open loop: intended operations per second over all connections.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub round_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteResult {
    /// direct, gateway, agent+gateway, ...
    pub name: String,
    /// The hops, e.g. "bench → agent → gateway → upstream".
    pub path: String,
    pub ops: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Measured time, summed over this route's rounds.
    pub seconds: f64,
    /// Operations per second over the measured time.
    pub rate: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub mb_per_s_up: f64,
    pub mb_per_s_down: f64,
    /// Per round, to show the spread.
    pub rounds: Vec<RoundRecord>,
    pub latency: Vec<MetricResult>,
    /// Open loop: how late sends were against the schedule.
    pub lag: Option<MetricResult>,
    pub cpu: CpuRecord,
    pub facts: Vec<String>,
    /// This route against the baseline; absent for the baseline itself.
    pub ratio: Option<RatioRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    pub seconds: f64,
    pub ops: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricResult {
    pub name: String,
    pub summary: Summary,
    /// (quantile, µs) points of the percentile distribution, for plotting.
    pub percentiles: Vec<(f64, u64)>,
    /// Base64 of the compressed HdrHistogram V2 serialization.
    pub hdr: String,
}

/// CPU during the measured rounds, in microseconds, and per operation (or per MB for
/// transfers). "cores" are CPU seconds per second of wall time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuRecord {
    pub client_us: f64,
    pub servers_us: f64,
    pub gateway_us: f64,
    pub agent_us: f64,
    /// Everything else on the machine (other processes, PostgreSQL, the kernel).
    pub other_us: f64,
    pub steal_us: f64,
    /// Time our load threads were runnable but had no CPU.
    pub client_wait_us: f64,
    pub gateway_wait_us: f64,
    /// Per operation (per MB for transfers).
    pub client_per_op_us: f64,
    pub gateway_per_op_us: f64,
    pub agent_per_op_us: f64,
    pub servers_per_op_us: f64,
    pub client_cores: f64,
    pub gateway_cores: f64,
    pub agent_cores: f64,
    pub servers_cores: f64,
    pub other_cores: f64,
    /// Cores the machine had busy overall.
    pub machine_busy_cores: f64,
}

/// tunnel ÷ baseline: above 1 for latencies means slower, below 1 for rates means less.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatioRecord {
    pub vs: String,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub rate: f64,
    pub throughput: f64,
    /// Added latency at p50 and p99 over the baseline, in µs.
    pub added_p50_us: f64,
    pub added_p99_us: f64,
}

/// How one scenario's operations are counted: per operation, or per MB moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    PerOp,
    PerMb,
}

impl RouteResult {
    /// Builds the record of one route from the engine's outcome.
    pub fn from_outcome(
        outcome: RouteOutcome,
        path: &str,
        metric_names: &[MetricInfo],
        unit: Unit,
    ) -> anyhow::Result<RouteResult> {
        let t = &outcome.tally;
        let seconds = outcome.seconds.max(1e-9);
        let mut latency = Vec::new();
        for (info, hist) in metric_names.iter().zip(&t.latency) {
            if !hist.is_empty() {
                latency.push(metric(&info.name, hist)?);
            }
        }
        let lag = if t.lag.is_empty() {
            None
        } else {
            Some(metric("send lag", &t.lag)?)
        };
        let per = match unit {
            Unit::PerOp => t.ops as f64,
            Unit::PerMb => (t.bytes_up + t.bytes_down) as f64 / 1e6,
        };
        Ok(RouteResult {
            name: outcome.name.clone(),
            path: path.to_owned(),
            ops: t.ops,
            errors: t.errors,
            first_errors: t.first_errors.clone(),
            seconds: outcome.seconds,
            rate: t.ops as f64 / seconds,
            bytes_up: t.bytes_up,
            bytes_down: t.bytes_down,
            mb_per_s_up: t.bytes_up as f64 / 1e6 / seconds,
            mb_per_s_down: t.bytes_down as f64 / 1e6 / seconds,
            rounds: outcome
                .rounds
                .iter()
                .map(|&(seconds, ops, up, down)| RoundRecord {
                    seconds,
                    ops,
                    bytes_up: up,
                    bytes_down: down,
                })
                .collect(),
            latency,
            lag,
            cpu: cpu_record(&outcome.cpu, seconds, per),
            facts: t.facts.clone(),
            ratio: None,
        })
    }

    /// The first latency metric's summary, if any was recorded.
    pub fn primary(&self) -> Option<&Summary> {
        self.latency.first().map(|m| &m.summary)
    }

    pub fn metric(&self, name: &str) -> Option<&MetricResult> {
        self.latency.iter().find(|m| m.name == name)
    }

    /// MB/s both directions together.
    pub fn mb_per_s(&self) -> f64 {
        self.mb_per_s_up + self.mb_per_s_down
    }
}

fn metric(name: &str, hist: &Latency) -> anyhow::Result<MetricResult> {
    Ok(MetricResult {
        name: name.to_owned(),
        summary: hist.summary(),
        percentiles: hist.curve(),
        hdr: hist.encode()?,
    })
}

fn cpu_record(cpu: &CpuUse, seconds: f64, per: f64) -> CpuRecord {
    let us = |ns: u64| ns as f64 / 1e3;
    let ours = cpu.client.run_ns + cpu.servers.run_ns + cpu.gateway.run_ns + cpu.agent.run_ns;
    let other_ns = cpu.machine.busy_ns.saturating_sub(ours);
    let per_op = |ns: u64| if per > 0.0 { us(ns) / per } else { 0.0 };
    let cores = |ns: u64| ns as f64 / 1e9 / seconds;
    CpuRecord {
        client_us: us(cpu.client.run_ns),
        servers_us: us(cpu.servers.run_ns),
        gateway_us: us(cpu.gateway.run_ns),
        agent_us: us(cpu.agent.run_ns),
        other_us: us(other_ns),
        steal_us: us(cpu.machine.steal_ns),
        client_wait_us: us(cpu.client.wait_ns),
        gateway_wait_us: us(cpu.gateway.wait_ns),
        client_per_op_us: per_op(cpu.client.run_ns),
        gateway_per_op_us: per_op(cpu.gateway.run_ns),
        agent_per_op_us: per_op(cpu.agent.run_ns),
        servers_per_op_us: per_op(cpu.servers.run_ns),
        client_cores: cores(cpu.client.run_ns),
        gateway_cores: cores(cpu.gateway.run_ns),
        agent_cores: cores(cpu.agent.run_ns),
        servers_cores: cores(cpu.servers.run_ns),
        other_cores: cores(other_ns),
        machine_busy_cores: cores(cpu.machine.busy_ns),
    }
}

impl ScenarioResult {
    /// Fills in every route's ratio against the baseline route.
    pub fn compute_ratios(&mut self) {
        let Some(base) = self
            .routes
            .iter()
            .find(|r| r.name == self.baseline)
            .cloned()
        else {
            return;
        };
        for route in &mut self.routes {
            if route.name == base.name {
                continue;
            }
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let (p, b) = (route.primary(), base.primary());
            let lat = |f: fn(&Summary) -> f64| match (p, b) {
                (Some(p), Some(b)) => div(f(p), f(b)),
                _ => 0.0,
            };
            let added = |f: fn(&Summary) -> f64| match (p, b) {
                (Some(p), Some(b)) => f(p) - f(b),
                _ => 0.0,
            };
            route.ratio = Some(RatioRecord {
                vs: base.name.clone(),
                mean: lat(|s| s.mean),
                p50: lat(|s| s.p50 as f64),
                p99: lat(|s| s.p99 as f64),
                p999: lat(|s| s.p999 as f64),
                rate: div(route.rate, base.rate),
                throughput: div(route.mb_per_s(), base.mb_per_s()),
                added_p50_us: added(|s| s.p50 as f64),
                added_p99_us: added(|s| s.p99 as f64),
            });
        }
    }

    /// Looks for signs that the numbers measure the machine or the load generator
    /// rather than the target, and records them as warnings. Warnings about the
    /// load generator name their route; machine load is summed up in one line each.
    pub fn judge(&mut self, cores: usize, tunnel_routes: &[&str]) {
        let cores_f = cores.max(1) as f64;
        let threads = self.load.connections.max(1) as f64;
        let mut warnings = Vec::new();
        let mut saturated = Vec::new();
        let mut noisy = Vec::new();
        let mut stolen = Vec::new();
        for route in &self.routes {
            let c = &route.cpu;
            let name = &route.name;
            let target = c.gateway_cores + c.agent_cores;
            let busy = c.machine_busy_cores >= 0.9 * cores_f;
            if c.client_cores >= 0.9 * threads.min(cores_f) {
                warnings.push(format!(
                    "LOAD GENERATOR WAS THE BOTTLENECK on {name}: its {} thread(s) used {:.2} \
                     cores, i.e. they were busy nearly all the time instead of waiting for the \
                     target",
                    self.load.connections, c.client_cores
                ));
            } else if tunnel_routes.contains(&name.as_str())
                && busy
                && target > 0.0
                && c.client_cores > target
            {
                warnings.push(format!(
                    "LOAD GENERATOR WAS LIKELY THE BOTTLENECK on {name}: the machine was \
                     saturated and the bench used more CPU ({:.2} cores) than gateway and agent \
                     together ({target:.2}); the tunnel figures are a lower bound",
                    c.client_cores
                ));
            }
            if busy {
                saturated.push(format!("{name} {:.2}", c.machine_busy_cores));
            }
            if c.other_cores >= 0.25 && self.name != "pg" {
                noisy.push(format!("{name} {:.2}", c.other_cores));
            }
            if route.seconds > 0.0 && c.steal_us / 1e6 / route.seconds >= 0.05 {
                stolen.push(format!(
                    "{name} {:.0} %",
                    100.0 * c.steal_us / 1e6 / route.seconds
                ));
            }
            if let (Some(rate), Some(lag)) = (self.load.rate, &route.lag) {
                let interval_us = 1e6 * threads / rate;
                if lag.summary.p99 as f64 > interval_us.max(1_000.0) {
                    warnings.push(format!(
                        "schedule not kept on {name}: p99 send lag {} µs exceeds the \
                         per-connection interval; latencies include the backlog (coordinated \
                         omission corrected), but the offered rate was not reached",
                        lag.summary.p99
                    ));
                }
                if route.rate < 0.95 * rate && route.ops > 0 {
                    warnings.push(format!(
                        "{name} completed {:.0} op/s of the {rate:.0} asked for",
                        route.rate
                    ));
                }
            }
            if route.errors > 0 {
                warnings.push(format!(
                    "{} errors on {name}; first: {}",
                    route.errors,
                    route
                        .first_errors
                        .first()
                        .map(String::as_str)
                        .unwrap_or("?")
                ));
            }
        }
        if !saturated.is_empty() {
            warnings.push(format!(
                "{MACHINE_SATURATED} (cores busy of {cores}: {}): latencies include waiting for \
                 a CPU",
                saturated.join(", ")
            ));
        }
        if !noisy.is_empty() {
            warnings.push(format!(
                "{NOISY_MACHINE}: other processes used cores meanwhile ({})",
                noisy.join(", ")
            ));
        }
        if !stolen.is_empty() {
            warnings.push(format!(
                "{STOLEN}: the hypervisor took CPU time from this VM ({})",
                stolen.join(", ")
            ));
        }
        self.warnings.extend(warnings);
    }
}

/// Openings of the warnings about the machine rather than the bench or the target.
pub const MACHINE_SATURATED: &str = "machine saturated";
pub const NOISY_MACHINE: &str = "noisy machine";
pub const STOLEN: &str = "steal time";

/// Whether a warning is about machine load (shown folded in the report) rather than
/// about the bench, the target or errors.
pub fn is_machine_note(warning: &str) -> bool {
    [MACHINE_SATURATED, NOISY_MACHINE, STOLEN, "only "]
        .iter()
        .any(|p| warning.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Tally;

    fn route(name: &str, us: u64, ops: u64) -> RouteResult {
        let mut tally = Tally::new(1);
        for _ in 0..ops {
            tally.latency[0].record_us(us);
        }
        tally.ops = ops;
        let outcome = RouteOutcome {
            name: name.into(),
            tally,
            seconds: 1.0,
            rounds: vec![(1.0, ops, 0, 0)],
            cpu: CpuUse::default(),
        };
        let metrics = [MetricInfo {
            name: "round trip".into(),
            span: "send → reply".into(),
        }];
        RouteResult::from_outcome(outcome, "x", &metrics, Unit::PerOp).unwrap()
    }

    fn scenario(routes: Vec<RouteResult>) -> ScenarioResult {
        ScenarioResult {
            name: "echo".into(),
            variant: "64 B".into(),
            unit: "round trip".into(),
            metrics: vec![],
            load: LoadRecord {
                model: "closed".into(),
                connections: 1,
                rate: None,
                duration_s: 1.0,
                warmup_s: 0.0,
                round_s: 1.0,
            },
            baseline: "direct".into(),
            routes,
            notes: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn ratios_compare_each_route_with_the_baseline() {
        let mut s = scenario(vec![route("direct", 100, 1000), route("gateway", 250, 400)]);
        s.compute_ratios();
        assert!(
            s.routes[0].ratio.is_none(),
            "the baseline has no ratio to itself"
        );
        let r = s.routes[1].ratio.as_ref().unwrap();
        assert!((r.p50 - 2.5).abs() < 0.01, "p50 ratio {}", r.p50);
        assert!((r.rate - 0.4).abs() < 0.01, "rate ratio {}", r.rate);
        assert!(
            (r.added_p99_us - 150.0).abs() < 1.0,
            "added p99 {}",
            r.added_p99_us
        );
    }

    #[test]
    fn a_busy_load_generator_is_called_the_bottleneck() {
        let mut s = scenario(vec![route("gateway", 100, 10)]);
        s.routes[0].cpu.client_cores = 0.97;
        s.judge(2, &["gateway"]);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with("LOAD GENERATOR WAS THE BOTTLENECK")),
            "one client thread at 0.97 cores must be flagged: {:?}",
            s.warnings
        );
    }

    #[test]
    fn a_quiet_run_has_no_warnings() {
        let mut s = scenario(vec![route("direct", 100, 10), route("gateway", 200, 10)]);
        s.routes[1].cpu.client_cores = 0.2;
        s.routes[1].cpu.gateway_cores = 0.3;
        s.routes[1].cpu.machine_busy_cores = 0.6;
        s.judge(2, &["gateway"]);
        assert!(
            s.warnings.is_empty(),
            "unexpected warnings: {:?}",
            s.warnings
        );
    }
}
