//! `pgtunnel audit verify` and `pgtunnel audit show` on trails written by the real audit
//! writer and then tampered with the way an intruder (or a crash) would: one edited,
//! removed or swapped line, a cut final line, a line that is not JSON. Each time the
//! real binary must name the first bad record and exit 1; an intact trail exits 0.

mod audit_support;

use std::path::{Path, PathBuf};

use audit_support::{lines, pgtunnel, verify_file, write_lines, write_trail};

fn trail_of(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_trail(&path, n);
    (dir, path)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn at(path: &Path, line: usize) -> String {
    format!("{}:{line}: ", path.display())
}

#[test]
fn an_intact_trail_verifies_with_exit_0() {
    let (_dir, path) = trail_of(30);
    let out = verify_file(&path);
    assert_eq!(
        out.code, 0,
        "an intact trail must pass: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("ok: 30 record(s) in 1 file(s), seq 1..30, chain intact"),
        "the summary must count the records: {}",
        out.stdout
    );
}

#[test]
fn an_edited_line_is_named_as_the_first_bad_record() {
    let (_dir, path) = trail_of(30);
    let mut l = lines(&path);
    assert!(
        l[9].contains("\"alice\""),
        "line 10 should be one of alice's records"
    );
    l[9] = l[9].replace("\"alice\"", "\"mallory\"");
    write_lines(&path, &l);

    let out = verify_file(&path);
    assert_eq!(out.code, 1, "an edited trail must fail: {}", out.stdout);
    let expected = format!("{}seq 10: edited:", at(&path, 10));
    assert!(
        first_line(&out.stdout).starts_with(&expected),
        "expected {expected:?} first, got:\n{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one edit is one problem: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("audit chain broken: 1 problem(s)"),
        "stderr must sum up: {}",
        out.stderr
    );
}

#[test]
fn a_removed_line_is_named_at_the_record_after_the_hole() {
    let (_dir, path) = trail_of(30);
    let mut l = lines(&path);
    l.remove(9);
    write_lines(&path, &l);

    let out = verify_file(&path);
    assert_eq!(out.code, 1, "a trail with a hole must fail: {}", out.stdout);
    let expected = format!("{}seq 11: removed: seq 10 is missing", at(&path, 10));
    assert!(
        first_line(&out.stdout).starts_with(&expected),
        "expected {expected:?}, got:\n{}",
        out.stdout
    );
}

#[test]
fn two_swapped_lines_are_reported_once_as_reordered() {
    let (_dir, path) = trail_of(30);
    let mut l = lines(&path);
    l.swap(9, 10);
    write_lines(&path, &l);

    let out = verify_file(&path);
    assert_eq!(out.code, 1, "a reordered trail must fail: {}", out.stdout);
    let expected = format!("{}seq 11: reordered:", at(&path, 10));
    assert!(
        first_line(&out.stdout).starts_with(&expected),
        "expected {expected:?}, got:\n{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "a swap is one problem, not a cascade: {}",
        out.stdout
    );
}

#[test]
fn a_cut_final_line_is_a_torn_line_not_a_record() {
    let (_dir, path) = trail_of(30);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 25]).unwrap();

    let out = verify_file(&path);
    assert_eq!(out.code, 1, "a torn final line must fail: {}", out.stdout);
    let expected = format!("{}torn line:", at(&path, 30));
    assert!(
        first_line(&out.stdout).starts_with(&expected),
        "expected {expected:?}, got:\n{}",
        out.stdout
    );
}

#[test]
fn a_line_that_is_not_json_is_named_as_bad_json() {
    let (_dir, path) = trail_of(30);
    let mut l = lines(&path);
    l[19] = "{\"seq\":20, this is not json".to_string();
    write_lines(&path, &l);

    let out = verify_file(&path);
    assert_eq!(out.code, 1, "a bad line must fail: {}", out.stdout);
    let expected = format!("{}bad JSON:", at(&path, 20));
    assert!(
        first_line(&out.stdout).starts_with(&expected),
        "expected {expected:?}, got:\n{}",
        out.stdout
    );
}

#[test]
fn the_current_file_alone_is_a_partial_chain_accepted_only_with_partial() {
    let (_dir, path) = trail_of(30);
    let mut l = lines(&path);
    l.drain(..10);
    write_lines(&path, &l);

    let out = verify_file(&path);
    assert_eq!(
        out.code, 1,
        "a chain that starts at seq 11 is not whole: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("seq 11: chain start:"),
        "must say where the chain begins: {}",
        out.stdout
    );

    let p = path.display().to_string();
    let out = pgtunnel(&["audit", "verify", "--partial", &p]);
    assert_eq!(
        out.code, 0,
        "--partial accepts it: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("the chain begins at seq 11 with prev_sha256"),
        "the starting point must be printed for matching with the archive: {}",
        out.stdout
    );
}

#[test]
fn verify_and_show_refuse_a_bad_command_line_with_exit_64() {
    let out = pgtunnel(&["audit", "verify"]);
    assert_eq!(out.code, 64, "no files is a usage error: {}", out.stderr);
    let out = pgtunnel(&["audit", "show", "/nonexistent/audit.jsonl"]);
    assert_eq!(
        out.code, 64,
        "a missing file is a usage error: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("/nonexistent/audit.jsonl"),
        "{}",
        out.stderr
    );

    let (_dir, path) = trail_of(3);
    let p = path.display().to_string();
    let out = pgtunnel(&["audit", "show", &p, "--event", "session.ended"]);
    assert_eq!(
        out.code, 64,
        "an unknown event is a usage error: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--event: \"session.ended\""),
        "{}",
        out.stderr
    );
    let out = pgtunnel(&["audit", "show", &p, "--since", "last tuesday"]);
    assert_eq!(
        out.code, 64,
        "a bad --since is a usage error: {}",
        out.stderr
    );
}

#[test]
fn show_filters_by_user_event_and_time_and_prints_an_aligned_table() {
    let (_dir, path) = trail_of(9);
    let p = path.display().to_string();

    let out = pgtunnel(&["audit", "show", &p, "--user", "bob"]);
    assert_eq!(out.code, 0, "show must succeed: {}", out.stderr);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        rows.len(),
        4,
        "a header and bob's 3 denials:\n{}",
        out.stdout
    );
    assert!(
        rows[0].starts_with("SEQ"),
        "the first line is the header: {}",
        rows[0]
    );
    for row in &rows[1..] {
        assert!(
            row.contains("session.denied") && row.contains("bob") && row.contains("policy_denied"),
            "every row must be one of bob's denials: {row}"
        );
    }
    let column = rows[0].find("EVENT").unwrap();
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[column..].starts_with("session.denied")),
        "columns must line up under their header:\n{}",
        out.stdout
    );

    let out = pgtunnel(&[
        "audit",
        "show",
        &p,
        "--event",
        "session.end",
        "--since",
        "1h",
    ]);
    let ends: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(
        ends.len(),
        3,
        "three session ends within the hour:\n{}",
        out.stdout
    );
    assert!(
        ends.iter()
            .all(|r| r.contains("client_closed") && r.contains("1.5s")),
        "an end row shows how it ended and how long it took:\n{}",
        out.stdout
    );

    let out = pgtunnel(&["audit", "show", &p, "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(out.stdout, "", "nothing is newer than the year 2999");
    assert!(out.stderr.contains("no matching records"), "{}", out.stderr);
}

#[test]
fn show_json_prints_the_stored_lines_unchanged() {
    let (_dir, path) = trail_of(9);
    let p = path.display().to_string();
    let out = pgtunnel(&[
        "audit",
        "show",
        &p,
        "--event",
        "session",
        "--service",
        "main",
        "--json",
    ]);
    assert_eq!(out.code, 0, "show --json must succeed: {}", out.stderr);
    let stored = lines(&path);
    let shown: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        shown.len(),
        6,
        "alice's 3 starts and 3 ends:\n{}",
        out.stdout
    );
    for line in shown {
        assert!(
            stored.iter().any(|s| s == line),
            "each JSON line must be byte for byte a stored line (so it still hashes): {line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(v["service"], "main", "the service filter must hold: {line}");
    }
}

#[test]
fn verify_with_config_reads_the_gateways_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("log")).unwrap();
    let path = dir.path().join("log/audit.jsonl");
    write_trail(&path, 12);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[gateway]\nlisten = \"127.0.0.1:0\"\ncert = \"s.crt\"\nkey = \"s.key\"\n\
         client_ca = \"ca.crt\"\naudit_log = \"log/audit.jsonl\"\n",
    )
    .unwrap();
    let c = config.display().to_string();
    let out = pgtunnel(&["audit", "verify", "--config", &c]);
    assert_eq!(
        out.code, 0,
        "the configured trail must verify: {}{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("ok: 12 record(s)"), "{}", out.stdout);

    let out = pgtunnel(&["audit", "show", "--config", &c, "--user", "alice"]);
    assert_eq!(
        out.stdout.lines().count(),
        9,
        "header and alice's 8 records:\n{}",
        out.stdout
    );
}
