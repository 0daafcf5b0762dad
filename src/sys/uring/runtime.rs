//! The per-thread runtime: one io_uring ring, a table of operations in flight, and a
//! local executor for the tasks (sessions) that await them.
//!
//! Everything here is `!Send` on purpose: a worker thread owns its runtime, its ring and
//! its tasks, and nothing crosses threads except wake-ups (which only ever come from the
//! same thread, but `Waker` must be `Send`, so the ready queue is a tiny mutex).
//!
//! The loop is simple: poll every ready task; hand the queued submissions to the kernel
//! and, when no task is ready, wait for at least one completion; route each completion
//! to its operation's slot and wake the task that waits on it. With DEFER_TASKRUN the
//! kernel runs completion work only when we ask for events, which is exactly the moment
//! we are idle, so the worker is never interrupted mid-task.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue};
use slab::Slab;

/// `user_data` of the cancel requests we send; their own completions carry nothing we need.
const CANCEL_USER_DATA: u64 = u64::MAX;

/// Ring sizes. 256 submissions per `io_uring_enter` is plenty for one worker; the
/// completion queue is sized so that a burst of multishot completions does not overflow.
const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;

/// How long shutdown waits for the kernel to finish cancelled operations before it
/// leaks their buffers rather than free memory the kernel might still write.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Driver>>> = const { RefCell::new(None) };
}

/// The state of one submitted operation, found by its `user_data` (the slab index).
pub(crate) enum Slot {
    /// Submitted, no completion yet; the waker of the task that awaits it.
    Waiting(Option<Waker>),
    /// Completed (`res`, `flags`), not yet collected by its future.
    Done(i32, u32),
    /// A multishot operation: completions queue up until the owner collects them.
    Multi {
        waker: Option<Waker>,
        results: VecDeque<(i32, u32)>,
        armed: bool,
    },
    /// The future was dropped before completion. The kernel may still use the memory in
    /// `keep`, so it lives here until the final completion arrives. `close_fds` says that
    /// non-negative results are file descriptors nobody will own (multishot accept).
    Orphaned {
        _keep: Box<dyn Any>,
        close_fds: bool,
    },
}

/// Owns the ring and the operation table of one thread.
pub(crate) struct Driver {
    ring: RefCell<IoUring>,
    pub(crate) slots: RefCell<Slab<Slot>>,
    executor: Executor,
}

/// A handle to this thread's runtime; created by [`Runtime::new`] and entered by
/// [`Runtime::block_on`].
pub struct Runtime {
    driver: Rc<Driver>,
}

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

struct Executor {
    /// `None` while the task is being polled (taken out so that it may spawn others).
    tasks: RefCell<Slab<TaskEntry>>,
    ready: Arc<ReadyQueue>,
    generation: Cell<u64>,
}

struct TaskEntry {
    future: Option<LocalTask>,
    waker: Waker,
    handle: Arc<TaskWaker>,
    generation: u64,
}

#[derive(Default)]
struct ReadyQueue {
    queue: Mutex<VecDeque<(usize, u64)>>,
}

struct TaskWaker {
    id: usize,
    generation: u64,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // A poisoned lock means a panic while pushing an integer; the queue is still
            // consistent, so keep using it.
            let mut queue = self.ready.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back((self.id, self.generation));
        }
    }
}

impl Runtime {
    /// Sets up a ring with SINGLE_ISSUER, DEFER_TASKRUN and COOP_TASKRUN (kernel 6.1+).
    /// Fails with the kernel's error when io_uring is disabled or too old.
    pub fn new() -> io::Result<Runtime> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let driver = Rc::new(Driver {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slab::with_capacity(1024)),
            executor: Executor {
                tasks: RefCell::new(Slab::with_capacity(256)),
                ready: Arc::new(ReadyQueue::default()),
                generation: Cell::new(0),
            },
        });
        Ok(Runtime { driver })
    }

    /// Runs `future` and every task it spawns until `future` completes. Tasks still
    /// running then are dropped (their operations cancelled) before this returns.
    pub fn block_on<F: Future + 'static>(&self, future: F) -> io::Result<F::Output> {
        let _enter = EnterGuard::enter(self.driver.clone());
        let output: Rc<RefCell<Option<F::Output>>> = Rc::new(RefCell::new(None));
        let slot = output.clone();
        let (main_id, main_generation) = self.driver.executor.spawn(Box::pin(async move {
            let value = future.await;
            *slot.borrow_mut() = Some(value);
        }));

        let result = loop {
            self.driver.executor.run_ready();
            if let Some(value) = output.borrow_mut().take() {
                break Ok(value);
            }
            if !self.driver.executor.is_alive(main_id, main_generation) {
                break Err(io::Error::other("the runtime's main task panicked"));
            }
            let idle = self.driver.executor.is_idle();
            if let Err(err) = self.driver.submit_and_reap(idle) {
                break Err(err);
            }
        };

        self.driver.shutdown();
        result
    }
}

/// Spawns a task on the current thread's runtime. Panics if called outside
/// [`Runtime::block_on`], which is a programming error, never a peer's doing.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) {
    Driver::with_current(|driver| {
        driver.executor.spawn(Box::pin(future));
    });
}

/// Hands queued submissions to the kernel without waiting; a no-op outside a runtime.
pub(crate) fn try_flush() -> io::Result<()> {
    CURRENT.with(|current| match current.borrow().as_ref() {
        Some(driver) => driver.ring.borrow().submit().map(|_| ()),
        None => Ok(()),
    })
}

/// Yields to the other ready tasks once.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

impl Driver {
    pub(crate) fn with_current<R>(f: impl FnOnce(&Rc<Driver>) -> R) -> R {
        CURRENT.with(|current| {
            let current = current.borrow();
            let driver = current
                .as_ref()
                .expect("io_uring operation used outside Runtime::block_on");
            f(driver)
        })
    }

    /// Queues one submission. The caller guarantees (see `Op::submit`) that every
    /// pointer in `sqe` stays valid until its completion arrives.
    pub(crate) fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            {
                let mut ring = self.ring.borrow_mut();
                // SAFETY: the memory `sqe` points to is owned by the operation's future or,
                // once that is dropped, by its `Slot::Orphaned`, until the completion is
                // reaped; the caller of `push` upholds that (see `Op::submit`).
                if unsafe { ring.submission().push(sqe) }.is_ok() {
                    return Ok(());
                }
            }
            // The submission queue is full: hand it to the kernel and try again.
            self.submit_and_reap(false)?;
        }
    }

    /// Allocates a slot for a new operation and returns its index (the `user_data`).
    pub(crate) fn insert_slot(&self, slot: Slot) -> usize {
        self.slots.borrow_mut().insert(slot)
    }

    /// Submits queued entries; when `wait` is set, blocks until at least one completion.
    /// Then routes every available completion to its slot.
    fn submit_and_reap(&self, wait: bool) -> io::Result<()> {
        let want = usize::from(wait);
        let submitted = self.ring.borrow().submit_and_wait(want);
        match submitted {
            Ok(_) => {}
            // A signal arrived while we waited: just look at what completed.
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            // The completion queue is full (EBUSY) or the kernel is short of memory for
            // the moment (EAGAIN): reaping makes room, and the caller calls again.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {}
            Err(err) => return Err(err),
        }
        self.reap();
        Ok(())
    }

    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            let user_data = cqe.user_data();
            if user_data == CANCEL_USER_DATA {
                continue;
            }
            complete_slot(&mut slots, user_data as usize, cqe.result(), cqe.flags());
        }
    }

    /// Asks the kernel to cancel the operation whose `user_data` is `id`. Its completion
    /// (usually -ECANCELED) still arrives and frees the slot.
    pub(crate) fn cancel(&self, id: usize) {
        let sqe = opcode::AsyncCancel::new(id as u64)
            .build()
            .user_data(CANCEL_USER_DATA);
        // A cancel that cannot even be queued means the ring is gone; the slot then lives
        // until the runtime shuts down, which is the safe side.
        let _ = self.push(&sqe);
    }

    /// Drops every task (cancelling their operations), then waits a bounded time for the
    /// kernel to finish with orphaned buffers. Whatever is still in flight after that is
    /// leaked on purpose: freeing it could let the kernel write into reused memory.
    fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.executor.tasks.borrow_mut());
        drop(tasks);

        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !self.slots.borrow().is_empty() && Instant::now() < deadline {
            let ids: Vec<usize> = self.slots.borrow().iter().map(|(id, _)| id).collect();
            for id in ids {
                self.cancel(id);
            }
            let _ = self.ring.borrow().submit();
            // Waiting with a timeout keeps a stuck kernel operation from hanging shutdown.
            let ts = io_uring::types::Timespec::new().nsec(50_000_000);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.borrow().submitter().submit_with_args(1, &args);
            self.reap();
        }
        let leftover = std::mem::take(&mut *self.slots.borrow_mut());
        if !leftover.is_empty() {
            tracing::warn!(
                ops = leftover.len(),
                "io_uring operations still in flight at exit"
            );
            std::mem::forget(leftover);
        }
    }
}

fn complete_slot(slots: &mut Slab<Slot>, id: usize, res: i32, flags: u32) {
    let more = cqueue::more(flags);
    let Some(slot) = slots.get_mut(id) else {
        return;
    };
    match slot {
        Slot::Waiting(waker) => {
            let waker = waker.take();
            *slot = Slot::Done(res, flags);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        Slot::Multi {
            waker,
            results,
            armed,
        } => {
            results.push_back((res, flags));
            *armed = more;
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        Slot::Orphaned { close_fds, .. } => {
            if *close_fds && res >= 0 {
                // SAFETY: a non-negative result of an accept is a new descriptor that no
                // one else knows about; closing it is the only thing left to do with it.
                unsafe { libc::close(res) };
            }
            if !more {
                slots.remove(id);
            }
        }
        // A second completion for a single-shot op cannot happen; keep the first.
        Slot::Done(..) => {}
    }
}

impl Executor {
    /// Adds a task; returns its id and generation.
    fn spawn(&self, future: LocalTask) -> (usize, u64) {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let id = entry.key();
        let waker = Arc::new(TaskWaker {
            id,
            generation,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        entry.insert(TaskEntry {
            future: Some(future),
            waker: Waker::from(waker.clone()),
            handle: waker.clone(),
            generation,
        });
        waker.wake_by_ref();
        (id, generation)
    }

    fn is_alive(&self, id: usize, generation: u64) -> bool {
        self.tasks
            .borrow()
            .get(id)
            .is_some_and(|task| task.generation == generation)
    }

    fn is_idle(&self) -> bool {
        self.ready
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Polls every task that was woken, including those woken while this runs, but at
    /// most a bounded number of rounds so that completions are reaped regularly.
    fn run_ready(&self) {
        for _round in 0..64 {
            let batch: Vec<(usize, u64)> = {
                let mut queue = self.ready.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.drain(..).collect()
            };
            if batch.is_empty() {
                return;
            }
            for (id, generation) in batch {
                self.poll_task(id, generation);
            }
        }
    }

    fn poll_task(&self, id: usize, generation: u64) {
        let (mut future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(entry) = tasks.get_mut(id) else {
                return;
            };
            if entry.generation != generation {
                return; // a wake-up for a task that has finished and whose id was reused
            }
            let Some(future) = entry.future.take() else {
                return;
            };
            // Clear the queued flag before polling, so a wake during the poll re-queues.
            entry.handle.queued.store(false, Ordering::Release);
            (future, entry.waker.clone())
        };

        // A panic in one task (a bug, since peer input must never cause one) ends that
        // task only: the worker, its ring and every other session carry on.
        let mut cx = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            future.as_mut().poll(&mut cx).is_ready()
        }));
        let done = match polled {
            Ok(done) => done,
            Err(_) => {
                tracing::error!(
                    task = id,
                    "task panicked; it was dropped, the worker goes on"
                );
                true
            }
        };

        let mut tasks = self.tasks.borrow_mut();
        if done {
            tasks.remove(id);
        } else if let Some(entry) = tasks.get_mut(id) {
            entry.future = Some(future);
        }
    }
}

struct EnterGuard;

impl EnterGuard {
    fn enter(driver: Rc<Driver>) -> EnterGuard {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            assert!(current.is_none(), "nested Runtime::block_on on one thread");
            *current = Some(driver);
        });
        EnterGuard
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
    }
}
