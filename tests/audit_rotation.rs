//! Rotation, on request (what SIGUSR1 triggers) and by size: the old file is renamed to
//! `NAME.<UTC time>`, a new one starts with `audit.rotated`, and the chain runs on across
//! the files, so `pgtunnel audit verify` over all of them (in shell-glob order, current
//! file first) passes, and fails when a rotated file goes missing.

mod audit_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use audit_support::{lines, send, trail, verify, wait_until};
use pgtunnel::audit::{AuditOptions, AuditWriter, FsyncPolicy};

#[test]
fn rotation_on_request_continues_the_chain_into_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
    for round in 0..3 {
        send(&sink, round * 10, round * 10 + 10);
        let expected = if round == 0 { 10 } else { 11 };
        assert!(
            wait_until(Duration::from_secs(5), || lines(&path).len() == expected),
            "round {round}: the writer must write the records"
        );
        if round < 2 {
            sink.rotate();
            assert!(
                wait_until(Duration::from_secs(5), || trail(&path).len() == round + 2),
                "round {round}: a rotation must leave one more archive"
            );
        }
    }
    drop(sink);
    writer.close();

    let files = trail(&path);
    assert_eq!(
        files.len(),
        3,
        "two archives and the current file: {files:?}"
    );
    for file in &files {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{} must be 0640", file.display());
    }
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(
        first["event"], "audit.rotated",
        "a new file starts with audit.rotated"
    );
    assert_eq!(
        first["previous_file"],
        files[1].file_name().unwrap().to_str().unwrap(),
        "audit.rotated names the file it follows"
    );

    // A shell glob lists the current file first; verify puts the files in chain order.
    let mut glob_order = vec![path.clone()];
    glob_order.extend(files[..2].iter().cloned());
    let out = verify(&glob_order);
    assert_eq!(
        out.code, 0,
        "the chain must run across rotation: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("ok: 32 record(s) in 3 file(s), seq 1..32"),
        "30 records and 2 rotation records: {}",
        out.stdout
    );

    std::fs::remove_file(&files[1]).unwrap();
    let out = verify(&[files[0].clone(), path.clone()]);
    assert_eq!(
        out.code, 1,
        "a missing rotated file must break the chain: {}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("seq 22: removed: seq 11 to 21 are missing"),
        "the hole must be named at the first record after it: {}",
        out.stdout
    );
}

#[test]
fn rotation_by_size_keeps_every_record_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let max = 4096;
    let options = AuditOptions {
        max_bytes: Some(max),
        fsync: FsyncPolicy::Never,
        ..AuditOptions::default()
    };
    let (writer, sink) = AuditWriter::start(&path, options).unwrap();
    // Small pauses make small batches, so the size check runs often.
    for i in 0..200 {
        send(&sink, i, i + 1);
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(sink);
    assert_eq!(writer.close(), 200, "every record must be written");

    let files = trail(&path);
    assert!(
        files.len() >= 4,
        "200 records of ~300 bytes must rotate at 4 KiB: {files:?}"
    );
    for archive in &files[..files.len() - 1] {
        let len = std::fs::metadata(archive).unwrap().len();
        assert!(
            (max..max + 64 * 1024).contains(&len),
            "{} is {len} bytes: rotated only once it reached {max}, by at most one batch",
            archive.display()
        );
    }
    let sessions: usize = files
        .iter()
        .map(|f| lines(f).iter().filter(|l| l.contains("\"session.")).count())
        .sum();
    assert_eq!(
        sessions, 200,
        "no session record may be lost or doubled by rotation"
    );
    let out = verify(&files);
    assert_eq!(
        out.code, 0,
        "the chain must survive size rotation: {}{}",
        out.stdout, out.stderr
    );
}

#[test]
fn a_writer_with_no_current_file_continues_from_the_newest_archive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    audit_support::write_trail(&path, 10);
    // What a crash between rotation's rename and its first record leaves behind.
    let archive = dir.path().join("audit.jsonl.20261203T192526.123456Z");
    std::fs::rename(&path, &archive).unwrap();

    audit_support::write_trail(&path, 5);
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(
        first["seq"], 11,
        "the new file must continue the archive's chain"
    );
    let out = verify(&[path.clone(), archive]);
    assert_eq!(
        out.code, 0,
        "archive and new file form one chain: {}{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("seq 1..15"), "{}", out.stdout);
}
