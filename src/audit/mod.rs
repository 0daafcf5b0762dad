//! The audit trail: what was decided about every connection, for people who must later
//! prove who reached which database. It is a separate stream from the diagnostic log
//! (`tracing`), with its own schema (docs/audit.md) and its own writer thread; changing
//! the log level never touches it.
//!
//! Workers build an [`AuditRecord`] and hand it to an [`AuditSink`], a bounded queue, so a
//! slow or full disk never stalls a worker's ring. The writer thread (`writer`) gives
//! each record its place in a hash chain (`chain`: `seq` and `prev_sha256`, so removed,
//! reordered or edited lines are detectable), appends batches to the file (`file`),
//! syncs as `audit_fsync` says, rotates, and fails closed when it cannot write: while
//! [`AuditSink::admits_sessions`] is false the gateway refuses new sessions.
//! [`AuditWriter::close`] writes and syncs every queued record before the gateway exits.
//! `verify` checks a trail; `pgtunnel audit` (in `cli`) prints it.

pub mod chain;
mod file;
mod record;
pub mod verify;
mod writer;

pub use record::{AuditRecord, CloseReason, DenyReason, Event, ReloadOutcome, format_ts};
pub use writer::{AuditError, AuditOptions, AuditSink, AuditWriter, FailurePolicy, FsyncPolicy};
