//! A persistent worker pool for splitting one kernel call across cores.
//!
//! Decoding one token dispatches a few hundred small jobs (every projection of every
//! layer), each lasting tens of microseconds, so spawning threads or waking them through
//! the OS per job would cost more than the work. Workers therefore spin on a generation
//! counter for a short while after each job and only then sleep on a condition
//! variable; the calling thread always does a share of the work itself.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A job: called once per thread with `(thread_index, n_threads)`.
type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

struct PoolState {
    generation: AtomicUsize,
    remaining: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`: dispatch only takes the lock and
    /// notifies when this is non-zero (a futex wake per job would cost a syscall each).
    sleepers: AtomicUsize,
    /// The current job, valid while `remaining > 0` for the generation it was set for.
    job: UnsafeCell<Option<Job<'static>>>,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the dispatching thread while no worker reads it
// (between generations) and read by workers only after they observe the new
// generation (Acquire), which the dispatcher publishes (Release) after the write.
unsafe impl Sync for PoolState {}

/// Iterations a worker spins waiting for the next job before it sleeps (~50-100 µs).
const SPIN_LIMIT: u32 = 20_000;

/// A fixed set of worker threads; see the module docs.
pub struct ThreadPool {
    shared: Arc<PoolState>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises dispatch: one job at a time per pool.
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A pool running jobs on `threads` threads in all (the caller counts as one).
    /// `Err` if the OS refuses a thread; the workers already started are stopped.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(PoolState {
            generation: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let n = threads.max(1);
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(n - 1),
            dispatch: Mutex::new(()),
        };
        for index in 1..n {
            let shared = Arc::clone(&pool.shared);
            // On error `pool` is dropped, which stops and joins the started workers.
            let worker = std::thread::Builder::new()
                .name(format!("glint-worker-{index}"))
                .spawn(move || worker(&shared, index, n))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads that run each job (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(i, n)` for every thread `i` of `n` and returns when all are done.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.threads();
        if n == 1 {
            return job(0, 1);
        }
        let _one_at_a_time = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we do not
        // return before every worker has finished with the job (`remaining == 0`).
        let erased: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        // SAFETY: no worker reads `job` now: the previous generation has completed.
        unsafe { *s.job.get() = Some(erased) };
        s.remaining.store(n - 1, Ordering::Relaxed);
        // SeqCst pairs with the worker's SeqCst `sleepers` increment and generation
        // re-check: either we see it sleeping and notify, or it sees the new generation.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, n)));
        // Spin briefly, then yield: on a loaded machine a worker may be descheduled, and
        // spinning would only keep it off the core it needs.
        let mut spins = 0u32;
        while s.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPIN_LIMIT / 4 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every worker is done with this generation's job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked");
        }
    }
}

fn worker(s: &PoolState, index: usize, n: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::Relaxed) {
                    drop(s.wake.wait(guard));
                } else {
                    drop(guard);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // SAFETY: the dispatcher wrote the job before publishing this generation and
        // keeps it alive until we decrement `remaining`.
        if let Some(job) = unsafe { *s.job.get() }
            && catch_unwind(AssertUnwindSafe(|| job(index, n))).is_err()
        {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The `index`-th of `parts` near-equal slices of `0..len`, with boundaries rounded to
/// multiples of `align` so no two threads write the same cache line of the output.
pub fn split(len: usize, parts: usize, index: usize, align: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(align);
    let at = |i: usize| (units * i / parts * align).min(len);
    at(index)..at(index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_every_job() {
        let pool = ThreadPool::new(3).unwrap();
        let sum = AtomicU64::new(0);
        for round in 0..1000u64 {
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                sum.fetch_add(round * 10 + i as u64, Ordering::Relaxed);
            });
        }
        let expected: u64 = (0..1000u64).map(|r| 3 * r * 10 + 3).sum();
        assert_eq!(sum.load(Ordering::Relaxed), expected);
    }

    #[test]
    fn split_covers_the_range_once() {
        for len in [0, 1, 7, 64, 1000, 49152] {
            for parts in 1..5 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(len, parts, i, 16);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn a_panicking_job_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| assert_ne!(i, 1, "boom"))
        }));
        assert!(r.is_err());
        let count = AtomicU64::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
