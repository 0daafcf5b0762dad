//! The audit writer thread and the bounded queue that feeds it.
//!
//! Workers never touch the file: they `try_send` into a bounded channel and carry on.
//! The writer serialises and appends, flushing whenever the queue is empty (so a quiet
//! gateway writes each record at once) and at least every [`FLUSH_EVERY`] under load.
//! A full queue is reported to the caller, who decides (the gateway refuses new sessions
//! rather than let them go unrecorded).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::AuditRecord;

/// The longest a written record may sit in the writer's buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How many records may wait for the writer before sinks report `QueueFull`.
const QUEUE_CAPACITY: usize = 65_536;

/// Records written between two looks at the clock when the queue stays busy.
const BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit queue is full: the writer cannot keep up")]
    QueueFull,
    #[error("audit writer has stopped")]
    Closed,
    #[error("audit log cannot be written: {0}")]
    Failing(String),
}

/// The sending side; cheap to clone, one per worker.
#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<AuditRecord>,
    state: Arc<WriterState>,
}

/// The writer thread; [`AuditWriter::close`] drains it.
pub struct AuditWriter {
    thread: Option<JoinHandle<()>>,
    state: Arc<WriterState>,
}

#[derive(Default)]
struct WriterState {
    failing: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl AuditSink {
    /// Queues a record. Errors mean the record was not queued and the caller must fail
    /// closed (refuse the session it describes, if it can).
    pub fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        match self.tx.try_send(record) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
                Err(AuditError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Closed),
        }
    }

    /// True when the writer has hit a write error and not recovered; new sessions
    /// should be refused while this holds.
    pub fn is_failing(&self) -> bool {
        self.state.failing.load(Ordering::Relaxed)
    }
}

impl AuditWriter {
    /// Opens (creating, mode 0640) `path` for appending and starts the writer thread.
    pub fn start(path: &Path) -> Result<(AuditWriter, AuditSink), AuditError> {
        let file = open_append(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let state = Arc::new(WriterState::default());
        let writer_state = state.clone();
        let path_buf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("pgtunnel-audit".into())
            .spawn(move || write_loop(rx, file, &path_buf, &writer_state))
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let writer = AuditWriter {
            thread: Some(thread),
            state: state.clone(),
        };
        Ok((writer, AuditSink { tx, state }))
    }

    /// Waits for the writer to write and flush everything queued. Every sink must have
    /// been dropped first, or this waits for them.
    pub fn close(mut self) -> u64 {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.state.written.load(Ordering::Relaxed)
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn write_loop(rx: Receiver<AuditRecord>, file: File, path: &Path, state: &WriterState) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut last_flush = Instant::now();
    let mut line = Vec::with_capacity(512);
    loop {
        let first = match rx.recv_timeout(FLUSH_EVERY) {
            Ok(record) => Some(record),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut count = 0;
        for record in first.into_iter().chain(rx.try_iter().take(BATCH)) {
            count += 1;
            line.clear();
            // Serialising our own plain structs cannot fail; if it ever did, the write
            // error path below reports it rather than silently skipping the record.
            if let Err(err) = serde_json::to_writer(&mut line, &record) {
                report_failure(state, path, &err.to_string());
                continue;
            }
            line.push(b'\n');
            if let Err(err) = out.write_all(&line) {
                report_failure(state, path, &err.to_string());
            } else {
                state.written.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A batch shorter than its cap means the queue ran dry: flush now.
        let idle = count <= BATCH;
        if idle || last_flush.elapsed() >= FLUSH_EVERY {
            match out.flush() {
                Ok(()) => state.failing.store(false, Ordering::Relaxed),
                Err(err) => report_failure(state, path, &err.to_string()),
            }
            last_flush = Instant::now();
        }
    }
    if let Err(err) = out.flush().and_then(|()| out.get_ref().sync_data()) {
        report_failure(state, path, &err.to_string());
    }
}

fn report_failure(state: &WriterState, path: &Path, error: &str) {
    if !state.failing.swap(true, Ordering::Relaxed) {
        tracing::error!(audit.path = %path.display(), error, "audit log write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{DenyReason, Event};

    #[test]
    fn every_queued_record_is_on_disk_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (writer, sink) = AuditWriter::start(&path).unwrap();
        for i in 0..1000 {
            let rec = AuditRecord::new(
                Event::SessionDenied,
                &format!("s{i}"),
                "127.0.0.1:1".parse().unwrap(),
            )
            .reason(DenyReason::Overloaded, None);
            sink.record(rec).unwrap();
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
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(v["reason"], "overloaded");
        }
    }
}
