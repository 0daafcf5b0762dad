//! The live progress line on stderr: elapsed time, round, rate and errors. On a
//! terminal it is redrawn in place; with `--progress` into a file or pipe it is written
//! as a plain line once a second instead, so the log stays readable. Without either,
//! every call is a no-op.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Plain-line mode writes at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    terminal: bool,
    last_plain: Cell<Option<Instant>>,
}

impl Progress {
    /// On when forced, or when stderr is a terminal.
    pub fn new(force: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            enabled: force || terminal,
            terminal,
            last_plain: Cell::new(None),
        }
    }

    pub fn off() -> Progress {
        Progress {
            enabled: false,
            terminal: false,
            last_plain: Cell::new(None),
        }
    }

    /// Shows `line` as the current progress.
    pub fn show(&self, line: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // \r and "erase line" (ECMA-48 EL, CSI 2 K) redraw in place.
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let due = self
                .last_plain
                .get()
                .is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
            if !due {
                return;
            }
            self.last_plain.set(Some(Instant::now()));
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Removes the line, so what is printed next starts clean.
    pub fn clear(&self) {
        if self.enabled && self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
