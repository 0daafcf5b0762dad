//! `pgtunnel report RESULT.json... --out report.html`: read bench results and write one
//! self-contained HTML page (see `bench::report`). An unreadable or foreign input file,
//! or a bad flag, is one line naming it and exit 64.

use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::bench::machine;
use crate::bench::report::{self, capacity::Options};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files written by `pgtunnel bench --json`.
    #[arg(required = true, value_name = "RESULT.json")]
    pub results: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The p99 latency a client may see, for the capacity estimate.
    #[arg(long, default_value = "5ms")]
    pub p99_budget: String,
    /// Queries per second one active session sends, for the sessions estimate.
    #[arg(long, default_value_t = 10.0)]
    pub session_rate: f64,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let budget = humantime::parse_duration(&args.p99_budget).map_err(|e| {
        UsageError::new(format!(
            "--p99-budget {:?}: {e} (e.g. 5ms)",
            args.p99_budget
        ))
    })?;
    if budget.is_zero() {
        return Err(UsageError::new("--p99-budget: must be more than 0"));
    }
    if !(args.session_rate.is_finite() && args.session_rate > 0.0) {
        return Err(UsageError::new(format!(
            "--session-rate {}: must be a positive number of queries per second",
            args.session_rate
        )));
    }
    let mut runs = Vec::new();
    for path in &args.results {
        let result = report::load(path).map_err(|e| UsageError::new(format!("{e:#}")))?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        runs.push((label, result));
    }
    let options = Options {
        p99_budget_us: budget.as_secs_f64() * 1e6,
        session_rate: args.session_rate,
    };
    let html = report::render(&runs, &options, &machine::now_rfc3339());
    std::fs::write(&args.out, html)
        .map_err(|e| UsageError::new(format!("--out {}: {e}", args.out.display())))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
