//! The audit trail: what was decided about every connection, for people who must later
//! prove who reached which database. It is a separate stream from the diagnostic log
//! (`tracing`), with its own schema (docs/audit.md) and its own writer thread; changing
//! the log level never touches it.
//!
//! Workers build an [`AuditRecord`] and hand it to an [`AuditSink`], a bounded queue, so a
//! slow disk never stalls a worker's ring. The writer thread serialises records as JSON
//! lines and flushes whenever the queue runs dry, and at least every 100 ms under load.
//! Dropping the last sink and joining the writer ([`AuditWriter::close`]) writes every
//! queued record before the gateway exits.

pub mod chain;
mod file;
mod record;
pub mod verify;
mod writer;

pub use record::{AuditRecord, CloseReason, DenyReason, Event, ReloadOutcome, format_ts};
pub use writer::{AuditError, AuditOptions, AuditSink, AuditWriter, FailurePolicy, FsyncPolicy};
