//! One process-wide bound on the NIF's threads, shared fairly among calls
//! (`native/README.md`): a call slot per call, [`Error::Busy`] at once when
//! none is free (the caller is a scheduler), and helper permits from a pool.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::Helpers;
use crate::Error;

pub const MAX_CALLS: usize = 64;
pub const MAX_HELPERS: usize = 1024;
/// The most helpers a call starts with.
pub const START_SHARE: usize = MAX_HELPERS / 8;

/// A counting semaphore that never blocks.
#[derive(Debug)]
struct Permits(AtomicUsize);

impl Permits {
    /// Takes `min(wanted, free)` permits.
    fn take_up_to(&self, wanted: usize) -> usize {
        let free = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            (wanted.min(free) > 0).then(|| free - wanted.min(free))
        });
        free.map_or(0, |free| wanted.min(free))
    }

    fn give_back(&self, count: usize) {
        self.0.fetch_add(count, Ordering::AcqRel);
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
            calls: Permits(AtomicUsize::new(max_calls)),
            helpers: Permits(AtomicUsize::new(max_helpers)),
            max_calls,
            max_helpers,
        }
    }

    /// A call slot and up to `wanted` helpers within the start share, or
    /// `Err(Busy)`, without waiting.
    pub fn admit(&self, wanted: usize) -> Result<Admission<'_>, Error> {
        if self.calls.take_up_to(1) == 0 {
            return Err(Error::Busy);
        }
        let floor = self.helpers.take_up_to(self.share(wanted).min(self.max_helpers / 8));
        Ok(Admission { budget: self, wanted, floor, held: AtomicUsize::new(floor) })
    }

    /// What a call wanting `wanted` may hold: an even part of the pool.
    fn share(&self, wanted: usize) -> usize {
        wanted.min(self.max_helpers / self.calls_in_flight().max(1))
    }

    pub fn calls_in_flight(&self) -> usize {
        self.max_calls.saturating_sub(self.calls.0.load(Ordering::Acquire))
    }

    pub fn helpers_in_use(&self) -> usize {
        self.max_helpers.saturating_sub(self.helpers.0.load(Ordering::Acquire))
    }
}

/// The budget every NIF call draws from.
pub fn global() -> &'static Budget {
    static GLOBAL: Budget = Budget::new(MAX_CALLS, MAX_HELPERS);
    &GLOBAL
}

/// What one call holds while it runs; dropped, it gives everything back.
#[derive(Debug)]
pub struct Admission<'a> {
    budget: &'a Budget,
    wanted: usize,
    /// Helpers granted at the start, kept to the end.
    pub floor: usize,
    held: AtomicUsize,
}

impl Admission<'_> {
    /// Items this call runs at once at least: its helpers and coordinator.
    pub fn concurrency(&self) -> usize {
        self.floor + 1
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Helpers for Admission<'_> {
    fn start(&self, up_to: usize) -> usize {
        self.held().min(up_to)
    }

    fn grow(&self, up_to: usize) -> usize {
        let share = self.budget.share(self.wanted);
        // Claimed on `held` first, so that no two take the same room.
        let claim = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held < share && up_to > 0).then(|| held + (share - held).min(up_to))
        });
        let Ok(held) = claim else { return 0 };
        let claimed = (share - held).min(up_to);
        let taken = self.budget.helpers.take_up_to(claimed);
        self.held.fetch_sub(claimed - taken, Ordering::AcqRel);
        taken
    }

    fn shrink(&self) -> bool {
        let keep = self.floor.max(self.budget.share(self.wanted));
        let shed = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held > keep).then(|| held - 1)
        });
        shed.is_ok_and(|_| {
            self.budget.helpers.give_back(1);
            true
        })
    }

    fn release(&self, count: usize) {
        self.held.fetch_sub(count, Ordering::AcqRel);
        self.budget.helpers.give_back(count);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.budget.helpers.give_back(self.held());
        self.budget.calls.give_back(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    #[test]
    fn eight_calls_asking_for_all_start_with_an_eighth_each() {
        // The count: 8 probe calls asking 1,024 got
        // [512, 512, 3, 1, 1, 1, 1, 1]; a probe wants 511 helpers at most.
        let budget = Budget::new(MAX_CALLS, MAX_HELPERS);
        let calls: Vec<_> = (0..8).map(|_| budget.admit(511).expect("slot")).collect();
        let granted: Vec<usize> = calls.iter().map(Admission::concurrency).collect();
        assert_eq!(granted, [129; 8]);
        assert_eq!(budget.helpers_in_use(), MAX_HELPERS);
        // Each holds its fair share: none grows, none sheds.
        assert!(calls.iter().all(|c| c.grow(usize::MAX) == 0 && !c.shrink()));
        drop(calls);
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (0, 0));
    }

    #[test]
    fn the_share_is_an_even_part_of_the_pool_at_most_what_is_wanted() {
        let budget = Budget::new(4, 64);
        let a = budget.admit(100).expect("slot");
        assert_eq!(budget.share(100), 64);
        let b = budget.admit(100).expect("slot");
        let small = budget.admit(1).expect("slot");
        assert_eq!((budget.share(100), budget.share(1)), (21, 1));
        drop((b, small));
        assert_eq!(budget.share(100), 64);
        drop(a);
    }

    #[test]
    fn a_call_grows_to_its_share_and_sheds_only_what_it_grew() {
        let budget = Budget::new(4, 64);
        let a = budget.admit(100).expect("slot");
        // It starts with an eighth, then grows to what it may hold.
        assert_eq!((a.floor, a.held()), (8, 8));
        assert_eq!(a.grow(10), 10);
        assert_eq!(a.grow(usize::MAX), 46);
        assert_eq!((a.held(), a.grow(usize::MAX)), (64, 0));
        assert!(!a.shrink());
        // A newcomer finds nothing free: admitted with its coordinator
        // alone, it has a share of 32 all the same.
        let b = budget.admit(100).expect("slot");
        assert_eq!((b.concurrency(), budget.share(100)), (1, 32));
        assert_eq!(b.grow(usize::MAX), 0);
        // The first sheds to its share, one helper per item, never below.
        let shed = (0..100).take_while(|_| a.shrink()).count();
        assert_eq!((shed, a.held()), (32, 32));
        assert_eq!(b.grow(usize::MAX), 32);
        assert_eq!(budget.helpers_in_use(), 64);
        // Alone again, it may grow back; what it started with is kept.
        drop(b);
        assert_eq!(a.grow(usize::MAX), 32);
        let c = budget.admit(1_000).expect("slot");
        assert_eq!(c.floor, 0);
        let shed = (0..100).take_while(|_| a.shrink()).count();
        assert_eq!((shed, a.held()), (32, 32));
        assert_eq!(a.floor, 8);
    }

    #[test]
    fn what_a_call_started_with_is_never_shed() {
        let budget = Budget::new(64, 64);
        let first = budget.admit(8).expect("slot");
        let rest: Vec<_> = (0..63).map(|_| budget.admit(64).expect("slot")).collect();
        // 64 calls: a share of one each, but the first keeps its 8.
        assert_eq!(budget.share(8), 1);
        assert!(!first.shrink());
        assert_eq!(first.concurrency(), 9);
        drop(rest);
    }

    #[test]
    fn released_helpers_go_back() {
        let budget = Budget::new(2, 16);
        let a = budget.admit(2).expect("slot");
        assert_eq!(a.held(), 2);
        a.release(1);
        assert_eq!((a.held(), budget.helpers_in_use()), (1, 1));
        drop(a);
        assert_eq!(budget.helpers_in_use(), 0);
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
        // All 64 slots of a full-size budget, and not one more.
        let full = Budget::new(MAX_CALLS, 0);
        let all: Vec<_> = (0..MAX_CALLS).map(|_| full.admit(0).expect("slot")).collect();
        assert_eq!(full.admit(0).err(), Some(Error::Busy));
        assert_eq!(full.calls_in_flight(), MAX_CALLS);
        drop(all);
    }

    #[test]
    fn concurrent_admissions_and_growth_never_overdraw() {
        const THREADS: usize = 16;
        let budget = Budget::new(THREADS, 100);
        let barrier = Barrier::new(THREADS);
        let held: Vec<usize> = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let admission = budget.admit(30).expect("one slot each");
                        admission.grow(usize::MAX);
                        let held = admission.held();
                        // Held until every thread has asked.
                        barrier.wait();
                        held
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        assert!(held.iter().sum::<usize>() <= 100, "{held:?}");
        assert_eq!((budget.calls_in_flight(), budget.helpers_in_use()), (0, 0));
    }

    #[test]
    fn the_global_budget_has_the_documented_size() {
        assert_eq!((MAX_CALLS, MAX_HELPERS, START_SHARE), (64, 1024, 128));
        let admission = global().admit(0).expect("admitted");
        assert!(global().calls_in_flight() >= 1);
        assert_eq!(admission.concurrency(), 1);
    }
}
