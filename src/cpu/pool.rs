//! Running a forward inside rayon's pool with the other workers kept awake.
//!
//! A decode step of a small model is hundreds of short parallel ops separated by short serial
//! ones (norms, rotary, bookkeeping). A worker that finds nothing to do goes to sleep, and the
//! next op pays a futex wake-up for it: at 2 threads on SmolLM2-135M, scheduler and wake-up
//! samples were a fifth of a decode step. llama.cpp spins its threads between ops; here each
//! other worker runs a *spinner* for the length of the forward that executes any job it can
//! steal and otherwise spins. Only which thread runs a job changes, never what a job computes,
//! so results stay the same bits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A spinner that found no work for this long goes back to rayon's own idling.
const MAX_IDLE: Duration = Duration::from_millis(1);
/// And none spins longer than this in all (a long prefill does not need it; it also bounds
/// the case where a spinner is picked up by a thread waiting inside another job, whose
/// result then waits for the spinner to end).
const MAX_SPIN: Duration = Duration::from_millis(50);
/// Pause instructions between two polls for work (a microsecond or two).
const BACKOFF_SPINS: usize = 32;

/// Runs `f` on a worker of the current rayon pool (as `rayon::scope` does), with the other
/// workers spinning while it runs if `keep_awake`; returns what `f` returns.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send, keep_awake: bool) -> R {
    let helpers = match keep_awake {
        true => rayon::current_num_threads().saturating_sub(1),
        false => 0,
    };
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        let spawned = Instant::now();
        let done = &done;
        for _ in 0..helpers {
            s.spawn(move |_| spin(done, owner, spawned));
        }
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

fn spin(done: &AtomicBool, owner: Option<usize>, spawned: Instant) {
    // The forward's own thread picks a spinner up only while it waits for a stolen job:
    // it must go back to that job, not spin.
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle_since: Option<Instant> = None;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            _ => {
                let now = Instant::now();
                let idle = *idle_since.get_or_insert(now);
                if now - idle > MAX_IDLE || now - spawned > MAX_SPIN {
                    return;
                }
                // Back off a little between polls: each poll touches the other workers'
                // queues, which the forward's thread is pushing to and popping from.
                for _ in 0..BACKOFF_SPINS {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::run;
    use rayon::prelude::*;

    fn work(n: u64) -> u64 {
        (0..n).into_par_iter().map(|i| i * i % 7).sum()
    }

    /// Parallel ops with serial steps between them, as a forward has.
    fn steps() -> (u64, u64) {
        let mut s = 0;
        for _ in 0..20 {
            s = work(5_000) + std::hint::black_box(s % 3);
        }
        (work(100_000), s)
    }

    #[test]
    fn returns_what_the_closure_returns_at_any_thread_count() {
        let want = steps();
        // On a thread of its own with a deadline, so that a deadlock fails the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for threads in [1, 2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for i in 0..100 {
                    let got = pool.install(|| run(steps, i % 2 == 0));
                    tx.send((threads, got)).unwrap();
                }
            }
        });
        for _ in 0..400 {
            let (threads, got) = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("run did not return within 60 s (deadlock?)");
            assert_eq!(got, want, "{threads} threads");
        }
    }
}
