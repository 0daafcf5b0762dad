//! CPU accounting for the bench: how much CPU the load generator, the targets and the
//! rest of the machine used while a round ran.
//!
//! Everything comes from `/proc`, so no `unsafe` is needed here:
//! - per thread and per process: `/proc/<pid>/task/<tid>/schedstat` (proc(5)), which
//!   gives nanoseconds on the CPU and nanoseconds spent runnable but waiting for a CPU.
//!   This is the scheduler's exact `sum_exec_runtime`, the same clock `getrusage(2)`
//!   derives its user+system total from, but per thread and in nanoseconds rather than
//!   split into coarse user/system ticks. The run-queue wait is a bonus: it shows how
//!   much the processes fought over the cores.
//! - for the whole machine: the `cpu` line of `/proc/stat`, in USER_HZ ticks (fixed at
//!   100 per second on Linux), to see what other processes used meanwhile.
//!
//! A process's CPU is the exact sum over its live threads where its threads stay, and
//! its coarser `stat` total where threads came and went (see [`ProcessCpu::since`]), so
//! a target with a thread per connection is counted in full. Threads of our own that
//! come and go (the in-process servers) are tracked by `ThreadGroup`, which keeps the
//! CPU of threads that have ended exactly.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::ops::{Add, Sub};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// USER_HZ, the unit of `/proc/stat`: 100 on every Linux architecture we build for.
const USER_HZ: u64 = 100;

/// CPU time of a thread or a set of threads, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTime {
    /// Time on a CPU (user and system).
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU.
    pub wait_ns: u64,
}

impl Add for CpuTime {
    type Output = CpuTime;
    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            run_ns: self.run_ns + other.run_ns,
            wait_ns: self.wait_ns + other.wait_ns,
        }
    }
}

impl Sub for CpuTime {
    type Output = CpuTime;
    /// Saturating: a thread that vanished between two samples must not wrap around.
    fn sub(self, other: CpuTime) -> CpuTime {
        CpuTime {
            run_ns: self.run_ns.saturating_sub(other.run_ns),
            wait_ns: self.wait_ns.saturating_sub(other.wait_ns),
        }
    }
}

/// The calling thread's CPU time so far.
pub fn thread_self() -> io::Result<CpuTime> {
    read_schedstat("/proc/thread-self/schedstat")
}

/// What one look at a process's CPU found: the exact figures of its live threads, and
/// the coarse total that also remembers threads that have ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCpu {
    /// Sum over the live threads' `schedstat`, in nanoseconds.
    live: CpuTime,
    /// The live threads' ids, sorted.
    threads: Vec<u32>,
    /// utime + stime of the whole process from its `stat`, in USER_HZ ticks: every
    /// thread it ever had, each rounded down to a tick.
    total_ticks: u64,
}

impl ProcessCpu {
    /// CPU used between `earlier` and this look.
    ///
    /// When the same threads were there both times and the coarse total grew by no
    /// more than the exact one (give or take a tick of rounding per thread), no thread
    /// came and went, and the exact figure is the answer: the gateway and agent keep
    /// their threads, so they get nanoseconds. Otherwise threads ended in between (a
    /// server with a thread per connection, such as stunnel), whose time only the
    /// coarse total holds; then it is the answer, at 10 ms resolution.
    pub fn since(&self, earlier: &ProcessCpu) -> CpuTime {
        let exact = self.live - earlier.live;
        let tick_ns = 1_000_000_000 / USER_HZ;
        let coarse_ns = self.total_ticks.saturating_sub(earlier.total_ticks) * tick_ns;
        let rounding_ns = (self.threads.len() as u64 + 1) * tick_ns;
        if self.threads == earlier.threads && coarse_ns <= exact.run_ns + rounding_ns {
            exact
        } else {
            CpuTime {
                run_ns: coarse_ns.max(exact.run_ns),
                wait_ns: exact.wait_ns,
            }
        }
    }
}

/// Looks at process `pid`'s CPU (see [`ProcessCpu::since`] for how two looks become a
/// figure).
pub fn process(pid: u32) -> io::Result<ProcessCpu> {
    let mut look = ProcessCpu::default();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        // A thread may end between listing and reading; it simply drops out here and
        // stays in the process's total.
        if let Ok(t) = read_schedstat(&dir.join("schedstat").to_string_lossy()) {
            look.live = look.live + t;
            if let Some(tid) = dir.file_name().and_then(|n| n.to_str()?.parse().ok()) {
                look.threads.push(tid);
            }
        }
    }
    look.threads.sort_unstable();
    look.total_ticks = read_stat_ticks(&format!("/proc/{pid}/stat"))?;
    Ok(look)
}

/// utime + stime from a `stat` file (proc(5): fields 14 and 15), in USER_HZ ticks.
fn read_stat_ticks(path: &str) -> io::Result<u64> {
    parse_stat_ticks(&fs::read_to_string(path)?)
}

fn parse_stat_ticks(text: &str) -> io::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')', so the
    // fields are counted from the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| bad_data("stat has no command name"))?;
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and
    // 13th fields here.
    let mut fields = rest.split_whitespace().skip(11).map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(utime)), Some(Ok(stime))) => Ok(utime + stime),
        _ => Err(bad_data("stat has no utime and stime")),
    }
}

/// Time all CPUs of the machine spent, by kind, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCpu {
    /// user, nice, system, irq and softirq time.
    pub busy_ns: u64,
    /// idle and iowait time.
    pub idle_ns: u64,
    /// Time the hypervisor gave our virtual CPUs to someone else.
    pub steal_ns: u64,
}

impl Sub for MachineCpu {
    type Output = MachineCpu;
    fn sub(self, other: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy_ns: self.busy_ns.saturating_sub(other.busy_ns),
            idle_ns: self.idle_ns.saturating_sub(other.idle_ns),
            steal_ns: self.steal_ns.saturating_sub(other.steal_ns),
        }
    }
}

/// The machine-wide totals from the first line of `/proc/stat`.
pub fn machine() -> io::Result<MachineCpu> {
    parse_proc_stat(&fs::read_to_string("/proc/stat")?)
}

fn parse_proc_stat(text: &str) -> io::Result<MachineCpu> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| bad_data("/proc/stat has no `cpu` line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if fields.len() < 8 {
        return Err(bad_data("/proc/stat `cpu` line has fewer than 8 fields"));
    }
    let tick_ns = 1_000_000_000 / USER_HZ;
    // Columns (proc(5)): user nice system idle iowait irq softirq steal [guest ...].
    // Guest time is already included in user, so it is not added again.
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    Ok(MachineCpu {
        busy_ns: busy * tick_ns,
        idle_ns: (fields[3] + fields[4]) * tick_ns,
        steal_ns: fields[7] * tick_ns,
    })
}

fn read_schedstat(path: &str) -> io::Result<CpuTime> {
    parse_schedstat(&fs::read_to_string(path)?)
}

/// `schedstat` holds three numbers: ns on the CPU, ns waiting on a run queue, and the
/// number of time slices.
fn parse_schedstat(text: &str) -> io::Result<CpuTime> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(run_ns)), Some(Ok(wait_ns))) => Ok(CpuTime { run_ns, wait_ns }),
        _ => Err(bad_data("schedstat is not two numbers")),
    }
}

fn bad_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// A set of our own threads whose CPU is counted together, including threads that
/// have already ended (the in-process servers start and end threads with connections).
#[derive(Debug, Default)]
pub struct ThreadGroup {
    inner: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    /// CPU time of members that have left.
    retired: CpuTime,
    /// Thread ids of current members.
    live: HashSet<u32>,
}

/// Membership of the calling thread in a `ThreadGroup`; leaving (drop) banks its CPU.
#[derive(Debug)]
pub struct Member {
    group: Arc<ThreadGroup>,
    tid: Option<u32>,
}

impl ThreadGroup {
    pub fn new() -> Arc<ThreadGroup> {
        Arc::new(ThreadGroup::default())
    }

    /// Adds the calling thread until the returned value is dropped (on that thread).
    pub fn enter(self: &Arc<Self>) -> Member {
        let tid = current_tid();
        if let Some(tid) = tid {
            self.state().live.insert(tid);
        }
        Member {
            group: Arc::clone(self),
            tid,
        }
    }

    /// CPU used by every thread that has been a member, up to now.
    pub fn total(&self) -> CpuTime {
        let state = self.state();
        let mut total = state.retired;
        for tid in &state.live {
            if let Ok(t) = read_schedstat(&format!("/proc/self/task/{tid}/schedstat")) {
                total = total + t;
            }
        }
        total
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GroupState> {
        // A panic while holding this lock leaves only plain numbers behind; keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let Some(tid) = self.tid else { return };
        // Read and move under one lock, so `total` never counts this thread twice or
        // not at all.
        let mut state = self.group.state();
        if let Ok(t) = thread_self() {
            state.retired = state.retired + t;
        }
        state.live.remove(&tid);
    }
}

/// The kernel thread id of the calling thread, from the `/proc/thread-self` link
/// ("<pid>/task/<tid>").
fn current_tid() -> Option<u32> {
    let link = fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    /// Spins until this thread has used `cpu` of CPU time by its own account, or
    /// `limit` of wall time has passed (the machine may be busy with other work).
    fn spin_cpu(cpu: Duration, limit: Duration) -> CpuTime {
        let start = Instant::now();
        let before = thread_self().unwrap();
        let mut x = 0u64;
        loop {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let used = thread_self().unwrap() - before;
            if used.run_ns >= cpu.as_nanos() as u64 || start.elapsed() > limit {
                return used;
            }
        }
    }

    #[test]
    fn stat_ticks_are_utime_plus_stime_even_with_a_strange_command_name() {
        let line = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(
            parse_stat_ticks(line).unwrap(),
            287,
            "fields 14 and 15 summed"
        );
        assert!(parse_stat_ticks("4242 no name").is_err(), "no parentheses");
    }

    #[test]
    fn a_process_keeps_the_cpu_of_a_thread_that_ended() {
        let before = process(std::process::id()).unwrap();
        thread::spawn(|| spin_cpu(Duration::from_millis(200), Duration::from_secs(5)))
            .join()
            .unwrap();
        let used = process(std::process::id()).unwrap().since(&before);
        // The spinning thread is gone; only the process's stat remembers it, in 10 ms
        // ticks. Other tests in this binary may run meanwhile and only add to it.
        assert!(
            used.run_ns >= 150_000_000,
            "an ended thread's 200 ms of CPU were lost: {} ms counted",
            used.run_ns / 1_000_000
        );
    }

    #[test]
    fn a_process_whose_threads_stay_is_counted_to_the_nanosecond() {
        let earlier = ProcessCpu {
            live: CpuTime {
                run_ns: 1_000_000_003,
                wait_ns: 5,
            },
            threads: vec![7, 9],
            total_ticks: 100,
        };
        let later = ProcessCpu {
            live: CpuTime {
                run_ns: 1_012_345_678,
                wait_ns: 8,
            },
            threads: vec![7, 9],
            // 12.3 ms more, but the rounding of two threads may show it as 2 or 3 ticks.
            total_ticks: 103,
        };
        assert_eq!(
            later.since(&earlier),
            CpuTime {
                run_ns: 12_345_675,
                wait_ns: 3
            },
            "same threads, no hidden time: the exact figure"
        );
        let churned = ProcessCpu {
            threads: vec![7, 11],
            total_ticks: 150,
            ..later
        };
        assert_eq!(
            churned.since(&earlier).run_ns,
            500_000_000,
            "a thread ended: the process total, 50 ticks"
        );
    }

    #[test]
    fn schedstat_parses_run_and_wait_nanoseconds() {
        let t = parse_schedstat("769172892 246281562 161\n").unwrap();
        assert_eq!(t.run_ns, 769_172_892, "run time");
        assert_eq!(t.wait_ns, 246_281_562, "run-queue wait");
        assert!(
            parse_schedstat("garbage").is_err(),
            "garbage must be an error"
        );
    }

    #[test]
    fn proc_stat_cpu_line_is_split_into_busy_idle_and_steal() {
        let text = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let m = parse_proc_stat(text).unwrap();
        assert_eq!(m.busy_ns, 160 * 10_000_000, "user+nice+system+irq+softirq");
        assert_eq!(m.idle_ns, 1020 * 10_000_000, "idle+iowait");
        assert_eq!(m.steal_ns, 7 * 10_000_000, "steal");
    }

    #[test]
    fn a_spinning_thread_shows_its_cpu_time() {
        let used = spin_cpu(Duration::from_millis(20), Duration::from_secs(10));
        assert!(
            used.run_ns >= 20_000_000,
            "10 s of spinning showed only {} ns on the CPU",
            used.run_ns
        );
        let whole = process(std::process::id()).unwrap();
        assert!(
            whole.live.run_ns >= used.run_ns,
            "the process total includes this thread"
        );
    }

    #[test]
    fn a_thread_group_keeps_the_cpu_of_threads_that_ended() {
        let group = ThreadGroup::new();
        let g = Arc::clone(&group);
        std::thread::spawn(move || {
            let _member = g.enter();
            spin_cpu(Duration::from_millis(20), Duration::from_secs(10));
        })
        .join()
        .unwrap();
        let total = group.total();
        assert!(
            total.run_ns >= 20_000_000,
            "an ended member's 20 ms of CPU were lost: {} ns",
            total.run_ns
        );
        assert!(
            group.state().live.is_empty(),
            "the ended thread is still listed as live"
        );
    }
}
