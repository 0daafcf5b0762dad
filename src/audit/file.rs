//! The audit file on disk: opening it where the chain left off, appending whole lines,
//! syncing, and rotating. Only the writer thread uses it; the chain itself (which `seq`
//! and hash come next) is the writer's business, and reading old files is `verify`'s.
//!
//! Two rules keep every earlier line intact whatever happens to the process or disk.
//! Bytes are only ever appended (O_APPEND), and a write that fails part-way is cut back
//! to the last whole line before anything else is written, so a retry after a full disk
//! never leaves half a record inside the file. When a previous writer was killed in the
//! middle of a line, the torn bytes are left where they are (they are evidence) and
//! reported to the caller, who records an `audit.recovered` naming them.
//! The file is held with an exclusive `flock`, so two gateways cannot interleave chains.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::AuditError;
use super::chain::{self, Head, TAIL_WINDOW};

/// How many times a write interrupted by a signal is retried before it counts as failed.
const EINTR_RETRIES: usize = 16;

/// The open audit file.
pub(crate) struct TrailFile {
    path: PathBuf,
    file: File,
    /// Bytes known to be whole lines (or torn bytes left by a previous writer, which are
    /// never cut).
    len: u64,
    /// A failed write may have left bytes past `len`: cut them before the next write.
    dirty: bool,
}

/// What [`TrailFile::open`] found.
pub(crate) struct Opened {
    pub file: TrailFile,
    /// The last chained record, in this file or (when it has none) in the newest
    /// rotated file; genesis for a new trail.
    pub head: Head,
    /// Bytes at the end of the file that are not a whole record.
    pub torn: Option<Torn>,
}

/// Torn bytes left by a writer that stopped mid-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Torn {
    /// Where they begin: just past the last whole record's newline.
    pub offset: u64,
    /// How many, not counting a final newline.
    pub bytes: u64,
    /// SHA-256 of exactly those bytes, lower-case hex.
    pub sha256: String,
    /// They do not end in a newline: one must be written before the next record.
    pub needs_newline: bool,
}

impl TrailFile {
    /// Opens (creating, mode 0640) `path` for appending, locks it, and finds where the
    /// chain continues.
    pub fn open(path: &Path) -> Result<Opened, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = open_locked(path)?;
        let len = file.metadata().map_err(open_err)?.len();
        let tail = chain::scan_tail(&file, len)
            .map_err(open_err)?
            .ok_or_else(|| no_record_in_tail(path))?;
        let head = match tail.last {
            Some(head) => head,
            None => previous_head(path)?,
        };
        let torn = if tail.end < len {
            let mut span = vec![0u8; (len - tail.end) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut span, tail.end)
                .map_err(open_err)?;
            check_crash_like(path, tail.end, &span)?;
            let needs_newline = span.last() != Some(&b'\n');
            if !needs_newline {
                span.pop();
            }
            Some(Torn {
                offset: tail.end,
                bytes: span.len() as u64,
                sha256: chain::line_sha256(&span),
                needs_newline,
            })
        } else {
            None
        };
        let file = TrailFile {
            path: path.to_path_buf(),
            file,
            len,
            dirty: false,
        };
        Ok(Opened { file, head, torn })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file that are whole lines.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `buf` (whole lines) with as few writes as the kernel allows, normally one.
    /// On error the file is cut back to its last whole line (or marked to be cut before
    /// the next attempt), so the same bytes can be retried later.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            self.dirty = false;
        }
        let mut done = 0;
        let mut interrupted = 0;
        while done < buf.len() {
            match (&self.file).write(&buf[done..]) {
                Ok(0) => return self.undo(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    interrupted += 1;
                    if interrupted > EINTR_RETRIES {
                        return self.undo(err);
                    }
                }
                Err(err) => return self.undo(err),
            }
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Cuts a partial write back to the last whole line, then reports `err`.
    fn undo(&mut self, err: io::Error) -> io::Result<()> {
        // If even the cut fails, remember to cut before writing again.
        self.dirty = self.file.set_len(self.len).is_err();
        Err(err)
    }

    /// fdatasync(2): the data and the file size, not the timestamps.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Renames the file to its archive name and opens a new, empty one at the same path.
    /// Returns the archive's file name, or `None` when another program had already
    /// moved the file away (then there is nothing to rename, and its records are
    /// wherever it went). The caller syncs first. On failure nothing has changed.
    pub fn rotate(&mut self, at: time::OffsetDateTime) -> io::Result<Option<String>> {
        let archive = chain::archive_name(&self.path, at);
        if archive.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", archive.display()),
            ));
        }
        let ours = self.still_at_path()?;
        if ours {
            std::fs::rename(&self.path, &archive)?;
        }
        let file = match open_locked(&self.path) {
            Ok(file) => file,
            Err(err) => {
                if ours {
                    // Put it back so the path keeps naming the live file.
                    let _ = std::fs::rename(&archive, &self.path);
                }
                return Err(io::Error::other(err.to_string()));
            }
        };
        self.len = file.metadata()?.len();
        self.file = file;
        self.dirty = false;
        sync_dir(&self.path);
        Ok(ours.then(|| {
            archive
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }))
    }

    /// True when `path` still names the file we hold open.
    fn still_at_path(&self) -> io::Result<bool> {
        let held = self.file.metadata()?;
        match std::fs::metadata(&self.path) {
            Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }
}

fn open_locked(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(AuditError::InUse {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(AuditError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The head of the newest rotated file, for a trail whose current file has no record
/// yet (new, or emptied by a crash between rotation's rename and its first record).
fn previous_head(path: &Path) -> Result<Head, AuditError> {
    let open_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AuditError::Open { path: p, source }
    };
    let Some(newest) = chain::archives(path).map_err(open_err(path))?.pop() else {
        return Ok(Head::genesis());
    };
    let file = File::open(&newest).map_err(open_err(&newest))?;
    let len = file.metadata().map_err(open_err(&newest))?.len();
    match chain::scan_tail(&file, len).map_err(open_err(&newest))? {
        Some(chain::Tail {
            last: Some(head), ..
        }) => Ok(head),
        _ => Err(no_record_in_tail(&newest)),
    }
}

/// Most newlines the bytes after the last record may hold and still be what a crash
/// leaves: a cut line, the newline a recovering writer added after it, and perhaps a cut
/// `audit.recovered` line after that.
const MAX_TORN_NEWLINES: usize = 2;

/// Refuses to treat as torn what a crash cannot leave behind: several lines, or a whole
/// JSON line that is not a chained record (a file from an older pgtunnel, or edited by
/// hand). Building on such a file would hide it.
fn check_crash_like(path: &Path, offset: u64, span: &[u8]) -> Result<(), AuditError> {
    let newlines = span.iter().filter(|&&b| b == b'\n').count();
    let whole_json = span
        .split(|&b| b == b'\n')
        .take(newlines)
        .any(|line| serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok());
    if newlines > MAX_TORN_NEWLINES || whole_json {
        return Err(AuditError::Damaged {
            path: path.to_path_buf(),
            problem: format!(
                "from offset {offset} on it holds {newlines} line(s) that are not chained \
                 audit records, which no crash leaves: it was written by an older pgtunnel \
                 or edited; move it aside and check it with `pgtunnel audit verify`"
            ),
        });
    }
    Ok(())
}

fn no_record_in_tail(path: &Path) -> AuditError {
    AuditError::Damaged {
        path: path.to_path_buf(),
        problem: format!(
            "no chained audit record in its last {} MiB: it is damaged or not a pgtunnel \
             audit trail; move it aside and check it with `pgtunnel audit verify`",
            TAIL_WINDOW / (1024 * 1024)
        ),
    }
}

/// Makes a rename or a new file durable. A failure here only weakens durability after a
/// power loss, so it is logged, not fatal.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot sync the audit log's folder");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::GENESIS;

    #[test]
    fn a_new_file_starts_at_genesis_with_nothing_torn() {
        let dir = tempfile::tempdir().unwrap();
        let opened = TrailFile::open(&dir.path().join("a.jsonl")).unwrap();
        assert_eq!(opened.head.seq, 0, "nothing written yet");
        assert_eq!(opened.head.sha256, GENESIS, "first record links to genesis");
        assert!(opened.torn.is_none(), "an empty file has no torn bytes");
    }

    #[test]
    fn a_second_opener_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let _held = TrailFile::open(&path).unwrap();
        let second = TrailFile::open(&path);
        assert!(
            matches!(second, Err(AuditError::InUse { .. })),
            "a second writer must not interleave its chain"
        );
    }

    #[test]
    fn a_file_of_unchained_json_lines_is_refused_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"{\"ts\":\"1\"}\n{\"ts\":\"2\"}\n").unwrap();
        let result = TrailFile::open(&path);
        assert!(
            matches!(&result, Err(AuditError::Damaged { problem, .. }) if problem.contains("offset 0")),
            "old unchained records must not be passed off as torn bytes"
        );
    }

    #[test]
    fn a_file_whose_last_4_mib_hold_no_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, vec![b'x'; 5 * 1024 * 1024]).unwrap();
        assert!(
            matches!(TrailFile::open(&path), Err(AuditError::Damaged { .. })),
            "a writer must not build on a file it cannot find the chain in"
        );
    }

    #[test]
    fn torn_bytes_are_measured_without_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"half a rec\n").unwrap();
        let torn = TrailFile::open(&path)
            .unwrap()
            .torn
            .expect("garbage is torn");
        assert_eq!(torn.offset, 0, "the whole file is torn: it holds no record");
        assert_eq!(torn.bytes, 10, "the newline is not counted");
        assert_eq!(
            torn.sha256,
            chain::line_sha256(b"half a rec"),
            "the hash covers exactly the torn bytes"
        );
        assert!(!torn.needs_newline, "it already ends in a newline");
    }
}
