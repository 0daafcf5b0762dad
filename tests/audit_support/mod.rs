//! Helpers shared by the audit tests: writing a real trail with the real writer, and
//! running the real `pgtunnel` binary on it. Nothing here is a fake: the files are made
//! by `AuditWriter` exactly as the gateway makes them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgtunnel::audit::{AuditOptions, AuditRecord, AuditSink, CloseReason, DenyReason, Event};

/// The `i`th record of a small, varied trail: alice's sessions start and end on
/// service "main", bob is refused on "reporting".
pub fn record(i: usize) -> AuditRecord {
    let peer = format!("127.0.0.1:{}", 40_000 + i % 20_000)
        .parse()
        .unwrap();
    let session = format!("t-{}", i / 3);
    match i % 3 {
        0 => {
            let mut r = AuditRecord::new(Event::SessionStart, &session, peer).service(Some("main"));
            r.user = Some("alice".into());
            r
        }
        1 => {
            let mut r = AuditRecord::new(Event::SessionEnd, &session, peer).service(Some("main"));
            r.user = Some("alice".into());
            r.bytes_from_client = Some(100 + i as u64);
            r.bytes_to_client = Some(2000 + i as u64);
            r.duration_ms = Some(1500);
            r.close_reason = Some(CloseReason::ClientClosed);
            r
        }
        _ => {
            let mut r = AuditRecord::new(Event::SessionDenied, &session, peer)
                .service(Some("reporting"))
                .reason(DenyReason::PolicyDenied, Some("not allowed".into()));
            r.user = Some("bob".into());
            r
        }
    }
}

/// Sends records `from..to` through `sink`.
pub fn send(sink: &AuditSink, from: usize, to: usize) {
    for i in from..to {
        sink.record(record(i))
            .expect("a healthy writer must queue every record");
    }
}

/// Writes a trail of `n` records at `path` with the real writer and closes it.
pub fn write_trail(path: &Path, n: usize) {
    let (writer, sink) = pgtunnel::audit::AuditWriter::start(path, AuditOptions::default())
        .expect("the audit writer must start");
    send(&sink, 0, n);
    drop(sink);
    assert_eq!(writer.close(), n as u64, "every record must be written");
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("audit file readable")
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("audit file writable");
}

/// The exit code, stdout and stderr of `pgtunnel ARGS...`.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn pgtunnel(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtunnel"))
        .args(args)
        .output()
        .expect("pgtunnel runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pgtunnel audit verify FILES...`.
pub fn verify(files: &[PathBuf]) -> Output {
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pgtunnel(&args)
}

/// Polls `cond` every 20 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Every file of the trail at `path` (rotated ones and the current one).
pub fn trail(path: &Path) -> Vec<PathBuf> {
    pgtunnel::audit::chain::trail_files(path).expect("folder readable")
}

/// `pgtunnel audit verify FILE`.
pub fn verify_file(path: &Path) -> Output {
    verify(&[path.to_path_buf()])
}
