//! The memory budget for reads in flight (`--max-read-bytes-in-flight`): the bytes of range
//! responses being built and sent, so that many large reads at once queue instead of taking
//! the member down (etcd #12342: every response is materialised whole, with no bound on how
//! many are).
//!
//! A large read asks for its expected size with [`ReadBudget::acquire`] and waits, in arrival
//! order, until that much is free; a read larger than the whole budget waits until nothing
//! else is in flight and is then served alone. What a read turns out to need beyond what it
//! was granted, and the single chunk every read needs to learn its size, are taken with
//! [`Grant::grow`] and [`ReadBudget::force`], which never wait: small reads never queue
//! behind large ones, so the overshoot is at most one chunk per read in flight.
//!
//! Invariants: `in_use` is the sum of the live [`Grant`]s; a waiter is admitted only at the
//! head of the queue; a waiter that gives up (its client went away) leaves the queue, so the
//! next one can be admitted.

use std::collections::BTreeSet;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The default budget when the flag is 0: 1/64 of physical memory, between 64 MiB and 1 GiB.
pub fn default_limit() -> u64 {
    const MIB: u64 = 1024 * 1024;
    let physical = physical_memory().unwrap_or(4096 * MIB);
    (physical / 64).clamp(64 * MIB, 1024 * MIB)
}

fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The shared budget; clones share it.
#[derive(Clone, Debug)]
pub struct ReadBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    in_use: u64,
    /// The ticket the next waiter draws.
    next_ticket: u64,
    /// The ticket at the head of the queue.
    head: u64,
    /// Tickets behind the head whose waiters gave up.
    abandoned: BTreeSet<u64>,
}

impl State {
    fn waiting(&self) -> u64 {
        self.next_ticket - self.head - self.abandoned.len() as u64
    }

    /// Moves the head past `ticket` and past any abandoned tickets behind it.
    fn advance_past(&mut self, ticket: u64) {
        debug_assert_eq!(self.head, ticket);
        self.head += 1;
        while self.abandoned.remove(&self.head) {
            self.head += 1;
        }
    }
}

/// Bytes of the budget held by one read; released when dropped.
#[derive(Debug)]
pub struct Grant {
    inner: Arc<Inner>,
    bytes: u64,
}

/// What `/metrics` shows of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetUse {
    pub limit: u64,
    pub in_use: u64,
    pub waiting: u64,
}

impl ReadBudget {
    pub fn new(limit: u64) -> ReadBudget {
        assert!(limit > 0, "a read budget must be positive");
        ReadBudget {
            inner: Arc::new(Inner {
                limit,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    pub fn usage(&self) -> BudgetUse {
        let st = self.inner.state.lock().expect("read budget lock");
        BudgetUse {
            limit: self.inner.limit,
            in_use: st.in_use,
            waiting: st.waiting(),
        }
    }

    /// `bytes` of the budget, waiting in arrival order until they fit (or, for a read larger
    /// than the whole budget, until nothing else is in flight).
    pub async fn acquire(&self, bytes: u64) -> Grant {
        let ticket = {
            let mut st = self.inner.state.lock().expect("read budget lock");
            st.next_ticket += 1;
            st.next_ticket - 1
        };
        let mut place = Place {
            inner: &self.inner,
            ticket,
            admitted: false,
        };
        loop {
            let mut changed = pin!(self.inner.changed.notified());
            changed.as_mut().enable();
            {
                let mut st = self.inner.state.lock().expect("read budget lock");
                let fits = st.in_use == 0 || st.in_use.saturating_add(bytes) <= self.inner.limit;
                if st.head == ticket && fits {
                    st.in_use += bytes;
                    st.advance_past(ticket);
                    place.admitted = true;
                    drop(st);
                    // The next waiter may fit too.
                    self.inner.changed.notify_waiters();
                    return Grant {
                        inner: self.inner.clone(),
                        bytes,
                    };
                }
            }
            changed.await;
        }
    }

    /// `bytes` of the budget at once, over the limit if need be.
    pub fn force(&self, bytes: u64) -> Grant {
        self.inner.state.lock().expect("read budget lock").in_use += bytes;
        Grant {
            inner: self.inner.clone(),
            bytes,
        }
    }
}

impl Grant {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds at least `bytes` in all, taking what is missing at once.
    pub fn grow_to(&mut self, bytes: u64) {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            self.inner.state.lock().expect("read budget lock").in_use += more;
            self.bytes = bytes;
        }
    }

    /// Holds at most `bytes`, releasing the rest to the reads waiting.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let less = self.bytes - bytes;
            let mut st = self.inner.state.lock().expect("read budget lock");
            assert!(st.in_use >= less, "read budget released twice");
            st.in_use -= less;
            drop(st);
            self.bytes = bytes;
            self.inner.changed.notify_waiters();
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut st = self.inner.state.lock().expect("read budget lock");
        assert!(st.in_use >= self.bytes, "read budget released twice");
        st.in_use -= self.bytes;
        drop(st);
        self.inner.changed.notify_waiters();
    }
}

/// A waiter's place in the queue; leaving it without being admitted lets the next one in.
struct Place<'a> {
    inner: &'a Inner,
    ticket: u64,
    admitted: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut st = self.inner.state.lock().expect("read budget lock");
        if st.head == self.ticket {
            st.advance_past(self.ticket);
        } else {
            st.abandoned.insert(self.ticket);
        }
        drop(st);
        self.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending<F>(f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(f)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_read_waits_until_its_bytes_fit() {
        let budget = ReadBudget::new(100);
        let first = budget.acquire(60).await;
        let b = budget.clone();
        let second = pending(async move { b.acquire(60).await });
        settle().await;
        assert!(!second.is_finished());
        assert_eq!(budget.usage().waiting, 1);
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(budget.usage().in_use, 60);
        drop(second);
        assert_eq!(budget.usage().in_use, 0);
    }

    #[tokio::test]
    async fn a_read_larger_than_the_budget_is_served_alone() {
        let budget = ReadBudget::new(100);
        let small = budget.acquire(10).await;
        let b = budget.clone();
        let huge = pending(async move { b.acquire(500).await });
        settle().await;
        assert!(
            !huge.is_finished(),
            "waits while anything else is in flight"
        );
        drop(small);
        let huge = huge.await.unwrap();
        assert_eq!(budget.usage().in_use, 500);
        // Nothing else is admitted while it is over the limit.
        let b = budget.clone();
        let next = pending(async move { b.acquire(1).await });
        settle().await;
        assert!(!next.is_finished());
        drop(huge);
        next.await.unwrap();
    }

    #[tokio::test]
    async fn reads_are_admitted_in_arrival_order() {
        let budget = ReadBudget::new(100);
        let held = budget.acquire(90).await;
        let b = budget.clone();
        let big = pending(async move { b.acquire(50).await });
        settle().await;
        let b = budget.clone();
        let small = pending(async move { b.acquire(5).await });
        settle().await;
        assert!(
            !small.is_finished(),
            "a small read does not overtake a queued one"
        );
        drop(held);
        big.await.unwrap();
        small.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let budget = ReadBudget::new(100);
        let held = budget.acquire(100).await;
        let b = budget.clone();
        let gives_up = pending(async move { b.acquire(50).await });
        settle().await;
        let b = budget.clone();
        let next = pending(async move { b.acquire(50).await });
        settle().await;
        gives_up.abort();
        settle().await;
        assert_eq!(budget.usage().waiting, 1);
        drop(held);
        next.await.unwrap();
    }

    #[tokio::test]
    async fn bytes_released_while_sending_admit_the_next_read() {
        let budget = ReadBudget::new(100);
        let mut sending = budget.acquire(100).await;
        let b = budget.clone();
        let next = pending(async move { b.acquire(40).await });
        settle().await;
        assert!(!next.is_finished());
        sending.shrink_to(60);
        let next = next.await.unwrap();
        assert_eq!(budget.usage().in_use, 100);
        sending.shrink_to(70);
        assert_eq!(sending.bytes(), 60, "shrinking never grows");
        drop(sending);
        drop(next);
        assert_eq!(budget.usage().in_use, 0);
    }

    #[tokio::test]
    async fn forced_and_grown_bytes_never_wait_and_are_released() {
        let budget = ReadBudget::new(10);
        let mut a = budget.force(8);
        a.grow_to(30);
        let b = budget.force(5);
        assert_eq!(budget.usage().in_use, 35);
        drop(a);
        drop(b);
        assert_eq!(budget.usage().in_use, 0);
    }
}
