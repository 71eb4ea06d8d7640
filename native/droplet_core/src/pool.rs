//! A bounded pool of scoped threads working through `0..n` in any order.
//! Shared by the page fetcher and the prober: both need "at most k at once,
//! results by index, survive a failed spawn". The calling thread works
//! through items too, so `k` items at once cost `k - 1` new threads, and a
//! call granted no helper thread by the budget (`crate::budget`) still
//! makes progress on its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Runs `work(i)` for every `i` in `0..n` on the calling thread plus at most
/// `concurrency - 1` helper threads, and returns the results by index. Once
/// `stop()` is true no new item starts; items left unstarted are `None`.
/// Helpers that fail to spawn are simply missing: the calling thread does
/// their share, slower but still correct.
///
/// A panic in `work` is re-raised here once every thread has finished, so the
/// caller's own `catch_unwind` reports it.
pub(crate) fn run_indexed<R, F, S>(
    name: &str,
    n: usize,
    concurrency: usize,
    stack_size: usize,
    stop: S,
    work: F,
) -> Vec<Option<R>>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
    S: Fn() -> bool + Sync,
{
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    if n == 0 {
        return slots;
    }
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        while !stop() {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            done.push((i, work(i)));
        }
        done
    };
    let batches = thread::scope(|scope| {
        let helpers: Vec<_> = (1..concurrency.clamp(1, n))
            .filter_map(|_| {
                thread::Builder::new()
                    .name(name.to_string())
                    .stack_size(stack_size)
                    .spawn_scoped(scope, worker)
                    .ok()
            })
            .collect();
        let mut batches = Vec::with_capacity(helpers.len() + 1);
        // Should this panic, the scope still joins the helpers before the
        // panic goes on.
        batches.push(worker());
        for helper in helpers {
            match helper.join() {
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

/// [`run_indexed`] for callers that want every result or none: `None` when
/// `stop()` left any item unstarted.
pub(crate) fn run_all<R, F, S>(
    name: &str,
    n: usize,
    concurrency: usize,
    stack_size: usize,
    stop: S,
    work: F,
) -> Option<Vec<R>>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
    S: Fn() -> bool + Sync,
{
    run_indexed(name, n, concurrency, stack_size, stop, work)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const STACK: usize = 64 * 1024;
    const NEVER: fn() -> bool = || false;

    #[test]
    fn every_index_runs_once_in_order_of_results() {
        let out = run_indexed("t", 100, 7, STACK, NEVER, |i| i * 2);
        let want: Vec<Option<usize>> = (0..100).map(|i| Some(i * 2)).collect();
        assert_eq!(out, want);
        assert!(run_indexed("t", 0, 7, STACK, NEVER, |i| i).is_empty());
    }

    #[test]
    fn work_runs_in_parallel_up_to_the_bound() {
        let started = Instant::now();
        run_indexed("t", 8, 8, STACK, NEVER, |_| {
            thread::sleep(Duration::from_millis(200))
        });
        assert!(started.elapsed() < Duration::from_millis(1_000));
    }

    #[test]
    fn the_calling_thread_works_too_so_k_at_once_spawns_k_minus_one() {
        let threads = Mutex::new(HashSet::new());
        let caller = thread::current().id();
        run_indexed("t", 40, 4, STACK, NEVER, |_| {
            if let Ok(mut t) = threads.lock() {
                t.insert(thread::current().id());
            }
            thread::sleep(Duration::from_millis(5));
        });
        let threads = threads.into_inner().expect("not poisoned");
        assert!(threads.len() <= 4, "{} threads", threads.len());
        assert!(threads.contains(&caller));

        // Concurrency 1: no thread at all besides the caller.
        let only = Mutex::new(HashSet::new());
        run_indexed("t", 10, 1, STACK, NEVER, |_| {
            if let Ok(mut t) = only.lock() {
                t.insert(thread::current().id());
            }
        });
        assert_eq!(
            only.into_inner().expect("not poisoned"),
            HashSet::from([caller])
        );
    }

    #[test]
    fn stop_leaves_later_items_unstarted() {
        let stop = AtomicBool::new(false);
        let out = run_indexed(
            "t",
            50,
            1,
            STACK,
            || stop.load(Ordering::Relaxed),
            |i| {
                if i == 3 {
                    stop.store(true, Ordering::Relaxed);
                }
                i
            },
        );
        assert_eq!(out.iter().flatten().count(), 4);
        assert!(out[4..].iter().all(Option::is_none));
    }

    #[test]
    fn run_all_is_every_result_or_none() {
        assert_eq!(
            run_all("t", 5, 3, STACK, NEVER, |i| i + 1),
            Some(vec![1, 2, 3, 4, 5])
        );
        let stop = AtomicBool::new(false);
        let stopped = run_all(
            "t",
            50,
            2,
            STACK,
            || stop.load(Ordering::Relaxed),
            |i| {
                if i == 1 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
        );
        assert_eq!(stopped, None);
    }

    #[test]
    fn a_panic_in_work_reaches_the_caller() {
        for panicking in [0, 2] {
            let caught = std::panic::catch_unwind(|| {
                run_indexed("t", 4, 2, STACK, NEVER, |i| {
                    if i == panicking {
                        panic!("worker boom");
                    }
                    i
                })
            });
            let payload = caught.expect_err("panic propagates");
            assert_eq!(crate::error::panic_detail(payload.as_ref()), "worker boom");
        }
    }
}
