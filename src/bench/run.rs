//! One bench run from settings to results: prepare the targets, run each scenario in
//! turn (printing its tables as soon as it is done), then write `--json` and `--hgrm`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use super::hgrm;
use super::histogram::Latency;
use super::machine::{self, Machine};
use super::progress::Progress;
use super::results::{BenchResult, FORMAT_VERSION, ScenarioResult, SettingsRecord};
use super::scenario::bulk::Direction;
use super::scenario::{self, Context, GATEWAY};
use super::settings::{ScenarioKind, Settings, Target};
use super::table;
use super::targets::Env;
use crate::cli::UsageError;

pub fn run(settings: &Settings) -> anyhow::Result<BenchResult> {
    let started_at = machine::now_rfc3339();
    let machine = Machine::probe();
    let progress = Progress::new(settings.progress);
    let want_pg = settings.scenarios.contains(&ScenarioKind::Pg);
    let mut env = Env::prepare(settings, want_pg)?;

    let mut result = BenchResult {
        tool: "pgtunnel bench".to_owned(),
        format: FORMAT_VERSION,
        started_at,
        finished_at: String::new(),
        command: settings.command.clone(),
        settings: settings_record(settings),
        machine,
        targets: env.record.clone(),
        scenarios: Vec::new(),
        skipped: Vec::new(),
        warnings: run_warnings(&Machine::probe()),
    };
    print!("{}", table::render_run(&result));
    flush_stdout();

    let probes = env.probes.clone();
    let ctx = Context {
        settings,
        probes: &probes,
        progress: &progress,
        cores: result.machine.cores,
    };
    for &kind in &settings.scenarios {
        let outcome = run_kind(&ctx, &env, kind, settings);
        match outcome {
            Ok(scenarios) => {
                for s in scenarios {
                    print!("{}", table::render(&s));
                    flush_stdout();
                    result.scenarios.push(s);
                }
            }
            Err(RunError::Failed(err)) => return Err(err),
            Err(RunError::Unavailable(reason)) => {
                let line = format!("{}: {reason}", kind.name());
                if settings.explicit_scenarios {
                    return Err(match settings.target {
                        Target::External(_) => UsageError::new(format!("--scenario {line}")),
                        Target::SelfHosted { .. } => anyhow::anyhow!("--scenario {line}"),
                    });
                }
                println!("\nskipped {line}");
                result.skipped.push(line);
            }
        }
        if let Err(err) = env.check_alive() {
            return Err(err.context(format!("after the {} scenario", kind.name())));
        }
    }

    result.finished_at = machine::now_rfc3339();
    result.targets.tls = tls_fact(&result.scenarios);
    if let Some(path) = &settings.json {
        write_json(&result, path)?;
        println!("\nresults: {}", path.display());
    }
    if let Some(dir) = &settings.hgrm {
        let n = write_hgrm(&result, dir)?;
        println!("{n} .hgrm files in {}", dir.display());
    }
    Ok(result)
}

fn run_kind(
    ctx: &Context,
    env: &Env,
    kind: ScenarioKind,
    settings: &Settings,
) -> Result<Vec<ScenarioResult>, RunError> {
    let fail = |e: anyhow::Error| RunError::Failed(e);
    match kind {
        ScenarioKind::Handshake => {
            let routes = env
                .handshake
                .as_ref()
                .map_err(|r| RunError::Unavailable(r.clone()))?;
            let given = scenario::handshake::HandshakeRoutes {
                direct: routes.direct.clone(),
                direct_resumable: routes.direct_resumable.clone(),
                gateway: routes.gateway.clone(),
                agent: routes.agent.clone(),
            };
            scenario::handshake::run(ctx, given).map_err(fail)
        }
        ScenarioKind::Echo => {
            let routes = env
                .stream
                .as_ref()
                .map_err(|r| RunError::Unavailable(r.clone()))?;
            let mut out = Vec::new();
            for &size in &settings.sizes {
                out.push(scenario::echo::run(ctx, routes, size).map_err(fail)?);
            }
            Ok(out)
        }
        ScenarioKind::Bulk => {
            let routes = env
                .stream
                .as_ref()
                .map_err(|r| RunError::Unavailable(r.clone()))?;
            let mut out = Vec::new();
            for direction in Direction::ALL {
                out.push(scenario::bulk::run(ctx, routes, direction).map_err(fail)?);
            }
            Ok(out)
        }
        ScenarioKind::Pg => {
            let routes = env
                .pg
                .as_ref()
                .map_err(|r| RunError::Unavailable(r.clone()))?;
            Ok(vec![
                scenario::pg::run(ctx, routes, &settings.query).map_err(fail)?,
            ])
        }
    }
}

/// Why a scenario produced no result.
enum RunError {
    Unavailable(String),
    Failed(anyhow::Error),
}

fn settings_record(s: &Settings) -> SettingsRecord {
    SettingsRecord {
        scenarios: s.scenarios.iter().map(|k| k.name().to_owned()).collect(),
        duration_s: s.duration.as_secs_f64(),
        warmup_s: s.warmup.as_secs_f64(),
        round_s: s.round.as_secs_f64(),
        connections: s.connections,
        rate: s.rate,
        sizes: s.sizes.clone(),
        query: s.query.clone(),
        gateway_workers: match s.target {
            Target::SelfHosted { gateway_workers } => Some(gateway_workers),
            Target::External(_) => None,
        },
    }
}

fn run_warnings(machine: &Machine) -> Vec<String> {
    let mut warnings = Vec::new();
    if machine.build == "debug" {
        warnings.push(
            "DEBUG BUILD: the load generator and the targets run unoptimised code; use \
             `cargo build --release` for numbers anyone should read"
                .to_owned(),
        );
    }
    if machine.cores <= 2 {
        warnings.push(format!(
            "only {} core(s): load generator, gateway, agent and upstream share them, so the \
             tunnel's latency includes waiting for a CPU; CPU per operation is the figure that \
             carries over to a dedicated host",
            machine.cores
        ));
    }
    warnings
}

/// The negotiated TLS parameters to the gateway, as a handshake or echo route saw them.
fn tls_fact(scenarios: &[ScenarioResult]) -> Option<String> {
    scenarios
        .iter()
        .flat_map(|s| &s.routes)
        .filter(|r| r.name == GATEWAY)
        .flat_map(|r| &r.facts)
        .find_map(|f| f.strip_prefix("TLS ").map(str::to_owned))
}

fn write_json(result: &BenchResult, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(result).context("encoding the results")?;
    fs::write(path, text + "\n").with_context(|| format!("--json: writing {}", path.display()))
}

/// One file per scenario, route and metric: `echo-64KiB-gateway-round_trip.hgrm`.
fn write_hgrm(result: &BenchResult, dir: &Path) -> anyhow::Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("--hgrm: creating {}", dir.display()))?;
    let mut written = 0;
    for s in &result.scenarios {
        for route in &s.routes {
            for metric in &route.latency {
                let name = file_name(&[&s.name, &s.variant, &route.name, &metric.name]);
                let path = dir.join(format!("{name}.hgrm"));
                let hist = Latency::decode(&metric.hdr)?;
                let mut out = Vec::new();
                hgrm::write(&hist, &mut out)?;
                fs::write(&path, out)
                    .with_context(|| format!("--hgrm: writing {}", path.display()))?;
                written += 1;
            }
        }
    }
    Ok(written)
}

/// Joins parts with '-', keeping letters, digits, '.' and '_' (spaces become '_').
fn file_name(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .filter_map(|c| match c {
                    c if c.is_ascii_alphanumeric() || c == '.' || c == '_' => Some(c),
                    ' ' | '+' => Some('_'),
                    _ => None,
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_file_names_are_safe_and_readable() {
        assert_eq!(
            file_name(&["echo", "64 B", "agent+gateway", "round trip"]),
            "echo-64_B-agent_gateway-round_trip"
        );
        assert_eq!(
            file_name(&["pg", "SELECT 1; --x/../", "direct", "query"]),
            "pg-SELECT_1_x..-direct-query"
        );
    }
}
