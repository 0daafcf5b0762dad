//! The hash chain that makes the audit trail tamper-evident, and the few facts about a
//! line that the writer, `verify` and `show` all need.
//!
//! Every line carries `seq` (1, 2, 3, ... across rotated files) and `prev_sha256`, the
//! SHA-256 of the previous line's bytes without its newline; the first record of a new
//! trail links to [`GENESIS`]. Editing, removing or reordering a line breaks a link
//! that `verify` reports. What the chain cannot show is a cut at the very end of the
//! newest file: nothing comes after the last record to vouch for it. Nor is it a
//! signature: whoever can write the file can rewrite every line from one onwards and
//! recompute the links (docs/audit.md and docs/limitations.md say how to anchor the head
//! elsewhere). This module reads lines; it never writes a file.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditRecord;

/// `prev_sha256` of the first record of a new trail: there is no previous line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How far back from the end of a file the writer looks for the last whole record. A
/// torn tail is at most one batch of records (or, after a power loss on some file
/// systems, a run of zero bytes of the same size), well under this.
pub(crate) const TAIL_WINDOW: u64 = 4 * 1024 * 1024;

/// The chain fields of one line, and what `verify` needs to accept a recovery.
#[derive(Debug, Deserialize)]
pub struct Link<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub prev_sha256: Cow<'a, str>,
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(default)]
    pub torn_offset: Option<u64>,
    #[serde(default)]
    pub torn_bytes: Option<u64>,
    #[serde(default, borrow)]
    pub torn_sha256: Option<Cow<'a, str>>,
}

/// Why a line is not a chained record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Not a JSON object (or not valid JSON at all).
    BadJson(String),
    /// JSON, but `seq` or `prev_sha256` is missing or malformed.
    NotChained(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::BadJson(err) => write!(f, "bad JSON: {err}"),
            LinkError::NotChained(err) => write!(f, "not a chained audit record: {err}"),
        }
    }
}

impl<'a> Link<'a> {
    /// Reads the chain fields of `line` (without its newline).
    pub fn parse(line: &'a [u8]) -> Result<Link<'a>, LinkError> {
        // Two passes only for lines that fail: telling "not JSON" from "JSON without a
        // chain" is worth a second parse on a path that is already an error.
        match serde_json::from_slice::<Link<'a>>(line) {
            Ok(link) if is_sha256_hex(&link.prev_sha256) => Ok(link),
            Ok(link) => Err(LinkError::NotChained(format!(
                "prev_sha256 {:?} is not 64 lower-case hex digits",
                link.prev_sha256
            ))),
            Err(err) => match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => Err(LinkError::NotChained(err.to_string())),
                Err(err) => Err(LinkError::BadJson(err.to_string())),
            },
        }
    }
}

/// The SHA-256 of a line's bytes (without its newline), lower-case hex.
pub fn line_sha256(line: &[u8]) -> String {
    format!("{:x}", Sha256::digest(line))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The head of the chain: the last record assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub sha256: String,
}

impl Head {
    /// The head of a trail with no records yet.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            sha256: GENESIS.to_string(),
        }
    }
}

/// A record with its chain fields, as it is written: `seq` and `prev_sha256` first so a
/// person reading the file sees the chain before the content.
#[derive(Serialize)]
pub(crate) struct Chained<'a> {
    pub seq: u64,
    pub prev_sha256: &'a str,
    #[serde(flatten)]
    pub record: &'a AuditRecord,
}

/// What the end of a file holds: the last whole chained record, and where the bytes
/// after it (if any) begin.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The last chained record, or `None` when the file holds none at all.
    pub last: Option<Head>,
    /// Offset just past the newline of that record (0 when there is none): bytes from
    /// here to the end of the file are not part of the chain.
    pub end: u64,
}

/// Finds the last whole chained record in the final [`TAIL_WINDOW`] bytes of `file`
/// (`len` bytes long). `Ok(None)` means the window reaches no such record and does not
/// start at the beginning of the file: the file is damaged or not an audit trail.
pub(crate) fn scan_tail(file: &File, len: u64) -> io::Result<Option<Tail>> {
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut buf = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut buf, start)?;

    // A window that starts mid-file starts mid-line: whole lines begin after the first
    // newline in it.
    let first = if start == 0 {
        0
    } else {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(None),
        }
    };

    // Whole lines end in a newline; walk them from the last one backwards. `end` shrinks
    // by at least one line per turn, so the loop ends.
    let mut end = buf.len();
    while let Some(nl) = buf[first..end].iter().rposition(|&b| b == b'\n') {
        let nl = first + nl;
        let line_start = buf[first..nl]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(first, |i| first + i + 1);
        let line = &buf[line_start..nl];
        if let Ok(link) = Link::parse(line) {
            return Ok(Some(Tail {
                last: Some(Head {
                    seq: link.seq,
                    sha256: line_sha256(line),
                }),
                end: start + nl as u64 + 1,
            }));
        }
        end = line_start;
    }
    if start == 0 {
        Ok(Some(Tail { last: None, end: 0 }))
    } else {
        Ok(None)
    }
}

/// The name a file gets when it is rotated away: `NAME.YYYYMMDDTHHMMSS.ffffffZ` (UTC), so
/// that names sort in time order and never collide in practice.
pub(crate) fn archive_name(path: &Path, at: time::OffsetDateTime) -> PathBuf {
    let fmt = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
    );
    let utc = at.to_offset(time::UtcOffset::UTC);
    // A fixed description over a valid date cannot fail to format; the Unix time in
    // nanoseconds is a unique fallback that still sorts in time order within an era.
    let stamp = utc
        .format(fmt)
        .unwrap_or_else(|_| utc.unix_timestamp_nanos().to_string());
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(stamp);
    PathBuf::from(name)
}

/// True when `file_name` is what [`archive_name`] makes for a file named `base`.
fn is_archive_of(file_name: &str, base: &str) -> bool {
    let Some(stamp) = file_name
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..22].iter().all(u8::is_ascii_digit)
        && b[22] == b'Z'
}

/// The rotated files of the trail at `path`, oldest first (their names sort in time
/// order). A folder that cannot be read has none we can use.
pub fn archives(path: &Path) -> io::Result<Vec<PathBuf>> {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str()
            && is_archive_of(name, base)
        {
            found.push(dir.join(name));
        }
    }
    found.sort();
    Ok(found)
}

/// The whole trail at `path`: its rotated files oldest first, then `path` itself if it
/// exists.
pub fn trail_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = archives(path)?;
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

/// Puts `paths` in chain order: by the `seq` of the first chained record in each (only
/// the first [`TAIL_WINDOW`] bytes are searched), so a shell glob, which lists the
/// current file before its archives, still verifies in the right order. Files with no
/// record found keep their relative order and go last.
pub fn chain_order(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut keyed = Vec::with_capacity(paths.len());
    for path in paths {
        keyed.push((first_seq(path)?, path.clone()));
    }
    keyed.sort_by_key(|(seq, _)| seq.unwrap_or(u64::MAX));
    Ok(keyed.into_iter().map(|(_, p)| p).collect())
}

fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    use std::io::Read;
    let mut buf = Vec::new();
    File::open(path)?.take(TAIL_WINDOW).read_to_end(&mut buf)?;
    Ok(buf
        .split(|&b| b == b'\n')
        .find_map(|line| Link::parse(line).ok().map(|l| l.seq)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64, prev: &str) -> String {
        format!(r#"{{"seq":{seq},"prev_sha256":"{prev}","ts":"x","event":"session.start"}}"#)
    }

    #[test]
    fn link_parse_tells_bad_json_from_unchained_json() {
        assert!(
            Link::parse(line(1, GENESIS).as_bytes()).is_ok(),
            "a chained line must parse"
        );
        assert!(
            matches!(Link::parse(b"{\"seq\":1,"), Err(LinkError::BadJson(_))),
            "a cut line is bad JSON"
        );
        assert!(
            matches!(Link::parse(br#"{"ts":"x"}"#), Err(LinkError::NotChained(_))),
            "JSON without seq is not chained"
        );
        let short = line(1, "abc");
        assert!(
            matches!(Link::parse(short.as_bytes()), Err(LinkError::NotChained(_))),
            "a short prev_sha256 is not chained"
        );
    }

    #[test]
    fn scan_tail_finds_last_record_and_the_torn_bytes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let first = line(1, GENESIS);
        let second = line(2, &line_sha256(first.as_bytes()));
        let mut f = File::create(&path).unwrap();
        write!(f, "{first}\n{second}\n{{\"seq\":3,\"pre").unwrap();
        let len = f.metadata().unwrap().len();
        let tail = scan_tail(&File::open(&path).unwrap(), len)
            .unwrap()
            .unwrap();
        assert_eq!(
            tail.last,
            Some(Head {
                seq: 2,
                sha256: line_sha256(second.as_bytes())
            }),
            "the last whole record is seq 2"
        );
        assert_eq!(
            tail.end,
            (first.len() + second.len() + 2) as u64,
            "torn bytes start right after seq 2's newline"
        );
    }

    #[test]
    fn scan_tail_of_a_file_with_only_garbage_has_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"garbage\n\0\0\0").unwrap();
        let tail = scan_tail(&File::open(&path).unwrap(), 11).unwrap().unwrap();
        assert_eq!(tail.last, None, "no record in garbage");
        assert_eq!(tail.end, 0, "every byte is outside the chain");
    }

    #[test]
    fn archive_names_are_recognised_and_sort_in_time_order() {
        let at = time::macros::datetime!(2026-12-03 19:25:26.123456 UTC);
        let name = archive_name(Path::new("/var/log/audit.jsonl"), at);
        assert_eq!(
            name,
            Path::new("/var/log/audit.jsonl.20261203T192526.123456Z"),
            "archive names are the file name and the UTC time to the microsecond"
        );
        let later = archive_name(
            Path::new("/var/log/audit.jsonl"),
            at + time::Duration::hours(5),
        );
        assert!(
            later > name,
            "a later rotation must sort after an earlier one"
        );
        assert!(
            is_archive_of("audit.jsonl.20261203T192526.123456Z", "audit.jsonl"),
            "our own archive name must be recognised"
        );
        assert!(
            !is_archive_of("audit.jsonl.bak", "audit.jsonl"),
            "a stray .bak is not ours"
        );
        assert!(
            !is_archive_of("audit.jsonl", "audit.jsonl"),
            "the file itself is no archive"
        );
    }
}
