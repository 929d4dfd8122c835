//! A persistent worker pool for splitting one kernel call across cores, built for a
//! CPU that other work shares.
//!
//! A job is a number of chunks (row ranges of a matrix, attention heads); every thread
//! taking part, the calling one included, claims the next unclaimed chunk from one
//! atomic counter until none is left. So the split follows whoever actually runs: a
//! worker the OS has descheduled simply claims nothing, and the caller finishes the job
//! alone instead of waiting for it (a static split waited for every worker's share).
//! The caller only waits for chunks already claimed and still running.
//!
//! Decoding one token dispatches a few hundred small jobs (every projection of every
//! layer), each lasting tens of microseconds, so spawning threads or waking them through
//! the OS per job would cost more than the work. Idle workers therefore spin for a
//! short, bounded time ([`SPIN`]), then yield the core for a while ([`YIELD`]) and then
//! sleep on a futex until the next job, so that an idle pool never holds a core
//! another process needs.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called as `job(chunk, slot)` once for every chunk; `slot` (below
/// [`ThreadPool::threads`]) identifies the thread running it, for per-thread scratch.
type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// The most chunks one job may have (the chunk counter is 16 bits of [`PoolState::claim`]).
pub const MAX_CHUNKS: usize = u16::MAX as usize;

/// How long an idle worker spins on the job counter before yielding.
const SPIN: Duration = Duration::from_micros(50);
/// How long an idle worker then keeps yielding its core before it sleeps.
const YIELD: Duration = Duration::from_micros(500);

struct PoolState {
    /// `generation << 32 | chunks << 16 | next`: the current job's number, its chunk
    /// count and the next unclaimed chunk, in one word so that a claim (a compare-and-swap
    /// of `next`) can only succeed for the job it was meant for.
    claim: CacheLine<AtomicU64>,
    /// Chunks of the current job finished (by anyone); on a line of its own, so that
    /// the caller polling it does not slow down the claims.
    done: CacheLine<AtomicUsize>,
    stop: AtomicBool,
    panicked: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`: dispatch only takes the lock and
    /// notifies when this is non-zero (a futex wake per job would cost a syscall each).
    sleepers: AtomicUsize,
    /// The current job: valid while some chunk of the current generation is unclaimed or
    /// running, i.e. for whoever holds a successful claim.
    job: UnsafeCell<Option<Job<'static>>>,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// A value alone on its 64-byte cache line.
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: `job` is written only by the dispatching thread before it publishes a new
// generation (Release on `claim`), while no chunk of any job is claimed or running; it
// is read only by a thread holding a claim of that generation (Acquire on `claim`), and
// the dispatcher does not return, nor write `job` again, before every claimed chunk is
// done.
unsafe impl Sync for PoolState {}

fn generation(word: u64) -> u32 {
    (word >> 32) as u32
}

impl PoolState {
    /// Claims the next chunk of generation `g`, or `None` when every chunk of it is
    /// claimed (or `g` is over).
    fn claim(&self, g: u32) -> Option<usize> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (chunks, next) = ((word >> 16) & 0xffff, word & 0xffff);
            if generation(word) != g || next >= chunks {
                return None;
            }
            match self.claim.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next as usize),
                Err(now) => word = now,
            }
        }
    }

    /// Runs the chunks of generation `g` that are still unclaimed, as thread `slot`.
    fn work(&self, g: u32, slot: usize) {
        while let Some(chunk) = self.claim(g) {
            // SAFETY: we hold a claim of generation `g`, so its job is published and
            // stays alive until we count this chunk as done (see `Sync` above).
            if let Some(job) = unsafe { *self.job.get() }
                && catch_unwind(AssertUnwindSafe(|| job(chunk, slot))).is_err()
            {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

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
            claim: CacheLine(AtomicU64::new(0)),
            done: CacheLine(AtomicUsize::new(0)),
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
        for slot in 1..n {
            let shared = Arc::clone(&pool.shared);
            // On error `pool` is dropped, which stops and joins the started workers.
            let worker = std::thread::Builder::new()
                .name(format!("glint-worker-{slot}"))
                .spawn(move || worker(&shared, slot))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads that may run a job's chunks (workers plus the caller); every `slot` a job
    /// sees is below this.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(chunk, slot)` once for every `chunk` in `0..chunks`, each on whichever
    /// thread claims it first (`slot`: that thread's index, the caller's is 0), and
    /// returns when all are done. Chunks are claimed in order. Panics if `chunks`
    /// exceeds [`MAX_CHUNKS`]; a panic inside the job reaches the caller once the other
    /// chunks are done.
    pub fn run(&self, chunks: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        assert!(
            chunks <= MAX_CHUNKS,
            "{chunks} chunks: at most {MAX_CHUNKS}"
        );
        if self.workers.is_empty() || chunks <= 1 {
            for c in 0..chunks {
                job(c, 0);
            }
            return;
        }
        let _one_at_a_time = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we do not
        // return before every chunk is done, and only holders of a claim (each of which
        // counts its chunk as done when finished) call the job.
        let erased: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        // SAFETY: no chunk is claimed or running: the previous job completed.
        unsafe { *s.job.get() = Some(erased) };
        s.done.store(0, Ordering::Relaxed);
        let g = generation(s.claim.load(Ordering::Relaxed)).wrapping_add(1);
        // SeqCst pairs with the worker's SeqCst `sleepers` increment and generation
        // re-check: either we see it sleeping and notify, or it sees the new generation.
        s.claim.store(
            (u64::from(g) << 32) | ((chunks as u64) << 16),
            Ordering::SeqCst,
        );
        if s.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // The caller works too: `work` catches panics like a worker's, so we always get
        // to the wait below.
        s.work(g, 0);
        // Only chunks that a worker claimed and is still running are left. Spin briefly,
        // then yield: on a loaded machine that worker may be descheduled, and spinning
        // would only keep it off the core it needs.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != chunks {
            if spins < 64 || start.elapsed() < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every chunk is done, so no thread holds a claim: nobody reads `job`.
        unsafe { *s.job.get() = None };
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a chunk of a pool job panicked");
        }
    }
}

/// Waits for a generation other than `seen` (returning it) or for `stop` (`None`):
/// spins for [`SPIN`], yields for [`YIELD`], then sleeps until woken.
fn next_job(s: &PoolState, seen: u32) -> Option<u32> {
    let mut start = Instant::now();
    loop {
        let waited = start.elapsed();
        // The clock is read once per 64 checks (~20 ns a read).
        for _ in 0..64 {
            let g = generation(s.claim.load(Ordering::Acquire));
            if g != seen {
                return Some(g);
            }
            if s.stop.load(Ordering::Relaxed) {
                return None;
            }
            if waited < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if waited >= SPIN + YIELD {
            let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if generation(s.claim.load(Ordering::SeqCst)) == seen && !s.stop.load(Ordering::Relaxed)
            {
                drop(s.wake.wait(guard));
            } else {
                drop(guard);
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            start = Instant::now();
        }
    }
}

fn worker(s: &PoolState, slot: usize) {
    let mut seen = 0u32;
    while let Some(g) = next_job(s, seen) {
        seen = g;
        s.work(g, slot);
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
/// multiples of `align` so no two chunks write the same cache line of the output.
pub fn split(len: usize, parts: usize, index: usize, align: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(align);
    let at = |i: usize| (units * i / parts * align).min(len);
    at(index)..at(index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_exactly_once_on_a_valid_slot() {
        for threads in 1..=5 {
            let pool = ThreadPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for chunks in [0, 1, 2, 3, 5, 8, 63, 64, 65, 1000, MAX_CHUNKS] {
                // Several rounds, so workers meet jobs while spinning, yielding and asleep.
                for _ in 0..3 {
                    let runs: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
                    let bad_slot = AtomicBool::new(false);
                    pool.run(chunks, &|c, slot| {
                        runs[c].fetch_add(1, Ordering::Relaxed);
                        if slot >= threads {
                            bad_slot.store(true, Ordering::Relaxed);
                        }
                    });
                    assert!(
                        runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                        "{threads} threads, {chunks} chunks: a chunk ran other than once"
                    );
                    assert!(!bad_slot.load(Ordering::Relaxed));
                }
            }
        }
    }

    #[test]
    fn many_small_jobs_back_to_back() {
        let pool = ThreadPool::new(3).unwrap();
        let sum = AtomicU64::new(0);
        for round in 0..5000u64 {
            pool.run(4, &|c, _| {
                sum.fetch_add(round * 10 + c as u64, Ordering::Relaxed);
            });
        }
        let expected: u64 = (0..5000u64).map(|r| 4 * r * 10 + 6).sum();
        assert_eq!(sum.load(Ordering::Relaxed), expected);
    }

    /// A worker that stops in the middle of a chunk (as one the OS deschedules) holds up
    /// only that chunk: the caller claims and runs every other one meanwhile. With a
    /// static split the caller would stop at its own share and this test would fail
    /// (after the held worker gives up waiting), not hang.
    #[test]
    fn a_held_worker_does_not_stall_the_other_chunks() {
        let pool = ThreadPool::new(2).unwrap();
        const CHUNKS: usize = 1000;
        for _ in 0..20 {
            let by_caller = AtomicUsize::new(0);
            let worker_chunks = AtomicUsize::new(0);
            pool.run(CHUNKS, &|_, slot| {
                if slot == 0 {
                    by_caller.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Held until the caller has run every chunk but ours (or a minute passed:
                // then the assertion below fails instead of the test hanging).
                if worker_chunks.fetch_add(1, Ordering::Relaxed) == 0 {
                    let start = Instant::now();
                    while by_caller.load(Ordering::Relaxed) < CHUNKS - 1
                        && start.elapsed() < Duration::from_secs(60)
                    {
                        std::thread::yield_now();
                    }
                }
            });
            let (caller, worker) = (
                by_caller.load(Ordering::Relaxed),
                worker_chunks.load(Ordering::Relaxed),
            );
            assert_eq!(caller + worker, CHUNKS);
            assert!(worker <= 1, "the held worker ran {worker} chunks");
        }
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        for chunks in [1, 2, 100] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(chunks, &|c, _| assert_ne!(c, chunks - 1, "boom"))
            }));
            assert!(r.is_err());
            let count = AtomicU64::new(0);
            pool.run(10, &|_, _| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 10);
        }
    }

    #[test]
    fn a_sleeping_pool_wakes_for_the_next_job_and_drops() {
        let pool = ThreadPool::new(3).unwrap();
        // Past the spin and yield phases: the workers are asleep on the futex.
        std::thread::sleep(SPIN + YIELD + Duration::from_millis(20));
        let count = AtomicU64::new(0);
        pool.run(100, &|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 100);
        drop(pool);
    }

    #[test]
    #[should_panic(expected = "chunks: at most")]
    fn too_many_chunks_is_a_caller_bug() {
        ThreadPool::new(2).unwrap().run(MAX_CHUNKS + 1, &|_, _| {});
    }

    #[test]
    fn split_covers_the_range_once() {
        for len in [0, 1, 7, 64, 1000, 49152] {
            for parts in 1..9 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split(len, parts, i, 16);
                    assert_eq!(r.start, next);
                    assert!(r.start.is_multiple_of(16) || r.start == len);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
