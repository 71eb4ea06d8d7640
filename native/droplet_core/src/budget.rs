//! One process-wide bound on the threads the NIF runs, whoever calls it.
//!
//! Every call runs on a coordinator thread of its own, which needs one of
//! [`MAX_CALLS`] call slots: with none free the call is refused at once
//! ([`Error::Busy`]) rather than queued, since the caller is an Erlang
//! scheduler that must not wait. A call that wants to run items in parallel
//! also asks for helper threads from a shared pool of [`MAX_HELPERS`]
//! permits, and gets as many as are free at that moment, possibly none. Its
//! coordinator works through the items too, so a call granted no helper
//! still makes progress, one item at a time, and surplus work queues behind
//! the threads a call has instead of spawning more. So at any moment the NIF
//! runs at most `MAX_CALLS + MAX_HELPERS` threads.
//!
//! Permits are taken when the call starts, never while it runs, so the
//! concurrency a call reports to its caller is the one it gets.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Error;

/// Calls in flight at once; each is one coordinator thread.
pub const MAX_CALLS: usize = 64;
/// Helper threads, shared by all calls in flight.
pub const MAX_HELPERS: usize = 1024;

/// A counting semaphore that never blocks: it hands out what it has.
#[derive(Debug)]
struct Permits {
    free: AtomicUsize,
}

impl Permits {
    const fn new(count: usize) -> Permits {
        Permits {
            free: AtomicUsize::new(count),
        }
    }

    /// Takes `min(wanted, free)` permits and says how many it took.
    fn take_up_to(&self, wanted: usize) -> usize {
        let mut free = self.free.load(Ordering::Acquire);
        loop {
            let take = wanted.min(free);
            if take == 0 {
                return 0;
            }
            match self.free.compare_exchange_weak(
                free,
                free - take,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(now) => free = now,
            }
        }
    }

    fn give_back(&self, count: usize) {
        if count > 0 {
            self.free.fetch_add(count, Ordering::AcqRel);
        }
    }

    fn free(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct Budget {
    calls: Permits,
    helpers: Permits,
    max_calls: usize,
    max_helpers: usize,
}

impl Budget {
    pub const fn new(max_calls: usize, max_helpers: usize) -> Budget {
        Budget {
            calls: Permits::new(max_calls),
            helpers: Permits::new(max_helpers),
            max_calls,
            max_helpers,
        }
    }

    /// A call slot plus up to `helpers_wanted` helper permits, without
    /// waiting; `Err(Busy)` when every call slot is taken.
    pub fn admit(&self, helpers_wanted: usize) -> Result<Admission<'_>, Error> {
        if self.calls.take_up_to(1) == 0 {
            return Err(Error::Busy);
        }
        let helpers = self.helpers.take_up_to(helpers_wanted);
        Ok(Admission {
            budget: self,
            helpers,
        })
    }

    pub fn calls_in_flight(&self) -> usize {
        self.max_calls.saturating_sub(self.calls.free())
    }

    pub fn helpers_in_use(&self) -> usize {
        self.max_helpers.saturating_sub(self.helpers.free())
    }
}

/// The budget every NIF call draws from.
pub fn global() -> &'static Budget {
    static GLOBAL: Budget = Budget::new(MAX_CALLS, MAX_HELPERS);
    &GLOBAL
}

/// What one call holds for as long as it runs; dropping it gives everything
/// back.
#[derive(Debug)]
pub struct Admission<'a> {
    budget: &'a Budget,
    helpers: usize,
}

impl Admission<'_> {
    /// Helper threads this call may spawn.
    pub fn helpers(&self) -> usize {
        self.helpers
    }

    /// Items this call may run at once: its helpers and its coordinator.
    pub fn concurrency(&self) -> usize {
        self.helpers + 1
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.budget.helpers.give_back(self.helpers);
        self.budget.calls.give_back(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    #[test]
    fn a_call_gets_what_is_free_and_gives_it_back() {
        let budget = Budget::new(4, 10);
        let first = budget.admit(7).expect("admitted");
        assert_eq!((first.helpers(), first.concurrency()), (7, 8));
        let second = budget.admit(7).expect("admitted");
        assert_eq!((second.helpers(), second.concurrency()), (3, 4));
        // Nothing left: admitted anyway, with its coordinator alone.
        let third = budget.admit(7).expect("admitted");
        assert_eq!((third.helpers(), third.concurrency()), (0, 1));
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (3, 10));

        drop(first);
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (2, 3));
        let fourth = budget.admit(100).expect("admitted");
        assert_eq!(fourth.helpers(), 7);
        drop((second, third, fourth));
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (0, 0));
    }

    #[test]
    fn over_the_call_cap_a_call_is_busy_until_one_ends() {
        let budget = Budget::new(2, 10);
        let a = budget.admit(0).expect("admitted");
        let _b = budget.admit(0).expect("admitted");
        assert_eq!(budget.admit(0).err(), Some(Error::Busy));
        // A refused call takes no helper either.
        assert_eq!(budget.helpers_in_use(), 0);
        drop(a);
        assert!(budget.admit(5).is_ok());
    }

    #[test]
    fn concurrent_admissions_never_overdraw() {
        const THREADS: usize = 16;
        let budget = Budget::new(THREADS, 100);
        let barrier = Barrier::new(THREADS);
        let granted: Vec<usize> = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let admission = budget.admit(30).expect("one slot each");
                        let helpers = admission.helpers();
                        // Held until every thread has asked.
                        barrier.wait();
                        helpers
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert_eq!(granted.iter().sum::<usize>(), 100);
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (0, 0));
    }

    #[test]
    fn the_global_budget_has_the_documented_size() {
        assert_eq!((MAX_CALLS, MAX_HELPERS), (64, 1024));
        let admission = global().admit(0).expect("admitted");
        assert!(global().calls_in_flight() >= 1);
        assert_eq!(admission.concurrency(), 1);
    }
}
