//! `pgtunnel demo` end to end: it shows alice logged in through the tunnel and the
//! audit records, and it leaves nothing behind, whether it exits by itself
//! (`--no-wait`) or on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;

/// A demo makes a CA, a cluster, a gateway and an agent; give it room on a busy machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

/// The folders the demo says it works in: its own, and the cluster's data folder.
fn demo_dirs(stdout: &str) -> [PathBuf; 2] {
    let after = |prefix: &str| {
        let rest = stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("demo did not print {prefix:?}:\n{stdout}"));
        PathBuf::from(rest.split_whitespace().next().expect("a path"))
    };
    [after("everything lives in "), after("data folder ")]
}

/// Fails the test if a folder or a process naming it survived the demo.
fn assert_nothing_left(dirs: &[PathBuf]) {
    for dir in dirs {
        assert!(!dir.exists(), "demo left {} behind", dir.display());
        let left = processes_mentioning(dir);
        assert!(
            left.is_empty(),
            "demo left processes behind:\n{}",
            left.join("\n")
        );
    }
}

/// Whether any process still names `dir` on its command line (gateway and agent do).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn assert_shows_the_flow(stdout: &str) {
    let has = |pred: &dyn Fn(&str) -> bool| stdout.lines().any(pred);
    assert!(
        has(&|l| l.trim_start().starts_with("db_user") && l.contains("| alice")),
        "psql result does not show alice as the database user:\n{stdout}"
    );
    assert!(
        has(&|l| l.trim_start().starts_with("client_dn") && l.contains("CN=alice")),
        "psql result does not show alice's certificate subject:\n{stdout}"
    );
    for event in ["session.start", "session.end"] {
        assert!(
            has(&|l| l.contains(&format!("\"event\":\"{event}\"")) && l.contains("alice")),
            "no {event} audit record for alice in the output:\n{stdout}"
        );
    }
    assert!(
        has(&|l| l.contains("psql") && l.contains("sslmode=verify-full")),
        "no psql command line to try:\n{stdout}"
    );
}

#[test]
fn demo_shows_alice_through_the_tunnel_and_her_audit_records_then_cleans_up() {
    // Something already listens where the demo's agent wants to: it must move aside.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener to be in the way");
    let busy = busy.local_addr().expect("its address");
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--no-wait", "--listen", &busy.to_string()]);
    let out = run_bounded(cmd, DEMO_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_shows_the_flow(&stdout);
    assert!(
        stdout.contains(&format!("{busy} is busy")),
        "demo did not say it moved the agent off the busy {busy}:\n{stdout}"
    );
    assert_nothing_left(&demo_dirs(&stdout));
}

#[test]
fn demo_waits_for_ctrl_c_and_then_stops_everything_it_started() {
    // Port 0: any free port, so this test never races the other one for 5432.
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pgtunnel demo");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read until the demo says it waits; everything before is the flow.
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + DEMO_TIMEOUT;
    while !seen.contains("Press Ctrl-C") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!("demo never said it waits for Ctrl-C:\n{seen}\n--- stderr\n{stderr}");
            }
        }
    }
    assert_shows_the_flow(&seen);
    let dirs = demo_dirs(&seen);
    assert!(
        dirs.iter().all(|d| d.exists()),
        "demo folders gone while it runs: {dirs:?}"
    );

    signal(&child, "INT");
    let status = wait_bounded(&mut child, DEMO_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("demo did not exit after Ctrl-C")
    });

    assert!(status.success(), "demo exited with {status} after Ctrl-C");
    assert_nothing_left(&dirs);
}
