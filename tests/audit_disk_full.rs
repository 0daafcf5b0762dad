//! A full file system under the audit log, for real: a small tmpfs mounted for the test
//! (which needs root; without it the tests say loudly that they were skipped). While
//! the log cannot be written the writer must stop admitting sessions (fail closed) or,
//! with `on_audit_failure = "continue"`, admit them and count what it loses; no line in
//! the file may be left half-written; and once space is freed it must write everything
//! it kept, with the chain intact.

mod audit_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use audit_support::{lines, record, send, verify_file, wait_until};
use pgtunnel::audit::{AuditError, AuditOptions, AuditWriter, FailurePolicy};

/// A tmpfs mounted in a temporary folder, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { _dir: dir, mnt })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A failed test may leave the writer thread holding the file: detach lazily then.
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!(
                "warning: could not unmount the test tmpfs at {}",
                self.mnt.display()
            );
        }
    }
}

fn mount_or_skip(size: &str, test: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED {test}: cannot mount a tmpfs ({why}); run as root to test a full disk ***\n"
            );
            None
        }
    }
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xa5u8; 4096];
    for _ in 0..1_000_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // Byte by byte into the last page, so not even a short record fits.
    for _ in 0..4096 {
        if f.write_all(&[0]).is_err() {
            break;
        }
    }
    filler
}

fn assert_whole_lines(path: &Path, when: &str) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "{when}: the file must end in a whole line"
    );
    let out = verify_file(path);
    assert_eq!(
        out.code, 0,
        "{when}: every line written must be intact: {}",
        out.stdout
    );
}

#[test]
fn a_full_disk_refuses_sessions_then_recovers_with_the_chain_intact() {
    let Some(fs) = mount_or_skip("64k", "a_full_disk_refuses_sessions_...") else {
        return;
    };
    let path = fs.mnt.join("audit.jsonl");
    let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
    send(&sink, 0, 20);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&path).len() == 20),
        "20 records written"
    );
    assert!(sink.admits_sessions(), "a healthy log admits sessions");

    let filler = fill(&fs.mnt);
    send(&sink, 20, 60);
    assert!(
        wait_until(Duration::from_secs(5), || !sink.admits_sessions()),
        "a full disk must stop new sessions (fail closed)"
    );
    assert!(sink.is_failing(), "the writer must say it is failing");
    assert_whole_lines(&path, "while the disk is full");

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || sink.admits_sessions()),
        "once space is freed the writer must recover and admit sessions again"
    );
    send(&sink, 60, 70);
    drop(sink);
    assert_eq!(
        writer.close(),
        70,
        "every record kept during the failure must be written"
    );

    let session_lines = lines(&path)
        .iter()
        .filter(|l| l.contains("\"session."))
        .count();
    assert_eq!(
        session_lines, 70,
        "no record may be lost or doubled by the retries"
    );
    assert_whole_lines(&path, "after recovery");
}

#[test]
fn records_dropped_while_the_disk_is_full_are_counted_in_an_audit_lost_record() {
    let Some(fs) = mount_or_skip("64m", "records_dropped_while_the_disk_is_full_...") else {
        return;
    };
    let path = fs.mnt.join("audit.jsonl");
    let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
    let filler = fill(&fs.mnt);
    send(&sink, 0, 1);
    assert!(
        wait_until(Duration::from_secs(5), || sink.is_failing()),
        "the writer must notice the full disk"
    );

    // The writer takes nothing from the queue while it fails: it fills, then refuses.
    let mut refused = 0u64;
    for i in 1..70_000 {
        match sink.record(record(i)) {
            Ok(()) => {}
            Err(AuditError::QueueFull) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert!(
        refused > 0,
        "70,000 records must overflow the bounded queue"
    );
    assert_eq!(
        sink.lost(),
        refused,
        "every refused record is counted as lost"
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || sink.admits_sessions()),
        "the writer must recover"
    );
    drop(sink);
    writer.close();

    let lost: Vec<serde_json::Value> = lines(&path)
        .iter()
        .filter(|l| l.contains("\"audit.lost\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lost.len(), 1, "one audit.lost record after the failure");
    assert_eq!(
        lost[0]["lost_records"], refused,
        "it must count exactly the refused records"
    );
    assert_whole_lines(&path, "after recovery");
}

#[test]
fn with_continue_a_full_disk_still_admits_sessions() {
    let Some(fs) = mount_or_skip("64k", "with_continue_a_full_disk_...") else {
        return;
    };
    let path = fs.mnt.join("audit.jsonl");
    let options = AuditOptions {
        on_failure: FailurePolicy::Continue,
        ..AuditOptions::default()
    };
    let (writer, sink) = AuditWriter::start(&path, options).unwrap();
    let filler = fill(&fs.mnt);
    send(&sink, 0, 40);
    assert!(
        wait_until(Duration::from_secs(5), || sink.is_failing()),
        "the writer must notice the full disk"
    );
    assert!(
        sink.admits_sessions(),
        "on_audit_failure = continue keeps admitting sessions"
    );
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !sink.is_failing()),
        "the writer must recover"
    );
    drop(sink);
    assert_eq!(
        writer.close(),
        40,
        "the records queued during the failure are written"
    );
    assert_whole_lines(&path, "after recovery");
}

#[test]
fn closing_while_the_disk_is_full_gives_up_promptly_and_leaves_whole_lines() {
    let Some(fs) = mount_or_skip("64k", "closing_while_the_disk_is_full_...") else {
        return;
    };
    let path = fs.mnt.join("audit.jsonl");
    let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
    send(&sink, 0, 5);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&path).len() == 5),
        "5 records written"
    );
    let _filler = fill(&fs.mnt);
    send(&sink, 5, 45);
    assert!(
        wait_until(Duration::from_secs(5), || sink.is_failing()),
        "the writer must notice the full disk"
    );
    drop(sink);
    let started = std::time::Instant::now();
    let written = writer.close();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close must not hang on a disk that stays full (took {:?})",
        started.elapsed()
    );
    // The file's last page may still hold a few records after the disk is full; the
    // 40 sent after it cannot all fit.
    assert!(
        (5..45).contains(&written),
        "some records, not all 45, can reach a full disk (written: {written})"
    );
    assert_eq!(
        lines(&path).len() as u64,
        written,
        "the file must hold exactly the records reported written, nothing half-written"
    );
    assert_whole_lines(&path, "after giving up");
}
