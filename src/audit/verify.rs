//! Checking a trail: every line a chained record, `seq` counting up by one across all
//! the files given, each `prev_sha256` the hash of the line before. The result names
//! each problem at the first record it makes suspect, with what is wrong (edited,
//! removed, reordered, torn line, bad JSON). Bytes a killed writer left half-written
//! pass only when the next writer recorded them in an `audit.recovered` whose offset,
//! length and hash match.
//!
//! This module reads files and reports; the command line (`cli::audit`) orders the
//! files, prints and chooses the exit code. It cannot see records cut from the end of
//! the newest file (nothing follows them); docs/audit.md says how to guard against that.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::chain::{GENESIS, Head, Link, LinkError};

/// Lines longer than this are not records the writer made; only this much is kept to
/// parse (the rest is still hashed and counted).
const MAX_LINE: usize = 1024 * 1024;

/// How many problems are kept in a report; the rest are only counted.
const MAX_PROBLEMS: usize = 1000;

/// How many gaps in `seq` are remembered, to tell a reordered record from a removed one.
const MAX_OPEN_GAPS: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Accept a chain whose first record is not seq 1 (older files are archived
    /// elsewhere). Its first `seq` and `prev_sha256` are in the report's notes, to be
    /// matched against the archive.
    pub partial: bool,
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Its bytes no longer hash to what the next record recorded.
    Edited,
    /// Records with the seqs just before it are missing.
    Removed,
    /// It comes before records it should follow.
    Reordered,
    /// Its seq repeats or goes back, and no missing record explains it.
    OutOfOrder,
    /// The last line of a file has no newline: a write was cut short and not recovered.
    TornLine,
    /// The line is not valid JSON.
    BadJson,
    /// The line is JSON without valid `seq` and `prev_sha256`.
    NotChained,
    /// An `audit.recovered` record does not match the torn bytes before it.
    BadRecovery,
    /// The chain does not start at seq 1 and genesis (or starts again mid-way).
    BadStart,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Removed => "removed",
            ProblemKind::Reordered => "reordered",
            ProblemKind::OutOfOrder => "out of order",
            ProblemKind::TornLine => "torn line",
            ProblemKind::BadJson => "bad JSON",
            ProblemKind::NotChained => "not a chained record",
            ProblemKind::BadRecovery => "bad recovery",
            ProblemKind::BadStart => "chain start",
        }
    }
}

/// One problem, at the record it makes suspect.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
    /// The record's seq, when the line has one.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
    pub detail: String,
    /// Position in the chain (file index, line) for ordering.
    order: (usize, u64),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Default)]
pub struct Report {
    /// In chain order; at most [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// Problems found beyond those kept.
    pub more_problems: u64,
    /// Things an auditor should know that do not break the chain (recovered torn lines,
    /// a partial chain's starting point).
    pub notes: Vec<String>,
    /// Chained records read.
    pub records: u64,
    /// The first record's seq, and the last record (the head of the chain).
    pub first_seq: Option<u64>,
    pub last: Option<Head>,
}

impl Report {
    /// True when no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty() && self.more_problems == 0
    }
}

/// Verifies the chain through `paths`, in the order given (see `chain::chain_order`).
/// I/O errors are errors; everything wrong with the content is in the report.
pub fn verify(paths: &[PathBuf], options: VerifyOptions) -> io::Result<Report> {
    let mut walker = Walker {
        options,
        paths,
        report: Report::default(),
        prev: None,
        span: None,
        gaps: Vec::new(),
    };
    for (index, path) in paths.iter().enumerate() {
        walker.file(index, path)?;
    }
    walker.report.problems.sort_by_key(|p| p.order);
    Ok(walker.report)
}

/// Where a line is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    file: usize,
    line: u64,
}

/// The last chained record seen.
struct Prev {
    seq: u64,
    sha256: String,
    loc: Loc,
}

/// A run of lines that are not chained records (perhaps torn bytes a later
/// `audit.recovered` accounts for).
struct Span {
    loc: Loc,
    offset: u64,
    /// Offset just past the last byte of the last line in the run (its newline excluded).
    end: u64,
    kind: ProblemKind,
    detail: String,
    lines: u64,
}

/// A hole in `seq`: a record that later shows up inside it was reordered, not removed.
struct Gap {
    problem: usize,
    lo: u64,
    hi: u64,
    found: u64,
}

struct Walker<'a> {
    options: VerifyOptions,
    paths: &'a [PathBuf],
    report: Report,
    prev: Option<Prev>,
    span: Option<Span>,
    gaps: Vec<Gap>,
}

impl Walker<'_> {
    fn file(&mut self, index: usize, path: &Path) -> io::Result<()> {
        let mut reader = LineReader::new(File::open(path)?);
        let mut line = Line::default();
        let mut number = 0;
        while reader.next(&mut line)? {
            number += 1;
            let loc = Loc {
                file: index,
                line: number,
            };
            if !line.terminated {
                let detail = format!(
                    "{} byte(s) at offset {} without a newline: a write was cut short, and no \
                     writer has recovered the file since",
                    line.len, line.offset
                );
                self.unchained(loc, &line, ProblemKind::TornLine, detail);
            } else if line.too_long {
                let detail = format!("line of {} bytes is too long to be a record", line.len);
                self.unchained(loc, &line, ProblemKind::BadJson, detail);
            } else {
                match Link::parse(&line.content) {
                    Ok(link) => self.chained(loc, path, &line, &link)?,
                    Err(LinkError::BadJson(err)) => {
                        self.unchained(loc, &line, ProblemKind::BadJson, err)
                    }
                    Err(LinkError::NotChained(err)) => {
                        self.unchained(loc, &line, ProblemKind::NotChained, err)
                    }
                }
            }
        }
        // Torn bytes are recovered in the file they are in; a run of them cannot go on
        // into the next file.
        if let Some(span) = self.span.take() {
            self.span_problem(span, None);
        }
        Ok(())
    }

    fn unchained(&mut self, loc: Loc, line: &Line, kind: ProblemKind, detail: String) {
        let end = line.offset + line.len;
        match &mut self.span {
            Some(span) => {
                span.end = end;
                span.lines += 1;
            }
            None => {
                self.span = Some(Span {
                    loc,
                    offset: line.offset,
                    end,
                    kind,
                    detail,
                    lines: 1,
                });
            }
        }
    }

    fn chained(&mut self, loc: Loc, path: &Path, line: &Line, link: &Link) -> io::Result<()> {
        self.report.records += 1;
        let recovery = link.event == "audit.recovered";
        match self.span.take() {
            Some(span) if recovery => self.check_recovery(span, loc, path, link)?,
            Some(span) => self.span_problem(span, None),
            None if recovery => {
                let detail = format!(
                    "names {} torn byte(s) at offset {}, but the line before it is a whole \
                     record: the torn bytes were removed",
                    link.torn_bytes.unwrap_or(0),
                    link.torn_offset.unwrap_or(0)
                );
                self.problem(loc, Some(link.seq), ProblemKind::BadRecovery, detail);
            }
            None => {}
        }
        self.check_link(loc, link, &line.sha256);
        Ok(())
    }

    /// Torn bytes followed by an `audit.recovered`: accepted when it names exactly them.
    fn check_recovery(&mut self, span: Span, loc: Loc, path: &Path, link: &Link) -> io::Result<()> {
        let bytes = span.end - span.offset;
        let named_here = link.torn_offset == Some(span.offset);
        if named_here && link.torn_bytes == Some(bytes) {
            let sha256 = hash_range(path, span.offset, bytes)?;
            if link.torn_sha256.as_deref() == Some(sha256.as_str()) {
                self.report.notes.push(format!(
                    "{}:{}: {} torn byte(s) at offset {}, recovered by seq {} (line {})",
                    self.paths[span.loc.file].display(),
                    span.loc.line,
                    bytes,
                    span.offset,
                    link.seq,
                    loc.line
                ));
                return Ok(());
            }
        }
        if named_here {
            let detail = format!(
                "the {} byte(s) at offset {} are not the ones audit.recovered (line {}, seq {}) \
                 recorded: they were changed after recovery",
                bytes, span.offset, loc.line, link.seq
            );
            self.problem(span.loc, None, ProblemKind::BadRecovery, detail);
        } else {
            self.span_problem(span, Some((loc, link)));
        }
        Ok(())
    }

    fn span_problem(&mut self, span: Span, recovery: Option<(Loc, &Link)>) {
        let mut detail = span.detail;
        if span.lines > 1 {
            detail.push_str(&format!(" (and {} more line(s) like it)", span.lines - 1));
        }
        if let Some((loc, link)) = recovery {
            detail.push_str(&format!(
                "; audit.recovered at line {} names other bytes (offset {})",
                loc.line,
                link.torn_offset.unwrap_or(0)
            ));
        }
        self.problem(span.loc, None, span.kind, detail);
    }

    /// The heart of it: does this record follow the previous one? After a problem the
    /// walk goes on from this record (or, for a record that fills an earlier hole, from
    /// the highest one seen), so one tampered line is one problem, not a cascade.
    fn check_link(&mut self, loc: Loc, link: &Link, sha256: &str) {
        let this = Prev {
            seq: link.seq,
            sha256: sha256.to_string(),
            loc,
        };
        let next = match self.prev.take() {
            None => {
                self.check_start(loc, link);
                this
            }
            Some(prev) if link.seq == prev.seq.saturating_add(1) => {
                self.check_hash(&prev, loc, link);
                this
            }
            Some(prev) if link.seq > prev.seq => {
                self.skipped_ahead(&prev, loc, link);
                this
            }
            Some(prev) => self.went_back(prev, this, link),
        };
        self.report.last = Some(Head {
            seq: next.seq,
            sha256: next.sha256.clone(),
        });
        self.prev = Some(next);
    }

    /// The next seq: its `prev_sha256` must be the previous line's hash.
    fn check_hash(&mut self, prev: &Prev, loc: Loc, link: &Link) {
        if link.prev_sha256 == prev.sha256 {
            return;
        }
        let detail = format!(
            "its SHA-256 is {}, but the next record ({}, seq {}) recorded prev_sha256 {}",
            short(&prev.sha256),
            self.place(loc, prev.loc.file),
            link.seq,
            short(&link.prev_sha256)
        );
        self.problem(prev.loc, Some(prev.seq), ProblemKind::Edited, detail);
    }

    /// A seq past the next one: records are missing (or, as a later record may show,
    /// moved), unless the hash still links, in which case the seq itself was changed.
    fn skipped_ahead(&mut self, prev: &Prev, loc: Loc, link: &Link) {
        let expected = prev.seq + 1;
        if link.prev_sha256 == prev.sha256 {
            let detail = format!(
                "follows seq {} and links to it, but its seq skips ahead: its seq was changed",
                prev.seq
            );
            self.problem(loc, Some(link.seq), ProblemKind::Edited, detail);
            return;
        }
        let missing = if expected == link.seq - 1 {
            format!("seq {expected} is")
        } else {
            format!("seq {expected} to {} are", link.seq - 1)
        };
        let detail = format!(
            "{missing} missing before this record (the one before it is seq {} at {})",
            prev.seq,
            self.place(prev.loc, loc.file),
        );
        if let Some(problem) = self.problem(loc, Some(link.seq), ProblemKind::Removed, detail) {
            if self.gaps.len() == MAX_OPEN_GAPS {
                self.gaps.remove(0);
            }
            self.gaps.push(Gap {
                problem,
                lo: expected,
                hi: link.seq - 1,
                found: 0,
            });
        }
    }

    /// A seq at or below the previous one. Returns the record the chain goes on from.
    fn went_back(&mut self, prev: Prev, this: Prev, link: &Link) -> Prev {
        let loc = this.loc;
        let hole = self
            .gaps
            .iter()
            .position(|g| g.lo <= link.seq && link.seq <= g.hi);
        if let Some(i) = hole {
            // A record from an earlier hole: the hole was a move, not a removal. The
            // chain resumes after the highest record seen.
            let gap = &mut self.gaps[i];
            gap.found += 1;
            let problem = &mut self.report.problems[gap.problem];
            if problem.kind == ProblemKind::Removed {
                problem.kind = ProblemKind::Reordered;
                problem.detail = format!(
                    "it comes before seq {}, which is later in the trail ({})",
                    link.seq,
                    place(self.paths, loc, problem.order.0),
                );
            }
            if gap.found > gap.hi - gap.lo {
                self.gaps.remove(i);
            }
            return prev;
        }
        let (kind, detail) = if link.seq == 1 && link.prev_sha256 == GENESIS {
            let detail = format!(
                "a new trail starts here after seq {}: verify the two trails separately",
                prev.seq
            );
            (ProblemKind::BadStart, detail)
        } else {
            let detail = format!(
                "comes after seq {} ({}): repeated or out of order",
                prev.seq,
                self.place(prev.loc, loc.file),
            );
            (ProblemKind::OutOfOrder, detail)
        };
        self.problem(loc, Some(link.seq), kind, detail);
        this
    }

    fn check_start(&mut self, loc: Loc, link: &Link) {
        self.report.first_seq = Some(link.seq);
        let genesis = link.prev_sha256 == GENESIS;
        if link.seq == 1 && genesis {
            return;
        }
        if link.seq == 1 || genesis {
            let detail = "seq 1 and a prev_sha256 of 64 zeros go together; this record has \
                          only one of them"
                .to_string();
            self.problem(loc, Some(link.seq), ProblemKind::BadStart, detail);
        } else if self.options.partial {
            self.report.notes.push(format!(
                "{}:{}: the chain begins at seq {} with prev_sha256 {}: earlier records \
                 are not in the files given",
                self.paths[loc.file].display(),
                loc.line,
                link.seq,
                link.prev_sha256
            ));
        } else {
            let detail = format!(
                "the chain begins at seq {}, not 1: earlier records are missing, or their \
                 files were not given (give them, or --partial)",
                link.seq
            );
            self.problem(loc, Some(link.seq), ProblemKind::BadStart, detail);
        }
    }

    /// Where `loc` is, said from a message about a line in file `from`.
    fn place(&self, loc: Loc, from: usize) -> String {
        place(self.paths, loc, from)
    }

    /// Records a problem; returns its index while the report has room.
    fn problem(
        &mut self,
        loc: Loc,
        seq: Option<u64>,
        kind: ProblemKind,
        detail: String,
    ) -> Option<usize> {
        if self.report.problems.len() >= MAX_PROBLEMS {
            self.report.more_problems += 1;
            return None;
        }
        self.report.problems.push(Problem {
            file: self.paths[loc.file].clone(),
            line: loc.line,
            seq,
            kind,
            detail,
            order: (loc.file, loc.line),
        });
        Some(self.report.problems.len() - 1)
    }
}

/// `line 7` within the same file, `FILE:7` in another.
fn place(paths: &[PathBuf], loc: Loc, from: usize) -> String {
    if loc.file == from {
        format!("line {}", loc.line)
    } else {
        format!("{}:{}", paths[loc.file].display(), loc.line)
    }
}

/// The first 12 hex digits: enough to tell two hashes apart in a message.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// SHA-256 of `len` bytes of `path` from `offset`, lower-case hex.
fn hash_range(path: &Path, offset: u64, len: u64) -> io::Result<String> {
    let file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// One line as read: where it starts, its bytes (up to [`MAX_LINE`]), and the hash of
/// all of them.
#[derive(Default)]
pub(crate) struct Line {
    pub offset: u64,
    pub content: Vec<u8>,
    /// Length without the newline.
    pub len: u64,
    pub terminated: bool,
    pub too_long: bool,
    pub sha256: String,
}

/// Reads lines of any length with bounded memory, hashing each.
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    offset: u64,
}

impl<R: io::Read> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner: BufReader::with_capacity(256 * 1024, inner),
            offset: 0,
        }
    }

    /// Reads the next line into `line`; false at the end of the input. Each turn of the
    /// loop consumes at least one byte or ends it, so it ends with the input.
    pub fn next(&mut self, line: &mut Line) -> io::Result<bool> {
        line.offset = self.offset;
        line.content.clear();
        line.len = 0;
        line.terminated = false;
        line.too_long = false;
        let mut hasher = Sha256::new();
        let mut any = false;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            any = true;
            let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            hasher.update(chunk);
            let room = MAX_LINE.saturating_sub(line.content.len());
            line.content
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            line.too_long |= chunk.len() > room;
            line.len += chunk.len() as u64;
            let used = chunk.len() + usize::from(newline);
            self.inner.consume(used);
            self.offset += used as u64;
            if newline {
                line.terminated = true;
                break;
            }
        }
        line.sha256 = format!("{:x}", hasher.finalize());
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::line_sha256;

    /// `n` chained lines, as the writer would make them, starting after `head`.
    fn chain(head: &Head, n: u64) -> Vec<String> {
        let mut prev = head.sha256.clone();
        (head.seq + 1..=head.seq + n)
            .map(|seq| {
                let line = format!(
                    r#"{{"seq":{seq},"prev_sha256":"{prev}","ts":"t","event":"session.end"}}"#
                );
                prev = line_sha256(line.as_bytes());
                line
            })
            .collect()
    }

    fn run(files: &[Vec<String>], options: VerifyOptions) -> Report {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, lines)| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(
                    &path,
                    lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
                )
                .unwrap();
                path
            })
            .collect();
        verify(&paths, options).unwrap()
    }

    fn kinds(report: &Report) -> Vec<(u64, ProblemKind)> {
        report.problems.iter().map(|p| (p.line, p.kind)).collect()
    }

    #[test]
    fn a_chain_split_over_files_is_intact_and_reports_its_head() {
        let all = chain(&Head::genesis(), 6);
        let report = run(
            &[all[..3].to_vec(), all[3..].to_vec()],
            VerifyOptions::default(),
        );
        assert!(report.is_intact(), "problems: {:?}", report.problems);
        assert_eq!(report.records, 6, "every line is a record");
        assert_eq!(report.first_seq, Some(1), "the chain starts at seq 1");
        assert_eq!(
            report.last,
            Some(Head {
                seq: 6,
                sha256: line_sha256(all[5].as_bytes())
            }),
            "the head is the last line's hash"
        );
    }

    #[test]
    fn the_last_record_of_a_rotated_file_cut_off_is_found_in_the_next_file() {
        let all = chain(&Head::genesis(), 6);
        let report = run(
            &[all[..2].to_vec(), all[3..].to_vec()],
            VerifyOptions::default(),
        );
        assert_eq!(
            kinds(&report),
            vec![(1, ProblemKind::Removed)],
            "{:?}",
            report.problems
        );
        assert!(
            report.problems[0].detail.contains("seq 3 is missing"),
            "{}",
            report.problems[0]
        );
    }

    #[test]
    fn a_repeated_line_is_out_of_order_once() {
        let mut lines = chain(&Head::genesis(), 5);
        lines.insert(3, lines[2].clone());
        let report = run(&[lines], VerifyOptions::default());
        assert_eq!(
            kinds(&report),
            vec![(4, ProblemKind::OutOfOrder)],
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_second_trail_appended_to_the_first_is_named() {
        let mut lines = chain(&Head::genesis(), 3);
        lines.extend(chain(&Head::genesis(), 2));
        let report = run(&[lines], VerifyOptions::default());
        assert_eq!(
            kinds(&report),
            vec![(4, ProblemKind::BadStart)],
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_seq_changed_without_the_hash_is_an_edit() {
        let mut lines = chain(&Head::genesis(), 4);
        lines[2] = lines[2].replace("\"seq\":3", "\"seq\":9");
        let report = run(&[lines], VerifyOptions::default());
        let first = &report.problems[0];
        assert_eq!(
            (first.line, first.kind),
            (3, ProblemKind::Edited),
            "{first}"
        );
        assert!(first.detail.contains("its seq was changed"), "{first}");
    }

    #[test]
    fn a_partial_chain_passes_only_with_partial() {
        let lines = chain(&Head::genesis(), 5)[2..].to_vec();
        let strict = run(std::slice::from_ref(&lines), VerifyOptions::default());
        assert_eq!(
            kinds(&strict),
            vec![(1, ProblemKind::BadStart)],
            "without --partial a chain must start at seq 1"
        );
        let partial = run(&[lines], VerifyOptions { partial: true });
        assert!(partial.is_intact(), "{:?}", partial.problems);
        assert!(
            partial.notes[0].contains("begins at seq 3"),
            "{:?}",
            partial.notes
        );
    }
}
