//! `pgtunnel audit verify` and `pgtunnel audit show`: reading the audit trail the gateway
//! wrote. Both take the files (the current one and its rotated ones, in any order: they
//! are put in chain order by their first `seq`), or `--config` to read the gateway's
//! `audit_log` and every rotated file next to it. Checking the chain is
//! `audit::verify`'s job; this module picks the files, filters, prints, and chooses the
//! exit code: 0 for an intact chain, 1 for a broken one, 64 for a bad command line.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::Event;
use crate::audit::chain;
use crate::audit::verify::{self, Line, LineReader, VerifyOptions};
use crate::cli::UsageError;
use crate::config::GatewayConfig;

/// Problems printed by `verify`; the rest are counted.
const MAX_PRINTED_PROBLEMS: usize = 100;

/// Rows `show` reads before it fixes the column widths; later rows use the same widths.
const WIDTH_SAMPLE: usize = 1000;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain through the given files (rotated ones too). Prints one line
    /// per problem, naming the first bad record; exits 0 only when the chain is whole.
    Verify {
        #[command(flatten)]
        files: TrailArgs,
        /// Accept a chain that does not begin at seq 1 (older files archived elsewhere);
        /// its first seq and prev_sha256 are printed, to be matched against the archive.
        #[arg(long)]
        partial: bool,
    },
    /// Print the matching records as a table, or as JSON lines with --json.
    Show {
        #[command(flatten)]
        files: TrailArgs,
        /// Only records of this certificate user.
        #[arg(long)]
        user: Option<String>,
        /// Only records of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this event (session.start, session.denied, ...), or a family: session,
        /// gateway, audit.
        #[arg(long)]
        event: Option<String>,
        /// Only records this recent (90m, 1h, 2d) or since this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Print the matching lines exactly as stored (JSON lines, chain fields included).
        #[arg(long)]
        json: bool,
    },
}

/// Which files to read.
#[derive(Debug, Args)]
pub struct TrailArgs {
    /// Audit files: the current file and its rotated ones, in any order.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Read the gateway's config instead: its audit_log and the rotated files next to it.
    #[arg(long, value_name = "GATEWAY_TOML")]
    pub config: Option<PathBuf>,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { files, partial } => run_verify(&files, partial),
        AuditCommand::Show {
            files,
            user,
            service,
            event,
            since,
            json,
        } => {
            let filter = Filter {
                user,
                service,
                event: event.map(|e| parse_event(&e)).transpose()?,
                since: since
                    .map(|s| parse_since(&s, OffsetDateTime::now_utc()))
                    .transpose()?,
            };
            run_show(&files, &filter, json)
        }
    }
}

fn run_verify(args: &TrailArgs, partial: bool) -> anyhow::Result<()> {
    let files = trail_files(args)?;
    let report =
        verify::verify(&files, VerifyOptions { partial }).context("reading the audit trail")?;

    let mut out = io::stdout().lock();
    let result = (|| -> io::Result<()> {
        for problem in report.problems.iter().take(MAX_PRINTED_PROBLEMS) {
            writeln!(out, "{problem}")?;
        }
        let unprinted = report.problems.len().saturating_sub(MAX_PRINTED_PROBLEMS) as u64
            + report.more_problems;
        if unprinted > 0 {
            writeln!(out, "... and {unprinted} more problem(s)")?;
        }
        for note in &report.notes {
            writeln!(out, "note: {note}")?;
        }
        if report.is_intact() {
            match (&report.first_seq, &report.last) {
                (Some(first), Some(last)) => writeln!(
                    out,
                    "ok: {} record(s) in {} file(s), seq {}..{}, chain intact; last record's sha256 {}",
                    report.records,
                    files.len(),
                    first,
                    last.seq,
                    last.sha256
                )?,
                _ => writeln!(out, "ok: no records in {} file(s)", files.len())?,
            }
        }
        out.flush()
    })();
    ignore_broken_pipe(result)?;

    match report.problems.first() {
        None if report.is_intact() => Ok(()),
        first => {
            let total = report.problems.len() as u64 + report.more_problems;
            let at = first
                .map(|p| format!("; the first at {}:{}", p.file.display(), p.line))
                .unwrap_or_default();
            anyhow::bail!("audit chain broken: {total} problem(s){at}")
        }
    }
}

/// The files to read, in chain order.
fn trail_files(args: &TrailArgs) -> anyhow::Result<Vec<PathBuf>> {
    let files = match (&args.config, args.files.is_empty()) {
        (Some(_), false) => {
            return Err(UsageError::new("give audit files or --config, not both"));
        }
        (None, true) => {
            return Err(UsageError::new(
                "give one or more audit files, or --config GATEWAY_TOML",
            ));
        }
        (Some(config), true) => {
            let log = GatewayConfig::audit_log_of(config)
                .map_err(|err| UsageError::new(err.to_string()))?;
            let files = chain::trail_files(&log)
                .with_context(|| format!("listing the audit files of {}", log.display()))?;
            if files.is_empty() {
                anyhow::bail!(
                    "{}: gateway.audit_log: {}: no audit file there yet",
                    config.display(),
                    log.display()
                );
            }
            files
        }
        (None, false) => {
            for file in &args.files {
                if !file.is_file() {
                    return Err(UsageError::new(format!(
                        "{}: not a file (give audit files)",
                        file.display()
                    )));
                }
            }
            args.files.clone()
        }
    };
    chain::chain_order(&files).context("reading the audit files")
}

/// What `show` keeps.
struct Filter {
    user: Option<String>,
    service: Option<String>,
    event: Option<EventFilter>,
    since: Option<OffsetDateTime>,
}

enum EventFilter {
    Exact(&'static str),
    /// `session` matches `session.start`, `session.end`, ...
    Family(&'static str),
}

impl Filter {
    fn matches(&self, row: &Row) -> Option<bool> {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w))
        };
        let event_ok = match &self.event {
            None => true,
            Some(EventFilter::Exact(name)) => row.event == *name,
            Some(EventFilter::Family(family)) => {
                row.event.split_once('.').is_some_and(|(f, _)| f == *family)
            }
        };
        if !(same(&self.user, &row.user) && same(&self.service, &row.service) && event_ok) {
            return Some(false);
        }
        match self.since {
            None => Some(true),
            // A record whose time cannot be read cannot be placed: `None` counts it as
            // skipped rather than shown or silently hidden.
            Some(since) => OffsetDateTime::parse(&row.ts, &Rfc3339)
                .ok()
                .map(|ts| ts >= since),
        }
    }
}

fn parse_event(text: &str) -> anyhow::Result<EventFilter> {
    if let Some(event) = Event::ALL.iter().find(|e| e.as_str() == text) {
        return Ok(EventFilter::Exact(event.as_str()));
    }
    let families = ["session", "gateway", "audit"];
    if let Some(family) = families.iter().find(|f| **f == text) {
        return Ok(EventFilter::Family(family));
    }
    let names: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
    Err(UsageError::new(format!(
        "--event: {text:?}: expected one of {}, or a family: {}",
        names.join(", "),
        families.join(", ")
    )))
}

fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return time::Duration::try_from(ago)
            .ok()
            .and_then(|ago| now.checked_sub(ago))
            .ok_or_else(|| UsageError::new(format!("--since: {text:?}: too long ago")));
    }
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        UsageError::new(format!(
            "--since: {text:?}: expected a duration (90m, 1h, 2d) or an RFC 3339 time \
             (2026-12-03T19:00:00Z)"
        ))
    })
}

/// The fields `show` prints. Unknown fields are ignored, so newer records still show.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Row {
    seq: Option<u64>,
    ts: String,
    event: String,
    peer: Option<String>,
    service: Option<String>,
    user: Option<String>,
    reason: Option<String>,
    close_reason: Option<String>,
    outcome: Option<String>,
    bytes_from_client: Option<u64>,
    bytes_to_client: Option<u64>,
    duration_ms: Option<u64>,
    lost_records: Option<u64>,
    previous_file: Option<String>,
    torn_bytes: Option<u64>,
}

const HEADER: [&str; 9] = [
    "SEQ",
    "TS",
    "EVENT",
    "USER",
    "SERVICE",
    "PEER",
    "REASON",
    "BYTES IN/OUT",
    "DURATION",
];

impl Row {
    fn cells(&self) -> [String; 9] {
        let dash = || "-".to_string();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(dash);
        // One column for "why": the deny reason, how a session ended, a reload's outcome,
        // or what a trail record is about.
        let reason = self
            .reason
            .clone()
            .or_else(|| self.close_reason.clone())
            .or_else(|| self.outcome.clone())
            .or_else(|| self.lost_records.map(|n| format!("{n} record(s) lost")))
            .or_else(|| self.previous_file.as_ref().map(|f| format!("after {f}")))
            .or_else(|| self.torn_bytes.map(|n| format!("{n} torn byte(s)")))
            .unwrap_or_else(dash);
        let bytes = match (self.bytes_from_client, self.bytes_to_client) {
            (None, None) => dash(),
            (from, to) => format!("{}/{}", from.unwrap_or(0), to.unwrap_or(0)),
        };
        [
            self.seq.map_or_else(dash, |s| s.to_string()),
            self.ts.clone(),
            self.event.clone(),
            opt(&self.user),
            opt(&self.service),
            opt(&self.peer),
            reason,
            bytes,
            self.duration_ms.map_or_else(dash, format_ms),
        ]
    }
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
fn format_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

fn run_show(args: &TrailArgs, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let files = trail_files(args)?;
    let mut table = Table::new(json);
    let mut skipped = 0u64;
    let mut line = Line::default();
    let result = (|| -> anyhow::Result<()> {
        for path in &files {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut reader = LineReader::new(file);
            while reader
                .next(&mut line)
                .with_context(|| format!("reading {}", path.display()))?
            {
                let row = match serde_json::from_slice::<Row>(&line.content) {
                    Ok(row) if line.terminated && !line.too_long => row,
                    _ => {
                        skipped += 1;
                        continue;
                    }
                };
                match filter.matches(&row) {
                    Some(true) => table.push(&row, &line.content)?,
                    Some(false) => {}
                    None => skipped += 1,
                }
            }
        }
        table.finish()?;
        Ok(())
    })();
    if let Err(err) = result {
        if err
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            return Ok(());
        }
        return Err(err);
    }
    if table.rows == 0 {
        eprintln!("pgtunnel: no matching records");
    }
    if skipped > 0 {
        eprintln!(
            "pgtunnel: skipped {skipped} line(s) that are not readable audit records; \
             `pgtunnel audit verify` says what they are"
        );
    }
    Ok(())
}

/// Prints rows as they come, after the first [`WIDTH_SAMPLE`] have fixed the widths.
struct Table {
    json: bool,
    out: io::BufWriter<io::Stdout>,
    sample: Vec<[String; 9]>,
    widths: Option<[usize; 9]>,
    rows: u64,
}

impl Table {
    fn new(json: bool) -> Table {
        Table {
            json,
            out: io::BufWriter::new(io::stdout()),
            sample: Vec::new(),
            widths: None,
            rows: 0,
        }
    }

    fn push(&mut self, row: &Row, raw: &[u8]) -> io::Result<()> {
        self.rows += 1;
        if self.json {
            self.out.write_all(raw)?;
            return self.out.write_all(b"\n");
        }
        let cells = row.cells();
        match self.widths {
            Some(widths) => write_row(&mut self.out, &widths, &cells),
            None => {
                self.sample.push(cells);
                if self.sample.len() >= WIDTH_SAMPLE {
                    self.flush_sample()?;
                }
                Ok(())
            }
        }
    }

    fn flush_sample(&mut self) -> io::Result<()> {
        let mut widths = HEADER.map(str::len);
        for cells in &self.sample {
            for (w, cell) in widths.iter_mut().zip(cells) {
                *w = (*w).max(cell.chars().count());
            }
        }
        write_row(&mut self.out, &widths, &HEADER.map(str::to_string))?;
        for cells in std::mem::take(&mut self.sample) {
            write_row(&mut self.out, &widths, &cells)?;
        }
        self.widths = Some(widths);
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.widths.is_none() && !self.sample.is_empty() {
            self.flush_sample()?;
        }
        self.out.flush()
    }
}

fn write_row(out: &mut impl Write, widths: &[usize; 9], cells: &[String; 9]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$}  "));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// A reader that closed the pipe (`| head`) has all it wanted: not an error.
fn ignore_broken_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time_and_names_the_flag_otherwise() {
        let now = time::macros::datetime!(2026-12-03 20:00 UTC);
        assert_eq!(
            parse_since("1h", now).unwrap(),
            time::macros::datetime!(2026-12-03 19:00 UTC),
            "1h means one hour before now"
        );
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z", now).unwrap(),
            time::macros::datetime!(2026-12-01 00:00 UTC),
            "an RFC 3339 time is taken as is"
        );
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(err.starts_with("--since: \"yesterday\""), "got: {err}");
    }

    #[test]
    fn event_filter_accepts_names_and_families_only() {
        assert!(matches!(
            parse_event("session.end"),
            Ok(EventFilter::Exact("session.end"))
        ));
        assert!(matches!(
            parse_event("audit"),
            Ok(EventFilter::Family("audit"))
        ));
        let err = parse_event("session.ended").err().unwrap().to_string();
        assert!(err.contains("expected one of session.start"), "got: {err}");
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(format_ms(850), "850ms", "under a second: milliseconds");
        assert_eq!(
            format_ms(12_345),
            "12.3s",
            "under a minute: tenths of seconds"
        );
        assert_eq!(
            format_ms(245_000),
            "4m05s",
            "under an hour: minutes and seconds"
        );
        assert_eq!(format_ms(7_380_000), "2h03m", "hours and minutes");
    }

    #[test]
    fn trail_files_refuse_both_or_neither_source_as_usage_errors() {
        let neither = TrailArgs {
            files: vec![],
            config: None,
        };
        let err = trail_files(&neither).unwrap_err();
        assert!(
            err.is::<UsageError>(),
            "no files and no --config is a usage error"
        );
        let both = TrailArgs {
            files: vec![PathBuf::from("a")],
            config: Some(PathBuf::from("g.toml")),
        };
        let err = trail_files(&both).unwrap_err();
        assert!(
            err.is::<UsageError>(),
            "files and --config together is a usage error"
        );
    }

    #[test]
    fn a_missing_file_is_a_usage_error_naming_it() {
        let args = TrailArgs {
            files: vec![PathBuf::from("/nonexistent/audit.jsonl")],
            config: None,
        };
        let err = trail_files(&args).unwrap_err();
        assert!(err.is::<UsageError>(), "a missing file is a usage error");
        assert!(
            err.to_string().contains("/nonexistent/audit.jsonl"),
            "got: {err}"
        );
    }
}
