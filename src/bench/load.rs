//! The load engine: interleaved rounds over several targets, closed- and open-loop
//! pacing, and the CPU bookkeeping around each round.
//!
//! A scenario hands the engine one `Worker` per load thread and the names of its routes
//! (for example direct, gateway, agent+gateway). The engine runs a warm-up round per
//! route (discarded), then alternates short measured rounds between the routes —
//! A B C, C B A, A B C, ... — so that a noisy neighbour or a CPU frequency change
//! lands on every route alike instead of on whichever ran last. Around each round it
//! samples the CPU of the gateway and agent processes, of the in-process servers, of
//! the machine, and each load thread samples its own.
//!
//! Pacing (`drive`): closed loop issues the next operation when the previous one
//! returns. Open loop issues operation k at `start + offset + k × interval` whatever
//! happened before, and measures latency from that intended time, not from when it
//! was actually sent: a stall then shows up in every operation that should have been
//! sent during it, the correction for coordinated omission that wrk2 made popular.
//! How late the sends were is recorded too (`lag`), so a load generator that cannot
//! keep up is visible rather than hidden in the latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::cpu::{self, CpuTime, MachineCpu, ProcessCpu, ThreadGroup};
use super::histogram::Latency;
use super::progress::Progress;

/// After a failed operation, wait this long before the next, so a dead target is not
/// hammered in a tight loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// A load thread that has not reported this long after its round ended is stuck.
const ROUND_GRACE: Duration = Duration::from_secs(30);
/// Errors kept verbatim per route; later ones are only counted.
const KEPT_ERRORS: usize = 3;

/// How operations are spaced in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Next operation as soon as the previous one finished.
    Closed,
    /// One operation every `interval`, this stream's first at `offset` after the start.
    Open {
        interval: Duration,
        offset: Duration,
    },
}

/// Time, for `drive`: the real clock, or a fake one in tests.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant);
}

pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, deadline: Instant) {
        let now = Instant::now();
        if deadline > now {
            thread::sleep(deadline - now);
        }
    }
}

/// What one load thread saw in one round on one route.
#[derive(Debug, Default)]
pub struct Tally {
    /// The scenario's latency metrics, in the order of `Scenario::metrics`.
    pub latency: Vec<Latency>,
    /// Open loop only: actual send time minus intended send time.
    pub lag: Latency,
    pub ops: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Payload bytes confirmed delivered, client to server and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// CPU this load thread used during the round.
    pub cpu: CpuTime,
    /// When this thread finished the round.
    pub finished: Option<Instant>,
    /// Free-form facts the scenario learned (negotiated TLS, handshake kinds).
    pub facts: Vec<String>,
}

impl Tally {
    pub fn new(metrics: usize) -> Tally {
        Tally {
            latency: (0..metrics).map(|_| Latency::new()).collect(),
            ..Tally::default()
        }
    }

    pub fn error(&mut self, context: &str, err: &dyn std::fmt::Display) {
        self.errors += 1;
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(format!("{context}: {err}"));
        }
    }

    pub fn fact(&mut self, fact: String) {
        if !self.facts.contains(&fact) {
            self.facts.push(fact);
        }
    }

    fn absorb(&mut self, other: Tally) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            mine.merge(theirs);
        }
        self.lag.merge(&other.lag);
        self.ops += other.ops;
        self.errors += other.errors;
        for e in other.first_errors {
            if self.first_errors.len() < KEPT_ERRORS {
                self.first_errors.push(e);
            }
        }
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.cpu = self.cpu + other.cpu;
        for f in other.facts {
            self.fact(f);
        }
    }
}

/// Live counters for the progress line, shared by all load threads.
#[derive(Debug, Default)]
pub struct Live {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    pub bytes: AtomicU64,
}

/// The time window of one round, as a load thread sees it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    pub warmup: bool,
}

/// One load thread's part of a scenario.
pub trait Worker: Send {
    /// Runs operations on `route` until `window.end` and reports what happened. Must
    /// return within `window.end` plus the I/O timeout.
    fn round(&mut self, route: usize, window: &Window, pacing: Pacing, live: &Live) -> Tally;
}

/// Runs operations paced by `pacing` from `window.start` until `window.end`, recording
/// into `tally.latency[0]` the time from each operation's intended start to its end.
/// `op` gets the intended start; it may record further metrics itself.
pub fn drive<C: Clock>(
    clock: &C,
    window: &Window,
    pacing: Pacing,
    tally: &mut Tally,
    live: &Live,
    mut op: impl FnMut(Instant, &mut Tally) -> Result<(), String>,
) {
    let mut k: u64 = 0;
    loop {
        let now = clock.now();
        if now >= window.end {
            break;
        }
        let intended = match pacing {
            Pacing::Closed => now,
            Pacing::Open { interval, offset } => {
                let due = window.start + offset + mul(interval, k);
                if due >= window.end {
                    break;
                }
                if due > now {
                    clock.sleep_until(due);
                }
                due
            }
        };
        if let Pacing::Open { .. } = pacing {
            tally
                .lag
                .record(clock.now().saturating_duration_since(intended));
        }
        k += 1;
        match op(intended, tally) {
            Ok(()) => {
                let latency = clock.now().saturating_duration_since(intended);
                if let Some(h) = tally.latency.first_mut() {
                    h.record(latency);
                }
                tally.ops += 1;
                live.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                tally.error("operation failed", &err);
                live.errors.fetch_add(1, Ordering::Relaxed);
                clock.sleep_until((clock.now() + ERROR_BACKOFF).min(window.end));
            }
        }
    }
}

fn mul(d: Duration, k: u64) -> Duration {
    Duration::from_nanos(
        u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(k),
    )
}

/// What to run: routes, timing, load model.
#[derive(Debug, Clone)]
pub struct Plan {
    pub title: String,
    pub routes: Vec<String>,
    pub warmup: Duration,
    pub duration: Duration,
    pub round: Duration,
    /// Total operations per second over all load threads; `None` is closed loop.
    pub rate: Option<f64>,
}

/// Where to read the targets' CPU from.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub gateway: Option<u32>,
    pub agents: Vec<u32>,
    pub servers: Option<Arc<ThreadGroup>>,
}

/// CPU used during a route's measured rounds, by whom.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub client: CpuTime,
    pub servers: CpuTime,
    pub gateway: CpuTime,
    pub agent: CpuTime,
    pub machine: MachineCpu,
}

/// Everything measured on one route.
#[derive(Debug)]
pub struct RouteOutcome {
    pub name: String,
    pub tally: Tally,
    /// Sum of the measured rounds' lengths.
    pub seconds: f64,
    /// Per measured round: (seconds, ops, bytes up, bytes down).
    pub rounds: Vec<(f64, u64, u64, u64)>,
    pub cpu: CpuUse,
}

/// Runs `plan` with one thread per worker and returns one outcome per route.
pub fn run(
    plan: &Plan,
    workers: Vec<Box<dyn Worker>>,
    metrics: usize,
    probes: &Probes,
    progress: &Progress,
) -> anyhow::Result<Vec<RouteOutcome>> {
    if workers.is_empty() || plan.routes.is_empty() {
        bail!("{}: nothing to run", plan.title);
    }
    let threads = workers.len();
    let board = Arc::new(Board::default());
    let live = Arc::new(Live::default());
    let (tx, rx) = mpsc::channel::<Tally>();
    let pacing = |i: usize| match plan.rate {
        None => Pacing::Closed,
        Some(rate) => {
            let per_thread = rate / threads as f64;
            let interval = Duration::from_secs_f64(1.0 / per_thread);
            Pacing::Open {
                interval,
                offset: interval.mul_f64(i as f64 / threads as f64),
            }
        }
    };

    let mut handles = Vec::new();
    for (i, mut worker) in workers.into_iter().enumerate() {
        let (board, live, tx) = (board.clone(), live.clone(), tx.clone());
        let pacing = pacing(i);
        let handle = thread::Builder::new()
            .name(format!("bench-load-{i}"))
            .spawn(move || {
                let mut seen = 0;
                while let Some((generation, spec)) = board.next(seen) {
                    seen = generation;
                    let Some((route, window)) = spec else { break };
                    let before = cpu::thread_self().unwrap_or_default();
                    let mut tally = worker.round(route, &window, pacing, &live);
                    tally.cpu = cpu::thread_self().unwrap_or_default() - before;
                    tally.finished = Some(Instant::now());
                    if tx.send(tally).is_err() {
                        break;
                    }
                }
            })?;
        handles.push(handle);
    }
    drop(tx);

    let result = coordinate(plan, &board, &live, &rx, threads, metrics, probes, progress);
    board.publish(None);
    for handle in handles {
        let _ = handle.join();
    }
    progress.clear();
    result
}

/// The round schedule: every route warms up once, then measured rounds alternate in
/// mirrored order.
pub fn schedule(plan: &Plan) -> Vec<(usize, Duration, bool)> {
    let routes = plan.routes.len();
    let mut rounds = Vec::new();
    if !plan.warmup.is_zero() {
        rounds.extend((0..routes).map(|r| (r, plan.warmup, true)));
    }
    let round = plan.round.max(Duration::from_millis(10));
    let mut left = plan.duration;
    let mut i = 0usize;
    while !left.is_zero() {
        let this = round.min(left);
        left -= this;
        let order: Vec<usize> = if i.is_multiple_of(2) {
            (0..routes).collect()
        } else {
            (0..routes).rev().collect()
        };
        rounds.extend(order.into_iter().map(|r| (r, this, false)));
        i += 1;
    }
    rounds
}

#[allow(clippy::too_many_arguments)]
fn coordinate(
    plan: &Plan,
    board: &Board,
    live: &Live,
    rx: &mpsc::Receiver<Tally>,
    threads: usize,
    metrics: usize,
    probes: &Probes,
    progress: &Progress,
) -> anyhow::Result<Vec<RouteOutcome>> {
    let mut outcomes: Vec<RouteOutcome> = plan
        .routes
        .iter()
        .map(|name| RouteOutcome {
            name: name.clone(),
            tally: Tally::new(metrics),
            seconds: 0.0,
            rounds: Vec::new(),
            cpu: CpuUse::default(),
        })
        .collect();
    let rounds = schedule(plan);
    let total: Duration = rounds.iter().map(|r| r.1).sum();
    let run_start = Instant::now();

    for (n, &(route, length, warmup)) in rounds.iter().enumerate() {
        let before = sample(probes);
        live.ops.store(0, Ordering::Relaxed);
        live.errors.store(0, Ordering::Relaxed);
        live.bytes.store(0, Ordering::Relaxed);
        let start = Instant::now();
        let window = Window {
            start,
            end: start + length,
            warmup,
        };
        board.publish(Some((route, window)));

        let phase = if warmup { "warm-up" } else { "measuring" };
        while Instant::now() < window.end {
            // Sleep first: a rate shown at the very start of a round is always zero.
            let left = window.end.saturating_duration_since(Instant::now());
            thread::sleep(left.min(Duration::from_millis(100)));
            let elapsed = start.elapsed().as_secs_f64().max(1e-3);
            let bytes = live.bytes.load(Ordering::Relaxed);
            let rate = if bytes > 0 {
                format!("{:.0} MB/s", bytes as f64 / 1e6 / elapsed)
            } else {
                format!(
                    "{:.0} op/s",
                    live.ops.load(Ordering::Relaxed) as f64 / elapsed
                )
            };
            progress.show(&format!(
                "{} · {:.1}/{:.1} s · round {}/{} {phase} {} · {rate} · {} errors",
                plan.title,
                run_start.elapsed().as_secs_f64(),
                total.as_secs_f64(),
                n + 1,
                rounds.len(),
                plan.routes[route],
                live.errors.load(Ordering::Relaxed)
            ));
        }

        let mut round = Tally::new(metrics);
        let mut last = start;
        for _ in 0..threads {
            let wait = (window.end + ROUND_GRACE).saturating_duration_since(Instant::now());
            let tally = rx.recv_timeout(wait).map_err(|_| {
                anyhow!(
                    "{}: a load thread did not finish its round on {} in time",
                    plan.title,
                    plan.routes[route]
                )
            })?;
            last = last.max(tally.finished.unwrap_or(start));
            round.absorb(tally);
        }
        let after = sample(probes);
        if round.ops == 0 && round.errors > 0 {
            bail!(
                "{} via {}: every operation failed; first: {}",
                plan.title,
                plan.routes[route],
                round
                    .first_errors
                    .first()
                    .map(String::as_str)
                    .unwrap_or("?")
            );
        }
        if warmup {
            continue;
        }
        let seconds = (last - start).as_secs_f64();
        let out = &mut outcomes[route];
        out.seconds += seconds;
        out.rounds
            .push((seconds, round.ops, round.bytes_up, round.bytes_down));
        out.cpu.client = out.cpu.client + round.cpu;
        out.cpu.servers = out.cpu.servers + (after.servers - before.servers);
        out.cpu.gateway = out.cpu.gateway + after.gateway_since(&before);
        out.cpu.agent = out.cpu.agent + after.agent_since(&before);
        let m = after.machine - before.machine;
        out.cpu.machine.busy_ns += m.busy_ns;
        out.cpu.machine.idle_ns += m.idle_ns;
        out.cpu.machine.steal_ns += m.steal_ns;
        out.tally.absorb(round);
    }
    Ok(outcomes)
}

/// Cores the gateway and agents use while the bench sends them nothing, measured over
/// `window`. Anything but a trickle means sessions of an earlier scenario are still
/// being served, which would be charged to the next scenario's routes.
pub fn target_idle_cores(probes: &Probes, window: Duration) -> f64 {
    let before = sample(probes);
    thread::sleep(window);
    let after = sample(probes);
    let busy = after.gateway_since(&before).run_ns + after.agent_since(&before).run_ns;
    busy as f64 / 1e9 / window.as_secs_f64()
}

struct Sample {
    gateway: Option<ProcessCpu>,
    /// One per agent, in `probes.agents` order.
    agents: Vec<Option<ProcessCpu>>,
    servers: CpuTime,
    machine: MachineCpu,
}

impl Sample {
    fn gateway_since(&self, earlier: &Sample) -> CpuTime {
        since(&self.gateway, &earlier.gateway)
    }

    fn agent_since(&self, earlier: &Sample) -> CpuTime {
        self.agents
            .iter()
            .zip(&earlier.agents)
            .map(|(now, then)| since(now, then))
            .fold(CpuTime::default(), |a, b| a + b)
    }
}

/// A process that could not be read at either end (it exited) counts as nothing.
fn since(now: &Option<ProcessCpu>, then: &Option<ProcessCpu>) -> CpuTime {
    match (now, then) {
        (Some(now), Some(then)) => now.since(then),
        _ => CpuTime::default(),
    }
}

fn sample(probes: &Probes) -> Sample {
    let proc = |pid: Option<u32>| pid.and_then(|p| cpu::process(p).ok());
    Sample {
        gateway: proc(probes.gateway),
        agents: probes.agents.iter().map(|&p| proc(Some(p))).collect(),
        servers: probes
            .servers
            .as_ref()
            .map(|g| g.total())
            .unwrap_or_default(),
        machine: cpu::machine().unwrap_or_default(),
    }
}

/// Where the coordinator posts the next round; load threads wait for a new generation.
#[derive(Default)]
struct Board {
    state: Mutex<(u64, Option<(usize, Window)>)>,
    changed: Condvar,
}

/// How long a load thread waits for the next round before deciding the run is over.
const BOARD_PATIENCE: Duration = Duration::from_secs(600);

impl Board {
    fn publish(&self, round: Option<(usize, Window)>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        state.1 = round;
        self.changed.notify_all();
    }

    /// Blocks until a generation newer than `seen` is posted (or patience runs out,
    /// which ends the thread as if the run were over).
    #[allow(clippy::type_complexity)]
    fn next(&self, seen: u64) -> Option<(u64, Option<(usize, Window)>)> {
        let deadline = Instant::now() + BOARD_PATIENCE;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.0 == seen {
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some((state.0, state.1))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock that only moves when told to: sleeping jumps to the deadline, and the
    /// operation under test advances it by its simulated service time.
    struct FakeClock(Cell<Instant>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
        fn sleep_until(&self, deadline: Instant) {
            if deadline > self.0.get() {
                self.0.set(deadline);
            }
        }
    }

    /// One second at 100 operations per second; every operation takes 1 ms except the
    /// 50th, which stalls for 100 ms.
    fn stalled_run(pacing: Pacing) -> Tally {
        let start = Instant::now();
        let clock = FakeClock(Cell::new(start));
        let window = Window {
            start,
            end: start + Duration::from_secs(1),
            warmup: false,
        };
        let mut tally = Tally::new(1);
        let mut n = 0;
        drive(
            &clock,
            &window,
            pacing,
            &mut tally,
            &Live::default(),
            |_, _| {
                n += 1;
                clock.advance(if n == 50 {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(1)
                });
                Ok(())
            },
        );
        tally
    }

    fn open_100_per_second() -> Pacing {
        Pacing::Open {
            interval: Duration::from_millis(10),
            offset: Duration::ZERO,
        }
    }

    #[test]
    fn open_loop_charges_a_stall_to_every_operation_that_was_due_during_it() {
        let tally = stalled_run(open_100_per_second());
        let h = &tally.latency[0];
        assert_eq!(
            tally.ops, 100,
            "every intended operation in the second is issued"
        );
        let slow = h.count() - h.inner().count_between(0, 4_999);
        // The stalled operation (100 ms) and the ten that were due while it stalled
        // (finished 91, 82, ..., 10 ms after their intended start) are all slow.
        assert_eq!(slow, 11, "operations at or above 5 ms: {slow}");
        assert!(
            h.percentile(100.0) >= 100_000,
            "the stall itself is the maximum"
        );
        let p95 = h.percentile(95.0);
        assert!(p95 >= 10_000, "p95 must show the backlog, got {p95} µs");
        assert!(
            tally.lag.percentile(100.0) >= 90_000,
            "the send lag shows the generator fell behind: {} µs",
            tally.lag.percentile(100.0)
        );
    }

    #[test]
    fn closed_loop_hides_the_stall_in_a_single_sample() {
        let tally = stalled_run(Pacing::Closed);
        let h = &tally.latency[0];
        let slow = h.count() - h.inner().count_between(0, 4_999);
        assert_eq!(
            slow, 1,
            "closed loop records only the stalled operation as slow"
        );
        assert!(
            h.percentile(95.0) < 2_000,
            "closed-loop p95 stays near 1 ms"
        );
        assert!(
            tally.lag.is_empty(),
            "closed loop has no schedule to lag behind"
        );
    }

    #[test]
    fn open_loop_without_stalls_measures_service_time_and_keeps_the_rate() {
        let start = Instant::now();
        let clock = FakeClock(Cell::new(start));
        let window = Window {
            start,
            end: start + Duration::from_secs(1),
            warmup: false,
        };
        let mut tally = Tally::new(1);
        drive(
            &clock,
            &window,
            open_100_per_second(),
            &mut tally,
            &Live::default(),
            |_, _| {
                clock.advance(Duration::from_micros(300));
                Ok(())
            },
        );
        assert_eq!(tally.ops, 100, "rate kept");
        assert_eq!(
            tally.latency[0].percentile(100.0),
            300,
            "latency is the service time"
        );
    }

    #[test]
    fn failed_operations_are_counted_not_timed_and_back_off() {
        let start = Instant::now();
        let clock = FakeClock(Cell::new(start));
        let window = Window {
            start,
            end: start + Duration::from_millis(100),
            warmup: false,
        };
        let mut tally = Tally::new(1);
        drive(
            &clock,
            &window,
            Pacing::Closed,
            &mut tally,
            &Live::default(),
            |_, _| Err("refused".into()),
        );
        assert_eq!(tally.ops, 0, "no operation succeeded");
        assert_eq!(
            tally.errors, 10,
            "100 ms with a 10 ms back-off is 10 attempts"
        );
        assert!(
            tally.latency[0].is_empty(),
            "failures are not latency samples"
        );
        assert_eq!(
            tally.first_errors.len(),
            KEPT_ERRORS,
            "first errors are kept"
        );
    }

    #[test]
    fn schedule_warms_up_each_route_then_alternates_mirrored_rounds() {
        let plan = Plan {
            title: "t".into(),
            routes: vec!["a".into(), "b".into()],
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(250),
            round: Duration::from_millis(100),
            rate: None,
        };
        let rounds: Vec<(usize, u64, bool)> = schedule(&plan)
            .into_iter()
            .map(|(r, d, w)| (r, d.as_millis() as u64, w))
            .collect();
        assert_eq!(
            rounds,
            vec![
                (0, 100, true),
                (1, 100, true),
                (0, 100, false),
                (1, 100, false),
                (1, 100, false),
                (0, 100, false),
                (0, 50, false),
                (1, 50, false),
            ],
            "warm-up per route, then A B, B A, A B with the last round shortened"
        );
    }
}
