//! End-to-end acknowledgement of batches, and the byte budget that bounds in-flight memory.
//!
//! Invariant 1 (no silent loss): a batch's `on_settled` callback — which is what lets an input
//! commit a file offset — runs only after **every** output the batch was routed to has settled
//! its [`Claim`] as delivered (or as dropped, which the output counts and logs). A claim that is
//! dropped unsettled (shutdown, crash of a task) abandons the batch: the callback never runs and
//! the source position stays where it was, so the data is read again on restart.
//!
//! Invariant 2 (bounded memory): the batch's bytes are charged to its input's [`MemBudget`] when
//! dispatched and released when the last claim is gone; inputs stop reading while over budget.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes an input has in flight (dispatched and not yet settled by every output).
#[derive(Debug)]
pub struct MemBudget {
    used: AtomicU64,
    limit: u64,
}

impl MemBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }
    pub fn is_full(&self) -> bool {
        self.used.load(Ordering::Acquire) >= self.limit
    }
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
    pub fn limit(&self) -> u64 {
        self.limit
    }
    fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }
    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

type Callback = Box<dyn FnOnce() + Send>;

struct Ticket {
    pending: AtomicUsize,
    abandoned: AtomicBool,
    on_settled: Mutex<Option<Callback>>,
    budget: Arc<MemBudget>,
    bytes: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// One output's share of a batch. Settle it with [`Claim::delivered`] or [`Claim::dropped`].
pub struct Claim {
    ticket: Option<Arc<Ticket>>,
}

impl Claim {
    /// Creates `outputs` claims on a batch of `bytes`; `on_settled` runs when all are settled.
    /// With no outputs the callback runs at once (Fluent Bit drops unrouted records too).
    pub fn split(
        outputs: usize,
        bytes: u64,
        budget: &Arc<MemBudget>,
        on_settled: Callback,
    ) -> Vec<Claim> {
        if outputs == 0 {
            on_settled();
            return Vec::new();
        }
        budget.charge(bytes);
        let ticket = Arc::new(Ticket {
            pending: AtomicUsize::new(outputs),
            abandoned: AtomicBool::new(false),
            on_settled: Mutex::new(Some(on_settled)),
            budget: budget.clone(),
            bytes,
        });
        (0..outputs)
            .map(|_| Claim {
                ticket: Some(ticket.clone()),
            })
            .collect()
    }

    fn settle(mut self, abandoned: bool) {
        if let Some(t) = self.ticket.take() {
            if abandoned {
                t.abandoned.store(true, Ordering::Release);
            }
            if t.pending.fetch_sub(1, Ordering::AcqRel) == 1 && !t.abandoned.load(Ordering::Acquire)
            {
                if let Some(cb) = t.on_settled.lock().expect("ticket lock").take() {
                    cb();
                }
            }
        }
    }

    /// The output has the records durably.
    pub fn delivered(self) {
        self.settle(false)
    }

    /// The output gave up on the records (counted and logged by the output).
    pub fn dropped(self) {
        self.settle(false)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.abandoned.store(true, Ordering::Release);
            t.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counter() -> (Arc<AtomicUsize>, Callback) {
        let c = Arc::new(AtomicUsize::new(0));
        let c2 = c.clone();
        (
            c,
            Box::new(move || {
                c2.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn settles_only_when_all_outputs_have_it() {
        let budget = MemBudget::new(100);
        let (fired, cb) = counter();
        let mut claims = Claim::split(2, 60, &budget, cb);
        assert_eq!(budget.used(), 60);
        claims.pop().unwrap().delivered();
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        claims.pop().unwrap().delivered();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn abandoned_claim_never_commits() {
        let budget = MemBudget::new(100);
        let (fired, cb) = counter();
        let mut claims = Claim::split(2, 10, &budget, cb);
        drop(claims.pop());
        claims.pop().unwrap().delivered();
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert_eq!(budget.used(), 0);
    }
}
