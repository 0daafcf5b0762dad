//! The audit writer thread and the bounded queue that feeds it.
//!
//! Workers never touch the file: they `try_send` into a bounded channel and carry on.
//! The writer thread gives each record its place in the hash chain (`seq`,
//! `prev_sha256`; see `chain`), appends whole batches with one write, syncs as
//! `audit_fsync` says, rotates, and handles a log that cannot be written: it stops
//! taking records from the queue, keeps the batch it could not write (the chain
//! fields are already in it, so the retry writes the very same bytes), and tries again
//! every [`RETRY_EVERY`]. While it fails, [`AuditSink::admits_sessions`] tells the
//! gateway to refuse new sessions, unless `on_audit_failure = "continue"`. Records that
//! never reach the file are counted, and an `audit.lost` record says how many as soon
//! as the file can be written again.
//!
//! What the file does on disk (appending, cutting back a partial write, rotation,
//! recovering from a torn line) is in `file`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{io, path::Path, path::PathBuf};

use super::chain::{Chained, Head, line_sha256};
use super::file::{Torn, TrailFile};
use super::{AuditRecord, Event};

/// How long the writer waits for a record before it looks at the clock (interval syncs,
/// rotation requests).
const TICK: Duration = Duration::from_millis(100);

/// How long the writer lets records gather after the first of a burst. Waking it costs
/// the worker that sends a record a futex call and the machine a context switch; a
/// gateway busy with handshakes sent one per record (two per session) without this.
/// Records reach the file up to this much later; nothing waits for them meanwhile.
const LINGER: Duration = Duration::from_millis(5);

/// How many records may wait for the writer before sinks report `QueueFull`.
const QUEUE_CAPACITY: usize = 65_536;

/// Records written with one write. It bounds the memory a failing writer holds, and the
/// torn tail a crash can leave (see `chain::TAIL_WINDOW`).
const BATCH: usize = 1024;

/// How often a failing writer tries again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// How often a failure that persists is logged again.
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);

/// How often lost records are logged.
const LOST_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often the head of the chain is written to the diagnostic log while it moves: a
/// copy outside the file, so cutting records from its end can be noticed.
const HEAD_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long to wait before trying again a rotation that failed.
const ROTATE_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path}: in use by another process (it holds the file's lock)")]
    InUse { path: PathBuf },
    #[error("audit log {path}: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("audit queue is full: the writer cannot keep up or cannot write")]
    QueueFull,
    #[error("audit writer has stopped")]
    Closed,
}

/// How the writer makes records durable (`audit_fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every batch written.
    Always,
    /// fdatasync at most once per period while records are written (and when idle, once
    /// the period has passed since the last one).
    Interval(Duration),
    /// Never while running; the kernel writes back when it likes. Still synced on
    /// rotation and close.
    Never,
}

/// What the gateway does while the audit log cannot be written (`on_audit_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse new sessions (fail closed). The default.
    Refuse,
    /// Let sessions go on; records that cannot be kept are counted as lost.
    Continue,
}

/// Settings for [`AuditWriter::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    pub fsync: FsyncPolicy,
    pub on_failure: FailurePolicy,
    /// Rotate once the file reaches this many bytes (it may pass it by one batch).
    pub max_bytes: Option<u64>,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            on_failure: FailurePolicy::Refuse,
            max_bytes: None,
        }
    }
}

/// The sending side; cheap to clone, one per worker.
#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<AuditRecord>,
    state: Arc<WriterState>,
}

/// The writer thread. The thread that owns it can also record ([`AuditWriter::record`])
/// and ask for rotation; [`AuditWriter::close`] drains it.
pub struct AuditWriter {
    thread: Option<JoinHandle<()>>,
    tx: Option<SyncSender<AuditRecord>>,
    state: Arc<WriterState>,
}

struct WriterState {
    on_failure: FailurePolicy,
    /// The last write or sync failed and has not succeeded since.
    failing: AtomicBool,
    /// The writer thread has ended (closed, or panicked).
    stopped: AtomicBool,
    /// `close` was called: a failing writer stops retrying.
    closing: AtomicBool,
    rotate_requested: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl AuditSink {
    /// Queues a record. `Err` means it was not queued and `on_audit_failure` is
    /// `refuse`: the caller must refuse the session it describes, if it can. With
    /// `continue` this never fails; a record that cannot be queued is counted as lost.
    pub fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        queue(&self.tx, &self.state, record)
    }

    /// True when the writer has hit a write error and not recovered.
    pub fn is_failing(&self) -> bool {
        self.state.failing.load(Ordering::Relaxed)
    }

    /// Whether a new session may start: false while the log cannot be written (or the
    /// writer has stopped) and `on_audit_failure` is `refuse`. Checked at accept; a
    /// refusal is audited as `audit_unavailable`, on a best-effort basis.
    pub fn admits_sessions(&self) -> bool {
        self.state.admits_sessions()
    }

    /// Asks the writer to rotate the file (SIGUSR1). It happens within [`TICK`], or once
    /// the log can be written again.
    pub fn rotate(&self) {
        self.state.rotate_requested.store(true, Ordering::Relaxed);
    }

    /// Records dropped so far (queue full, log unwritable, shutdown while failing).
    pub fn lost(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }
}

impl AuditWriter {
    /// Opens (creating, mode 0640) `path`, continues its chain, and starts the writer
    /// thread. A file that ends in a torn line (the last writer was killed mid-write)
    /// first gets an `audit.recovered` record naming the torn bytes; a file whose end
    /// holds no chained record at all is refused ([`AuditError::Damaged`]).
    pub fn start(
        path: &Path,
        options: AuditOptions,
    ) -> Result<(AuditWriter, AuditSink), AuditError> {
        let opened = TrailFile::open(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let state = Arc::new(WriterState::new(options.on_failure));
        let mut writer = Writer::new(opened.file, opened.head, options, state.clone());
        if let Some(torn) = opened.torn {
            writer.recover(&torn);
        }
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("pgtunnel-audit".into())
            .spawn(move || {
                let _stopped = Stopped(thread_state);
                writer.run(&rx);
            })
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let sink = AuditSink {
            tx: tx.clone(),
            state: state.clone(),
        };
        let writer = AuditWriter {
            thread: Some(thread),
            tx: Some(tx),
            state,
        };
        Ok((writer, sink))
    }

    /// Queues a record from the thread that owns the writer (`gateway.reload`); same
    /// contract as [`AuditSink::record`].
    pub fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        match &self.tx {
            Some(tx) => queue(tx, &self.state, record),
            None => Err(AuditError::Closed),
        }
    }

    /// Asks the writer to rotate the file; see [`AuditSink::rotate`].
    pub fn rotate(&self) {
        self.state.rotate_requested.store(true, Ordering::Relaxed);
    }

    /// See [`AuditSink::admits_sessions`].
    pub fn admits_sessions(&self) -> bool {
        self.state.admits_sessions()
    }

    /// Records dropped so far; see [`AuditSink::lost`].
    pub fn lost(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Waits for the writer to write, sync and close everything queued, and returns how
    /// many queued records reached the file. Every sink must have been dropped first, or
    /// this waits for them. A writer that still cannot write makes one last attempt and
    /// counts what it could not write as lost.
    pub fn close(mut self) -> u64 {
        self.state.closing.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.state.written.load(Ordering::Relaxed)
    }
}

impl WriterState {
    fn new(on_failure: FailurePolicy) -> WriterState {
        WriterState {
            on_failure,
            failing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            rotate_requested: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn admits_sessions(&self) -> bool {
        match self.on_failure {
            FailurePolicy::Continue => true,
            FailurePolicy::Refuse => {
                !self.failing.load(Ordering::Relaxed) && !self.stopped.load(Ordering::Relaxed)
            }
        }
    }
}

fn queue(
    tx: &SyncSender<AuditRecord>,
    state: &WriterState,
    record: AuditRecord,
) -> Result<(), AuditError> {
    let err = match tx.try_send(record) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Full(_)) => AuditError::QueueFull,
        Err(TrySendError::Disconnected(_)) => AuditError::Closed,
    };
    state.dropped.fetch_add(1, Ordering::Relaxed);
    match state.on_failure {
        FailurePolicy::Continue => Ok(()),
        FailurePolicy::Refuse => Err(err),
    }
}

/// Marks the writer stopped when its thread ends, however it ends.
struct Stopped(Arc<WriterState>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
}

/// Why a rotation is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    Size,
    Requested,
}

/// The writer thread's state.
struct Writer {
    file: TrailFile,
    /// The last record given a place in the chain (perhaps not yet written).
    head: Head,
    /// Whole lines, chain fields assigned, not yet in the file.
    pending: Vec<u8>,
    pending_lines: u64,
    /// How many of `pending_lines` came from the queue (for the written count).
    pending_queued: u64,
    options: AuditOptions,
    state: Arc<WriterState>,
    unsynced: bool,
    last_sync: Instant,
    /// Dropped records already reported in an `audit.lost` record.
    reported_lost: u64,
    logged_lost: u64,
    last_lost_log: Option<Instant>,
    failing_since: Option<Instant>,
    last_complaint: Instant,
    rotation: Option<Rotation>,
    rotation_not_before: Instant,
    /// The seq last written to the diagnostic log, and when.
    logged_head: u64,
    last_head_log: Instant,
}

impl Writer {
    fn new(file: TrailFile, head: Head, options: AuditOptions, state: Arc<WriterState>) -> Writer {
        let now = Instant::now();
        Writer {
            file,
            head,
            pending: Vec::with_capacity(64 * 1024),
            pending_lines: 0,
            pending_queued: 0,
            options,
            state,
            unsynced: false,
            last_sync: now,
            reported_lost: 0,
            logged_lost: 0,
            last_lost_log: None,
            failing_since: None,
            last_complaint: now,
            rotation: None,
            rotation_not_before: now,
            logged_head: 0,
            last_head_log: now,
        }
    }

    /// Queues the `audit.recovered` record for bytes a killed writer left half-written.
    /// The newline that ends them goes out in the same write as the record.
    fn recover(&mut self, torn: &Torn) {
        tracing::warn!(
            audit.path = %self.file.path().display(),
            torn.offset = torn.offset,
            torn.bytes = torn.bytes,
            "audit log ends in a torn record: recorded as audit.recovered"
        );
        if torn.needs_newline {
            self.pending.push(b'\n');
        }
        let mut record = AuditRecord::unattached(Event::AuditRecovered);
        record.torn_offset = Some(torn.offset);
        record.torn_bytes = Some(torn.bytes);
        record.torn_sha256 = Some(torn.sha256.clone());
        record.detail = Some(
            "the previous writer stopped in the middle of a record; the bytes named here \
             are not part of the chain"
                .into(),
        );
        self.push(&record, false);
    }

    fn run(&mut self, rx: &Receiver<AuditRecord>) {
        self.settle(false);
        loop {
            if self.failing_since.is_some() {
                if !self.retry() {
                    break;
                }
                continue;
            }
            let first = match rx.recv_timeout(TICK) {
                Ok(record) => Some(record),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if first.is_some() {
                // Let the burst this record may start gather. While this thread sleeps,
                // rather than waits on the queue, sinks add records without waking it.
                std::thread::sleep(LINGER);
            }
            let batch = first.into_iter().chain(rx.try_iter().take(BATCH - 1));
            for record in batch {
                self.push(&record, true);
            }
            self.note_lost();
            if self.settle(false) {
                self.maybe_rotate();
                if self.last_head_log.elapsed() >= HEAD_LOG_EVERY {
                    self.log_head("interval");
                }
            }
        }
        self.finish(rx);
    }

    /// Gives `record` the next place in the chain and appends its line to `pending`.
    fn push(&mut self, record: &AuditRecord, queued: bool) {
        let start = self.pending.len();
        let seq = self.head.seq + 1;
        let chained = Chained {
            seq,
            prev_sha256: &self.head.sha256,
            record,
        };
        // Our own plain structs serialise without error; if one ever did not, the record
        // is counted as lost rather than half-written.
        if let Err(err) = serde_json::to_writer(&mut self.pending, &chained) {
            self.pending.truncate(start);
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %err, "audit record cannot be serialised: dropped");
            return;
        }
        let sha256 = line_sha256(&self.pending[start..]);
        self.pending.push(b'\n');
        self.head = Head { seq, sha256 };
        self.pending_lines += 1;
        if queued {
            self.pending_queued += 1;
        }
    }

    /// Puts an `audit.lost` record in the chain when records were dropped since the last.
    fn note_lost(&mut self) {
        let dropped = self.state.dropped.load(Ordering::Relaxed);
        if dropped <= self.reported_lost {
            return;
        }
        let mut record = AuditRecord::unattached(Event::AuditLost);
        record.lost_records = Some(dropped - self.reported_lost);
        record.detail = Some(
            "records were dropped: the audit queue was full or the log could not be written".into(),
        );
        self.push(&record, false);
        self.reported_lost = dropped;
        self.log_lost();
    }

    fn log_lost(&mut self) {
        let dropped = self.state.dropped.load(Ordering::Relaxed);
        let due = self
            .last_lost_log
            .is_none_or(|at| at.elapsed() >= LOST_LOG_EVERY);
        if dropped > self.logged_lost && due {
            tracing::warn!(audit.lost = dropped, "audit records lost");
            self.logged_lost = dropped;
            self.last_lost_log = Some(Instant::now());
        }
    }

    /// Writes what is pending and syncs as the policy says (always when `force_sync`).
    /// Returns whether the log is healthy; a failure switches to retrying.
    fn settle(&mut self, force_sync: bool) -> bool {
        match self.write_and_sync(force_sync) {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    self.state.failing.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        audit.path = %self.file.path().display(),
                        failed_for_s = since.elapsed().as_secs_f64(),
                        "audit log can be written again"
                    );
                }
                true
            }
            Err(err) => {
                self.fail(&err);
                false
            }
        }
    }

    fn write_and_sync(&mut self, force_sync: bool) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.append(&self.pending)?;
            self.pending.clear();
            self.pending_lines = 0;
            self.state
                .written
                .fetch_add(self.pending_queued, Ordering::Relaxed);
            self.pending_queued = 0;
            self.unsynced = true;
        }
        let due = match self.options.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if self.unsynced && (due || force_sync) {
            self.file.sync()?;
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Logs a failure once, and again every [`COMPLAIN_EVERY`] while it lasts.
    fn fail(&mut self, err: &io::Error) {
        let path = self.file.path().display().to_string();
        let consequence = match self.options.on_failure {
            FailurePolicy::Refuse => "new sessions are refused until it can be written",
            FailurePolicy::Continue => "sessions continue; records that cannot be kept are lost",
        };
        match self.failing_since {
            None => {
                self.failing_since = Some(Instant::now());
                self.last_complaint = Instant::now();
                self.state.failing.store(true, Ordering::Relaxed);
                tracing::error!(audit.path = %path, error = %err, consequence, "audit log cannot be written");
            }
            Some(since) if self.last_complaint.elapsed() >= COMPLAIN_EVERY => {
                self.last_complaint = Instant::now();
                tracing::error!(
                    audit.path = %path,
                    error = %err,
                    failing_for_s = since.elapsed().as_secs(),
                    consequence,
                    "audit log still cannot be written"
                );
            }
            Some(_) => {}
        }
    }

    /// One retry of a failing log. Returns false when the writer should stop: `close`
    /// was called and the last attempt failed too.
    fn retry(&mut self) -> bool {
        // Sleep in short steps, so that `close` is not kept waiting for long.
        let deadline = Instant::now() + RETRY_EVERY;
        while Instant::now() < deadline && !self.state.closing.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.settle(false) {
            return true;
        }
        self.log_lost();
        !self.state.closing.load(Ordering::Relaxed)
    }

    fn maybe_rotate(&mut self) {
        if self.state.rotate_requested.swap(false, Ordering::Relaxed) {
            self.rotation = Some(Rotation::Requested);
        }
        if self.rotation.is_none()
            && self
                .options
                .max_bytes
                .is_some_and(|max| self.file.len() >= max)
        {
            self.rotation = Some(Rotation::Size);
        }
        let Some(cause) = self.rotation else {
            return;
        };
        if Instant::now() < self.rotation_not_before {
            return;
        }
        match self.rotate(cause) {
            Ok(()) => self.rotation = None,
            Err(err) => {
                self.rotation_not_before = Instant::now() + ROTATE_RETRY;
                tracing::error!(
                    audit.path = %self.file.path().display(),
                    error = %err,
                    retry_in_s = ROTATE_RETRY.as_secs(),
                    "audit log rotation failed; still writing to the same file"
                );
            }
        }
    }

    /// Syncs and renames the file, opens a new one, and starts it with `audit.rotated`,
    /// which links to the last record of the old file.
    fn rotate(&mut self, cause: Rotation) -> io::Result<()> {
        self.file.sync()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        let closed_head = self.head.clone();
        let previous = self.file.rotate(time::OffsetDateTime::now_utc())?;

        let mut record = AuditRecord::unattached(Event::AuditRotated);
        record.detail = Some(match (cause, &previous) {
            (_, None) => "the file had been moved away by another program; the records \
                          before this one are in it"
                .to_string(),
            (Rotation::Size, Some(_)) => {
                format!(
                    "audit_max_bytes ({}) reached",
                    self.options.max_bytes.unwrap_or(0)
                )
            }
            (Rotation::Requested, Some(_)) => "rotation requested".to_string(),
        });
        record.previous_file = previous.clone();
        self.push(&record, false);
        tracing::info!(
            audit.path = %self.file.path().display(),
            audit.previous_file = previous.as_deref().unwrap_or("(moved by another program)"),
            audit.seq = closed_head.seq,
            audit.sha256 = %closed_head.sha256,
            "audit log rotated"
        );
        // A failure here is an ordinary write failure of the new file: retried.
        self.settle(false);
        Ok(())
    }

    /// After the last sink is gone (or `close` gave up on a failing log): write and sync
    /// what is left, and log the head of the chain so it can be kept elsewhere.
    fn finish(&mut self, rx: &Receiver<AuditRecord>) {
        // One last attempt at what is pending, then at whatever is still queued (there is
        // some when `close` came while the log could not be written).
        if self.settle(true) {
            for record in rx.try_iter().take(QUEUE_CAPACITY) {
                self.push(&record, true);
            }
            self.note_lost();
            if self.settle(true) {
                self.log_head("close");
                return;
            }
        }
        let unwritten = self.pending_queued + rx.try_iter().take(QUEUE_CAPACITY).count() as u64;
        self.state.dropped.fetch_add(unwritten, Ordering::Relaxed);
        tracing::error!(
            audit.path = %self.file.path().display(),
            audit.lost = unwritten,
            "audit log could not be written before shutdown: records lost"
        );
    }

    /// Writes the head of the chain (seq and hash of the last record on disk) to the
    /// diagnostic log: at close always, otherwise only when it has moved.
    fn log_head(&mut self, moment: &'static str) {
        self.last_head_log = Instant::now();
        let moved = self.head.seq != self.logged_head;
        if !self.pending.is_empty() || !(moved || moment == "close") {
            return;
        }
        self.logged_head = self.head.seq;
        tracing::info!(
            audit.path = %self.file.path().display(),
            audit.seq = self.head.seq,
            audit.sha256 = %self.head.sha256,
            moment,
            "audit chain head"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{DenyReason, Event};

    fn denied(i: usize) -> AuditRecord {
        AuditRecord::new(
            Event::SessionDenied,
            &format!("s{i}"),
            "127.0.0.1:1".parse().unwrap(),
        )
        .reason(DenyReason::Overloaded, None)
    }

    #[test]
    fn every_queued_record_is_on_disk_after_close_with_consecutive_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
        for i in 0..1000 {
            sink.record(denied(i)).unwrap();
        }
        drop(sink);
        assert_eq!(
            writer.close(),
            1000,
            "writer should report 1000 records written"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            1000,
            "file should hold one line per record"
        );
        let mut prev = crate::audit::chain::GENESIS.to_string();
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(v["reason"], "overloaded", "line {i} lost its content");
            assert_eq!(v["seq"], i as u64 + 1, "line {i} has the wrong seq");
            assert_eq!(
                v["prev_sha256"],
                prev.as_str(),
                "line {i} links to the wrong hash"
            );
            prev = line_sha256(line.as_bytes());
        }
    }

    #[test]
    fn a_restarted_writer_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for round in 0..2 {
            let (writer, sink) = AuditWriter::start(&path, AuditOptions::default()).unwrap();
            sink.record(denied(round)).unwrap();
            drop(sink);
            writer.close();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["seq"], 2, "the second run must continue at seq 2");
        assert_eq!(
            second["prev_sha256"],
            line_sha256(lines[0].as_bytes()),
            "the second run must link to the first run's last line"
        );
    }

    #[test]
    fn the_continue_policy_never_refuses_and_counts_what_it_drops() {
        let (tx, rx) = mpsc::sync_channel(1);
        drop(rx);
        let sink = AuditSink {
            tx,
            state: Arc::new(WriterState::new(FailurePolicy::Continue)),
        };
        assert!(
            sink.record(denied(0)).is_ok(),
            "continue must not refuse a session over a lost record"
        );
        assert_eq!(sink.lost(), 1, "the dropped record must be counted");
        sink.state.failing.store(true, Ordering::Relaxed);
        assert!(
            sink.admits_sessions(),
            "continue admits sessions while failing"
        );

        let (tx, rx) = mpsc::sync_channel(1);
        drop(rx);
        let sink = AuditSink {
            tx,
            state: Arc::new(WriterState::new(FailurePolicy::Refuse)),
        };
        assert!(
            matches!(sink.record(denied(0)), Err(AuditError::Closed)),
            "refuse must report a record it could not queue"
        );
        assert!(sink.admits_sessions(), "a healthy writer admits sessions");
        sink.state.failing.store(true, Ordering::Relaxed);
        assert!(
            !sink.admits_sessions(),
            "refuse must not admit sessions while failing"
        );
    }
}
