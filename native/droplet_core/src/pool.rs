//! Scoped threads working through `0..n`, results by index, for the page
//! fetcher and the prober. The calling thread works too, so a call granted
//! no helper by the budget (`crate::budget`) still makes progress.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

/// A pool's helper threads: a fixed number, or a call's admission.
pub trait Helpers: Sync {
    fn start(&self, up_to: usize) -> usize;
    /// Helper threads to add now, at most `up_to`.
    fn grow(&self, _up_to: usize) -> usize {
        0
    }
    /// Whether one helper thread should end now, its item done.
    fn shrink(&self) -> bool {
        false
    }
    /// Gives back helpers granted that could not be spawned.
    fn release(&self, _count: usize) {}
}

impl Helpers for usize {
    fn start(&self, up_to: usize) -> usize {
        (*self).min(up_to)
    }
}

/// `work(i)` for every `i` in `0..n` on the calling thread and the helpers
/// granted; `None` for those unstarted once `stop()` is true. A panic in
/// `work` is re-raised once every thread has ended.
pub(crate) fn run_indexed<R, F, S>(
    name: &str,
    n: usize,
    helpers: &dyn Helpers,
    stack_size: usize,
    stop: S,
    work: F,
) -> Vec<Option<R>>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
    S: Fn() -> bool + Sync,
{
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(n));
    let panicked = Mutex::new(None);
    let item = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let run = !stop() && i < n;
        if run {
            let result = work(i);
            done.lock().unwrap_or_else(|e| e.into_inner()).push((i, result));
        }
        run
    };
    let helper = || {
        let items = catch_unwind(AssertUnwindSafe(|| while item() && !helpers.shrink() {}));
        if let Err(payload) = items {
            panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
        }
    };
    thread::scope(|scope| {
        let spawn = |count: usize| {
            for _ in 0..count {
                let builder = thread::Builder::new().name(name.to_string()).stack_size(stack_size);
                if builder.spawn_scoped(scope, helper).is_err() {
                    helpers.release(1);
                }
            }
        };
        spawn(helpers.start(n.saturating_sub(1)));
        // Should this panic, the scope still joins the helpers first.
        while item() {
            spawn(helpers.grow(n.saturating_sub(next.load(Ordering::Relaxed))));
        }
    });
    if let Some(payload) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for (i, result) in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
        slots[i] = Some(result);
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_all<R: Send>(
        name: &str,
        n: usize,
        helpers: &dyn Helpers,
        stack: usize,
        stop: impl Fn() -> bool + Sync,
        work: impl Fn(usize) -> R + Sync,
    ) -> Option<Vec<R>> {
        run_indexed(name, n, helpers, stack, stop, work).into_iter().collect()
    }
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const STACK: usize = 64 * 1024;
    const NEVER: fn() -> bool = || false;

    #[test]
    fn every_index_runs_once_in_order_of_results() {
        let out = run_indexed("t", 100, &6, STACK, NEVER, |i| i * 2);
        let want: Vec<Option<usize>> = (0..100).map(|i| Some(i * 2)).collect();
        assert_eq!(out, want);
        assert!(run_indexed("t", 0, &6, STACK, NEVER, |i| i).is_empty());
    }

    #[test]
    fn work_runs_in_parallel_up_to_the_bound() {
        let started = Instant::now();
        run_indexed("t", 8, &7, STACK, NEVER, |_| thread::sleep(Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_millis(1_000));
    }

    #[test]
    fn the_calling_thread_works_too_so_k_at_once_spawns_k_minus_one() {
        let threads = Mutex::new(HashSet::new());
        let caller = thread::current().id();
        run_indexed("t", 40, &3, STACK, NEVER, |_| {
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
        run_indexed("t", 10, &0, STACK, NEVER, |_| {
            if let Ok(mut t) = only.lock() {
                t.insert(thread::current().id());
            }
        });
        assert_eq!(only.into_inner().expect("not poisoned"), HashSet::from([caller]));
    }

    #[test]
    fn stop_leaves_later_items_unstarted() {
        let stop = AtomicBool::new(false);
        let out = run_indexed(
            "t",
            50,
            &0,
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
        assert_eq!(run_all("t", 5, &2, STACK, NEVER, |i| i + 1), Some(vec![1, 2, 3, 4, 5]));
        let stop = AtomicBool::new(false);
        let stopped = run_all(
            "t",
            50,
            &1,
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

    /// Items that each wait for a ticket, counting how many run at once.
    #[derive(Default)]
    struct Tickets {
        state: Mutex<(usize, usize, usize)>,
        changed: std::sync::Condvar,
    }

    impl Tickets {
        /// One item: in, wait for a ticket, out. Returns the most items
        /// seen running at once.
        fn item(&self) {
            let mut s = self.state.lock().expect("tickets");
            s.1 += 1;
            s.2 = s.2.max(s.1);
            self.changed.notify_all();
            while s.0 == 0 {
                s = self.changed.wait(s).expect("tickets");
            }
            s.0 -= 1;
            s.1 -= 1;
        }

        fn give(&self, n: usize) {
            self.state.lock().expect("tickets").0 += n;
            self.changed.notify_all();
        }

        /// Waits until `running` items are in; returns the most seen.
        fn await_running(&self, running: usize) -> usize {
            let mut s = self.state.lock().expect("tickets");
            while s.1 != running {
                s = self.changed.wait(s).expect("tickets");
            }
            s.2
        }
    }

    #[test]
    fn a_call_granted_no_helper_grows_between_items_as_permits_free_up() {
        static BUDGET: crate::budget::Budget = crate::budget::Budget::new(4, 8);
        let hog = BUDGET.admit(8).expect("slot");
        assert_eq!(hog.grow(usize::MAX), 7);
        let call = BUDGET.admit(3).expect("slot");
        assert_eq!(call.concurrency(), 1);
        let tickets = Tickets::default();
        thread::scope(|s| {
            let run = s.spawn(|| {
                run_indexed("t", 12, &call, STACK, NEVER, |i| {
                    tickets.item();
                    i
                })
            });
            // The coordinator alone, its first item in hand.
            assert_eq!(tickets.await_running(1), 1);
            // The hog sheds down to its share, half of the 8, one helper
            // per item done.
            assert_eq!((0..8).take_while(|_| hog.shrink()).count(), 4);
            // The call's next item boundary takes the three: four at once,
            // and never more.
            tickets.give(1);
            assert_eq!(tickets.await_running(4), 4);
            tickets.give(11);
            let out = run.join().expect("no panic");
            assert_eq!(out, (0..12).map(Some).collect::<Vec<_>>());
        });
        assert_eq!((call.held(), BUDGET.helpers_in_use()), (3, 7));
    }

    /// Grows once by `grow`, then ends helpers while `shrinks` lasts.
    struct Scripted {
        grow: AtomicUsize,
        shrinks: AtomicUsize,
    }

    impl Helpers for Scripted {
        fn start(&self, _up_to: usize) -> usize {
            0
        }
        fn grow(&self, up_to: usize) -> usize {
            self.grow.swap(0, Ordering::SeqCst).min(up_to)
        }
        fn shrink(&self) -> bool {
            self.shrinks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    #[test]
    fn a_helper_told_to_shrink_ends_after_its_item() {
        // Three helpers grown at the first item boundary, each told to
        // end after its first item: the coordinator does the rest.
        let helpers = Scripted { grow: AtomicUsize::new(3), shrinks: AtomicUsize::new(3) };
        let caller = thread::current().id();
        let items = Mutex::new(Vec::new());
        // Items 1 to 4 meet: one on each of the four threads.
        let meet = std::sync::Barrier::new(4);
        let out = run_indexed("t", 50, &helpers, STACK, NEVER, |i| {
            items.lock().expect("items").push(thread::current().id());
            if (1..=4).contains(&i) {
                meet.wait();
            }
            i
        });
        assert_eq!(out.iter().flatten().count(), 50);
        let items = items.into_inner().expect("items");
        let by_helpers = items.iter().filter(|t| **t != caller).count();
        let helper_threads: HashSet<_> = items.iter().filter(|t| **t != caller).collect();
        assert_eq!((by_helpers, helper_threads.len()), (3, 3));
    }

    #[test]
    fn a_panic_in_work_reaches_the_caller() {
        for panicking in [0, 2] {
            let caught = std::panic::catch_unwind(|| {
                run_indexed("t", 4, &1, STACK, NEVER, |i| {
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
