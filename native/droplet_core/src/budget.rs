//! One process-wide bound on the threads the NIF runs, whoever calls it,
//! shared fairly among the calls in flight.
//!
//! Every call runs on a coordinator thread of its own, which needs one of
//! [`MAX_CALLS`] call slots: with none free the call is refused at once
//! ([`Error::Busy`]) rather than queued, since the caller is an Erlang
//! scheduler that must not wait. A call that wants to run items in parallel
//! also asks for helper threads from a shared pool of [`MAX_HELPERS`]
//! permits. Its coordinator works through the items too, so a call granted
//! no helper still makes progress, and surplus work queues behind the
//! threads a call has instead of spawning more. So at any moment the NIF
//! runs at most `MAX_CALLS + MAX_HELPERS` threads.
//!
//! Fairness, so that one slow call cannot starve the rest: a call starts
//! with at most [`START_SHARE`] helpers (all it gets when eight calls
//! arrive at once), and never fewer than it started with, so the
//! concurrency it reports is one it keeps. Between items it grows towards
//! its fair share as permits free up: the max-min share of the pool among
//! what the calls in flight want. Helpers beyond both its start and its
//! share end after their item, giving their permits back for the others.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::pool::Helpers;
use crate::Error;

/// Calls in flight at once; each is one coordinator thread. At most 64:
/// a call's slot is a bit of one word.
pub const MAX_CALLS: usize = 64;
/// Helper threads, shared by all calls in flight.
pub const MAX_HELPERS: usize = 1024;
/// The most helpers a call starts with, as a part of the pool.
pub const START_SHARE: usize = MAX_HELPERS / 8;

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
        let taken = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                (wanted.min(free) > 0).then(|| free - wanted.min(free))
            });
        taken.map_or(0, |free| wanted.min(free))
    }

    fn give_back(&self, count: usize) {
        self.free.fetch_add(count, Ordering::AcqRel);
    }

    fn free(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct Budget {
    /// Bit `i` set: call slot `i` is taken.
    slots: AtomicU64,
    /// The helpers each slot's call wants.
    wants: [AtomicUsize; MAX_CALLS],
    helpers: Permits,
    max_calls: usize,
    max_helpers: usize,
}

impl Budget {
    pub const fn new(max_calls: usize, max_helpers: usize) -> Budget {
        Budget {
            slots: AtomicU64::new(0),
            wants: [const { AtomicUsize::new(0) }; MAX_CALLS],
            helpers: Permits::new(max_helpers),
            max_calls: if max_calls < MAX_CALLS {
                max_calls
            } else {
                MAX_CALLS
            },
            max_helpers,
        }
    }

    /// A call slot plus up to `helpers_wanted` helper permits, within the
    /// start share, without waiting; `Err(Busy)` when every call slot is
    /// taken.
    pub fn admit(&self, helpers_wanted: usize) -> Result<Admission<'_>, Error> {
        let slot = self.take_slot().ok_or(Error::Busy)?;
        self.wants[slot].store(helpers_wanted, Ordering::Release);
        let start = self.share_of(slot).min(self.max_helpers / 8);
        let floor = self.helpers.take_up_to(start);
        Ok(Admission {
            budget: self,
            slot,
            floor,
            held: AtomicUsize::new(floor),
        })
    }

    fn take_slot(&self) -> Option<usize> {
        let all = u64::MAX
            .checked_shr((64 - self.max_calls) as u32)
            .unwrap_or(0);
        let taken = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |slots| {
                let free = !slots & all;
                (free != 0).then(|| slots | (free & free.wrapping_neg()))
            });
        taken
            .ok()
            .map(|slots| (!slots & all).trailing_zeros() as usize)
    }

    /// The max-min fair share of the helpers among the calls in flight:
    /// each gets what it wants, up to a level that the pool fills.
    fn share(&self) -> usize {
        let slots = self.slots.load(Ordering::Acquire);
        let mut wants = [0; MAX_CALLS];
        let mut calls = 0;
        for (i, want) in self.wants.iter().enumerate() {
            if slots & (1 << i) != 0 {
                wants[calls] = want.load(Ordering::Acquire);
                calls += 1;
            }
        }
        let wants = &mut wants[..calls];
        wants.sort_unstable();
        let mut left = self.max_helpers;
        for (i, &want) in wants.iter().enumerate() {
            let callers = wants.len() - i;
            if want.saturating_mul(callers) > left {
                return left / callers;
            }
            left -= want;
        }
        usize::MAX
    }

    /// What the call in `slot` may hold: its fair share, at most its want.
    fn share_of(&self, slot: usize) -> usize {
        self.share().min(self.wants[slot].load(Ordering::Acquire))
    }

    pub fn calls_in_flight(&self) -> usize {
        self.slots.load(Ordering::Acquire).count_ones() as usize
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
    slot: usize,
    /// The helpers granted at the start, which the call keeps.
    floor: usize,
    held: AtomicUsize,
}

impl Admission<'_> {
    /// Helper threads this call was granted at its start, and keeps.
    pub fn helpers(&self) -> usize {
        self.floor
    }

    /// Items this call runs at once at least: its helpers and its
    /// coordinator.
    pub fn concurrency(&self) -> usize {
        self.floor + 1
    }

    /// Helper permits held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn share(&self) -> usize {
        self.budget.share_of(self.slot)
    }
}

impl Helpers for Admission<'_> {
    fn start(&self, up_to: usize) -> usize {
        self.held().min(up_to)
    }

    fn grow(&self, up_to: usize) -> usize {
        let share = self.share();
        // Claimed on `held` first, so that workers finishing together do
        // not all take the same room.
        let claim = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < share && up_to > 0).then(|| held + (share - held).min(up_to))
            });
        let Ok(held) = claim else { return 0 };
        let claimed = (share - held).min(up_to);
        let taken = self.budget.helpers.take_up_to(claimed);
        self.held.fetch_sub(claimed - taken, Ordering::AcqRel);
        taken
    }

    fn shrink(&self) -> bool {
        let keep = self.floor.max(self.share());
        let shed = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
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
        self.budget.wants[self.slot].store(0, Ordering::Release);
        self.budget
            .slots
            .fetch_and(!(1 << self.slot), Ordering::AcqRel);
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
    fn the_fair_share_fills_the_pool_smallest_wants_first() {
        let budget = Budget::new(4, 64);
        let small = budget.admit(1).expect("slot");
        let a = budget.admit(100).expect("slot");
        let b = budget.admit(100).expect("slot");
        // 1 for the small call, the 63 left halved.
        assert_eq!((small.share(), a.share(), b.share()), (1, 31, 31));
        drop(small);
        assert_eq!((a.share(), b.share()), (32, 32));
        drop(b);
        assert_eq!(a.share(), 64);
        // Wants that fit are met whole.
        let c = budget.admit(10).expect("slot");
        assert_eq!((a.share(), c.share()), (54, 10));
    }

    #[test]
    fn a_call_grows_to_its_share_and_sheds_only_what_it_grew() {
        let budget = Budget::new(4, 64);
        let a = budget.admit(100).expect("slot");
        // It starts with an eighth, then grows to what it may hold.
        assert_eq!((a.helpers(), a.held()), (8, 8));
        assert_eq!(a.grow(10), 10);
        assert_eq!(a.grow(usize::MAX), 46);
        assert_eq!((a.held(), a.grow(usize::MAX)), (64, 0));
        assert!(!a.shrink());
        // A newcomer finds nothing free: admitted with its coordinator
        // alone, it has a share of 32 all the same.
        let b = budget.admit(100).expect("slot");
        assert_eq!((b.concurrency(), b.share()), (1, 32));
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
        assert_eq!(c.helpers(), 0);
        let kept = (0..100).take_while(|_| a.shrink()).count();
        assert_eq!((kept, a.held()), (32, 32));
        assert_eq!(a.helpers(), 8);
    }

    #[test]
    fn what_a_call_started_with_is_never_shed() {
        let budget = Budget::new(64, 64);
        let first = budget.admit(8).expect("slot");
        let rest: Vec<_> = (0..63).map(|_| budget.admit(64).expect("slot")).collect();
        // 64 calls: a share of one each, but the first keeps its 8.
        assert_eq!(first.share(), 1);
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
        let all: Vec<_> = (0..MAX_CALLS)
            .map(|_| full.admit(0).expect("slot"))
            .collect();
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
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
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
