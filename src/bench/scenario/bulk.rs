//! The bulk scenario: throughput one way and both ways, in MB/s (10^6 bytes).
//!
//! - upload: each load thread opens a connection to the upstream's sink at the start of
//!   a round, writes 64 KiB chunks until the round ends, half-closes, and counts what
//!   the sink says it received (so bytes still in socket buffers are not counted as
//!   delivered before they are); the time runs until that answer arrives.
//! - download: each thread reads from the upstream's source until the round ends.
//! - both: half the threads upload while the other half download, at the same time.
//!
//! A fresh connection per round keeps rounds independent; its set-up (a TLS handshake
//! on tunnel routes, about a millisecond) is inside the round's time, under 1 % of a
//! round of 500 ms or more. Each thread is one blocking connection; on a TLS route
//! the bench encrypts or decrypts everything the gateway does, so watch the CPU columns.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Context, Route, Spec, measure};
use crate::bench::load::{Live, Pacing, Tally, Window, Worker};
use crate::bench::net::Conn;
use crate::bench::results::{ScenarioResult, Unit};
use crate::bench::servers::{DOWNLOAD_MAGIC, UPLOAD_MAGIC};

const CHUNK: usize = 64 * 1024;
/// Bulk rounds are at least this long, so connection set-up stays a small share.
const ROUND_FLOOR: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
    Both,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::Upload, Direction::Download, Direction::Both];

    fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
            Direction::Both => "both ways",
        }
    }
}

pub fn run(
    ctx: &Context,
    routes: &[Route],
    direction: Direction,
) -> anyhow::Result<ScenarioResult> {
    let n = ctx.settings.connections;
    let mut workers: Vec<Box<dyn Worker>> = Vec::new();
    for i in 0..n {
        let upload = match direction {
            Direction::Upload => true,
            Direction::Download => false,
            Direction::Both => i % 2 == 0,
        };
        workers.push(Box::new(BulkWorker {
            routes: routes.to_vec(),
            upload,
            buf: vec![b'u'; CHUNK],
        }));
    }
    let mut notes = vec![
        "direct: the bench talks plain TCP to the same upstream (sink and source) the \
         gateway forwards to"
            .to_owned(),
    ];
    if direction == Direction::Both {
        notes.push(format!(
            "both ways: {} connection(s) upload while {} download, at the same time",
            n.div_ceil(2),
            n / 2
        ));
        if n < 2 {
            notes.push(
                "with one connection, \"both ways\" only uploads; use --connections 2 or more"
                    .into(),
            );
        }
    }
    let spec = Spec {
        name: "bulk",
        variant: direction.label().to_owned(),
        unit: "MB",
        metrics: Vec::new(),
        counting: Unit::PerMb,
        baseline: super::DIRECT,
        notes,
    };
    measure(ctx, spec, routes, workers, ROUND_FLOOR)
}

struct BulkWorker {
    routes: Vec<Route>,
    upload: bool,
    buf: Vec<u8>,
}

impl Worker for BulkWorker {
    fn round(&mut self, route: usize, window: &Window, _pacing: Pacing, live: &Live) -> Tally {
        let mut tally = Tally::new(0);
        let route = &self.routes[route];
        let result = route
            .connector
            .connect()
            .map_err(|e| format!("connecting: {e}"))
            .and_then(|mut conn| {
                if self.upload {
                    upload(&mut conn, &self.buf, window.end, live).map(|n| tally.bytes_up += n)
                } else {
                    download(&mut conn, &mut self.buf, window.end, live)
                        .map(|n| tally.bytes_down += n)
                }
            });
        match result {
            Ok(()) => tally.ops += 1,
            Err(err) => {
                tally.error(&route.name, &err);
                live.errors.fetch_add(1, Ordering::Relaxed);
                // Do not come back before the round is over: one failure per round.
                std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
            }
        }
        tally
    }
}

/// Writes until `end`, half-closes, and returns the byte count the sink confirms.
fn upload(conn: &mut Conn, chunk: &[u8], end: Instant, live: &Live) -> Result<u64, String> {
    conn.write_all(UPLOAD_MAGIC)
        .map_err(|e| format!("sending: {e}"))?;
    let mut sent = 0u64;
    while Instant::now() < end {
        conn.write_all(chunk).map_err(|e| format!("sending: {e}"))?;
        sent += chunk.len() as u64;
        live.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        live.ops.fetch_add(1, Ordering::Relaxed);
    }
    conn.shutdown_write()
        .map_err(|e| format!("half-closing: {e}"))?;
    let mut answer = [0u8; 8];
    conn.read_exact(&mut answer).map_err(|e| {
        format!("reading the sink's byte count (is the upstream `pgtunnel bench --serve-upstream`?): {e}")
    })?;
    let confirmed = u64::from_be_bytes(answer);
    if confirmed != sent {
        return Err(format!(
            "the upstream confirmed {confirmed} bytes of {sent} sent (is it `pgtunnel bench \
             --serve-upstream`, not a plain echo server?)"
        ));
    }
    Ok(confirmed)
}

/// Reads until `end`; returns the bytes received.
fn download(conn: &mut Conn, buf: &mut [u8], end: Instant, live: &Live) -> Result<u64, String> {
    conn.write_all(DOWNLOAD_MAGIC)
        .and_then(|()| conn.flush())
        .map_err(|e| format!("sending: {e}"))?;
    let mut received = 0u64;
    while Instant::now() < end {
        let n = conn.read(buf).map_err(|e| format!("receiving: {e}"))?;
        if n == 0 {
            return Err("the upstream closed the download early".into());
        }
        received += n as u64;
        live.bytes.fetch_add(n as u64, Ordering::Relaxed);
        live.ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(received)
}
