//! A bounded pool of scoped threads working through `0..n` in any order.
//! Shared by the page fetcher and the prober: both need "at most k at once,
//! results by index, survive a failed spawn".

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// Runs `work(i)` for every `i` in `0..n` on at most `concurrency` threads
/// and returns the results by index. Items not started because `stop` was set
/// are `None`. Threads that fail to spawn are simply missing; if none spawns,
/// the calling thread does all the work, slower but still correct.
///
/// A panic in `work` is re-raised here once every thread has finished, so the
/// caller's own `catch_unwind` reports it.
pub(crate) fn run_indexed<R, F>(
    name: &str,
    n: usize,
    concurrency: usize,
    stack_size: usize,
    stop: &AtomicBool,
    work: F,
) -> Vec<Option<R>>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
{
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    if n == 0 {
        return slots;
    }
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            done.push((i, work(i)));
        }
        done
    };
    let batches = thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency.clamp(1, n))
            .filter_map(|_| {
                thread::Builder::new()
                    .name(name.to_string())
                    .stack_size(stack_size)
                    .spawn_scoped(scope, worker)
                    .ok()
            })
            .collect();
        let mut batches = Vec::with_capacity(handles.len().max(1));
        if handles.is_empty() {
            batches.push(worker());
        }
        for handle in handles {
            match handle.join() {
                Ok(batch) => batches.push(batch),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        batches
    });
    for (i, result) in batches.into_iter().flatten() {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(result);
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn every_index_runs_once_in_order_of_results() {
        let stop = AtomicBool::new(false);
        let out = run_indexed("t", 100, 7, 64 * 1024, &stop, |i| i * 2);
        let want: Vec<Option<usize>> = (0..100).map(|i| Some(i * 2)).collect();
        assert_eq!(out, want);
        assert!(run_indexed("t", 0, 7, 64 * 1024, &stop, |i| i).is_empty());
    }

    #[test]
    fn work_runs_in_parallel_up_to_the_bound() {
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        run_indexed("t", 8, 8, 64 * 1024, &stop, |_| {
            thread::sleep(Duration::from_millis(200))
        });
        assert!(started.elapsed() < Duration::from_millis(1_000));
    }

    #[test]
    fn stop_leaves_later_items_unstarted() {
        let stop = AtomicBool::new(false);
        let out = run_indexed("t", 50, 1, 64 * 1024, &stop, |i| {
            if i == 3 {
                stop.store(true, Ordering::Relaxed);
            }
            i
        });
        assert_eq!(out.iter().flatten().count(), 4);
        assert!(out[4..].iter().all(Option::is_none));
    }

    #[test]
    fn a_panic_in_work_reaches_the_caller() {
        let stop = AtomicBool::new(false);
        let caught = std::panic::catch_unwind(|| {
            run_indexed("t", 4, 2, 64 * 1024, &stop, |i| {
                if i == 2 {
                    panic!("worker boom");
                }
                i
            })
        });
        let payload = caught.expect_err("panic propagates");
        assert_eq!(crate::error::panic_detail(payload.as_ref()), "worker boom");
    }
}
