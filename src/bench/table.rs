//! The tables `pgtunnel bench` prints: per scenario, one latency table per metric
//! (count, rate, mean, p50, p90, p99, p99.9, p99.99, max, errors), or a throughput
//! table for bulk; then the ratios to the baseline, the CPU per operation, notes, and
//! warnings marked `!!` so nobody misses them.

use std::fmt::Write as _;

use super::histogram::format_us;
use super::results::{BenchResult, RouteResult, ScenarioResult};

/// The whole run: a header naming machine and settings, then every scenario.
pub fn render_run(result: &BenchResult) -> String {
    let mut out = String::new();
    let m = &result.machine;
    let _ = writeln!(
        out,
        "pgtunnel bench {} ({} build, {})",
        m.pgtunnel_version, m.build, m.crypto
    );
    let _ = writeln!(
        out,
        "machine: {} · {} cores usable · {}",
        m.cpu_model, m.cores, m.kernel
    );
    let _ = writeln!(out, "started: {}", result.started_at);
    for warning in &result.warnings {
        let _ = writeln!(out, "!! {warning}");
    }
    out
}

/// One scenario's tables.
pub fn render(s: &ScenarioResult) -> String {
    let mut out = String::new();
    let load = match s.load.rate {
        Some(rate) => format!(
            "open loop, {rate:.0} op/s over {} connection(s)",
            s.load.connections
        ),
        None => format!("closed loop, {} connection(s)", s.load.connections),
    };
    let _ = writeln!(
        out,
        "\n== {} {} · {load} · {:.1} s per route in {:.0} ms rounds, {:.1} s warm-up ==",
        s.name,
        s.variant,
        s.load.duration_s,
        s.load.round_s * 1000.0,
        s.load.warmup_s
    );
    if s.metrics.is_empty() {
        throughput_table(&mut out, s);
    } else {
        for info in &s.metrics {
            let rows: Vec<(&RouteResult, _)> = s
                .routes
                .iter()
                .filter_map(|r| r.metric(&info.name).map(|m| (r, m)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{} ({})", info.name, info.span);
            let _ = writeln!(
                out,
                "{:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
                "route",
                "count",
                "rate/s",
                "mean",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "p99.99",
                "max",
                "errors"
            );
            for (route, metric) in rows {
                let m = &metric.summary;
                let _ = writeln!(
                    out,
                    "{:<20} {:>9} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
                    route.name,
                    m.count,
                    m.count as f64 / route.seconds.max(1e-9),
                    format_us(m.mean),
                    format_us(m.p50 as f64),
                    format_us(m.p90 as f64),
                    format_us(m.p99 as f64),
                    format_us(m.p999 as f64),
                    format_us(m.p9999 as f64),
                    format_us(m.max as f64),
                    route.errors
                );
            }
            ratio_lines(&mut out, s, &info.name);
            thin_tail_note(&mut out, s, &info.name);
        }
        lag_lines(&mut out, s);
    }
    cpu_table(&mut out, s);
    for route in &s.routes {
        for fact in &route.facts {
            let _ = writeln!(out, "  {}: {fact}", route.name);
        }
    }
    for note in &s.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for warning in &s.warnings {
        let _ = writeln!(out, "!! {warning}");
    }
    out
}

fn throughput_table(out: &mut String, s: &ScenarioResult) {
    let _ = writeln!(
        out,
        "\n{:<20} {:>10} {:>10} {:>10} {:>20} {:>10} {:>7}",
        "route", "up MB/s", "down MB/s", "total MB/s", "per round (min–max)", "vs direct", "errors"
    );
    for r in &s.routes {
        let per_round: Vec<f64> = r
            .rounds
            .iter()
            .filter(|x| x.seconds > 0.0)
            .map(|x| (x.bytes_up + x.bytes_down) as f64 / 1e6 / x.seconds)
            .collect();
        let min = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per_round.iter().copied().fold(0.0, f64::max);
        let spread = if per_round.is_empty() {
            "-".to_owned()
        } else {
            format!("{min:.0}–{max:.0}")
        };
        let ratio = r
            .ratio
            .as_ref()
            .map(|x| format!("{:.2}×", x.throughput))
            .unwrap_or_else(|| "baseline".to_owned());
        let _ = writeln!(
            out,
            "{:<20} {:>10.1} {:>10.1} {:>10.1} {:>20} {:>10} {:>7}",
            r.name,
            r.mb_per_s_up,
            r.mb_per_s_down,
            r.mb_per_s(),
            spread,
            ratio,
            r.errors
        );
    }
}

/// Each route against the baseline on `metric`: ratios and added microseconds.
fn ratio_lines(out: &mut String, s: &ScenarioResult, metric: &str) {
    let Some(base) = s
        .routes
        .iter()
        .find(|r| r.name == s.baseline)
        .and_then(|r| r.metric(metric))
    else {
        return;
    };
    let b = &base.summary;
    for r in s.routes.iter().filter(|r| r.name != s.baseline) {
        let Some(m) = r.metric(metric) else { continue };
        let m = &m.summary;
        let x = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let rate = r.ratio.as_ref().map(|x| x.rate).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{} vs {}: p50 {:.2}× ({:+.0} µs), p99 {:.2}× ({:+.0} µs), p99.9 {:.2}×, rate {:.2}×",
            r.name,
            s.baseline,
            x(m.p50, b.p50),
            m.p50 as f64 - b.p50 as f64,
            x(m.p99, b.p99),
            m.p99 as f64 - b.p99 as f64,
            x(m.p999, b.p999),
            rate
        );
    }
}

/// Says when the highest percentiles rest on too few samples to mean much.
fn thin_tail_note(out: &mut String, s: &ScenarioResult, metric: &str) {
    let fewest = s
        .routes
        .iter()
        .filter_map(|r| r.metric(metric))
        .map(|m| m.summary.count)
        .min()
        .unwrap_or(0);
    if fewest < 10_000 {
        let _ = writeln!(
            out,
            "(with {fewest} samples, p99.99{} only restate the maximum; run longer for them)",
            if fewest < 1_000 { " and p99.9" } else { "" }
        );
    }
}

fn lag_lines(out: &mut String, s: &ScenarioResult) {
    for r in &s.routes {
        if let Some(lag) = &r.lag {
            let _ = writeln!(
                out,
                "{} send lag behind schedule: p50 {}, p99 {}, max {}",
                r.name,
                format_us(lag.summary.p50 as f64),
                format_us(lag.summary.p99 as f64),
                format_us(lag.summary.max as f64)
            );
        }
    }
}

fn cpu_table(out: &mut String, s: &ScenarioResult) {
    let per = if s.unit == "MB" {
        "MB".to_owned()
    } else {
        s.unit.clone()
    };
    let _ = writeln!(
        out,
        "\nCPU µs per {per:<12} {:>9} {:>9} {:>9} {:>9}   cores busy: {:>6} {:>7} {:>6} {:>7} {:>6}",
        "bench", "gateway", "agent", "servers", "bench", "gateway", "agent", "servers", "other"
    );
    for r in &s.routes {
        let c = &r.cpu;
        let _ = writeln!(
            out,
            "{:<24} {:>9.1} {:>9.1} {:>9.1} {:>9.1}               {:>6.2} {:>7.2} {:>6.2} {:>7.2} {:>6.2}",
            r.name,
            c.client_per_op_us,
            c.gateway_per_op_us,
            c.agent_per_op_us,
            c.servers_per_op_us,
            c.client_cores,
            c.gateway_cores,
            c.agent_cores,
            c.servers_cores,
            c.other_cores
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::histogram::Latency;
    use crate::bench::load::{CpuUse, RouteOutcome, Tally};
    use crate::bench::results::{LoadRecord, MetricInfo, Unit};

    fn route(name: &str, us: u64) -> RouteResult {
        let mut tally = Tally::new(1);
        let mut h = Latency::new();
        for i in 0..100 {
            h.record_us(us + i);
        }
        tally.latency[0] = h;
        tally.ops = 100;
        let outcome = RouteOutcome {
            name: name.into(),
            tally,
            seconds: 0.5,
            rounds: vec![(0.5, 100, 0, 0)],
            cpu: CpuUse::default(),
        };
        RouteResult::from_outcome(outcome, "p", &metrics(), Unit::PerOp).unwrap()
    }

    fn metrics() -> Vec<MetricInfo> {
        vec![MetricInfo {
            name: "round trip".into(),
            span: "sent → echoed".into(),
        }]
    }

    #[test]
    fn latency_table_has_every_column_and_the_ratio_line() {
        let mut s = ScenarioResult {
            name: "echo".into(),
            variant: "64 B".into(),
            unit: "round trip".into(),
            metrics: metrics(),
            load: LoadRecord {
                model: "closed".into(),
                connections: 2,
                rate: None,
                duration_s: 1.0,
                warmup_s: 0.5,
                round_s: 0.5,
            },
            baseline: "direct".into(),
            routes: vec![route("direct", 100), route("gateway", 300)],
            notes: vec!["direct means TCP".into()],
            warnings: vec!["machine saturated".into()],
        };
        s.compute_ratios();
        let text = render(&s);
        for column in [
            "count", "rate/s", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max",
        ] {
            assert!(text.contains(column), "column {column} missing:\n{text}");
        }
        assert!(
            text.contains("gateway vs direct: p50 2."),
            "ratio line missing:\n{text}"
        );
        assert!(
            text.contains("rate/s") && text.contains("200.0"),
            "rate 100/0.5 s:\n{text}"
        );
        assert!(
            text.contains("!! machine saturated"),
            "warnings are marked:\n{text}"
        );
        assert!(
            text.contains("note: direct means TCP"),
            "notes shown:\n{text}"
        );
    }
}
