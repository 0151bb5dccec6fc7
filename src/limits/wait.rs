//! The FIFO wait queue of `on_limit = "wait"`: a refused caller takes a ticket, joins the queue of
//! the bucket that refused it ([`QueueGuard`]), and retries when a slot frees or its deadline
//! nears ([`wait_in_line`]); only the head of a queue may take a slot.
//!
//! It must never hold a caller past its deadline, never hold a lock across an await, and never
//! leave a ticket behind: the guard removes it however the wait ends (admitted, timed out,
//! dropped).

use std::sync::atomic::{AtomicU64, Ordering};

use super::log::LogHandle;
use super::types::Refusal;
use crate::sync::MutexExt;

/// Hands out tickets: a caller's place in a wait queue.
pub(super) struct Tickets(AtomicU64);

impl Tickets {
    pub(super) fn new() -> Tickets {
        Tickets(AtomicU64::new(1))
    }

    pub(super) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Removes a waiter's ticket from its bucket's queue and wakes the next one.
pub(super) struct QueueGuard {
    bucket: LogHandle,
    ticket: u64,
}

impl QueueGuard {
    pub(super) fn enter(bucket: LogHandle, ticket: u64) -> QueueGuard {
        bucket.lock_unpoisoned().queue.push_back(ticket);
        QueueGuard { bucket, ticket }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut b = self.bucket.lock_unpoisoned();
        b.queue.retain(|&t| t != self.ticket);
        b.notify.notify_waiters();
    }
}

/// Waits in `bucket`'s queue under `ticket` until `retry` (a take with that ticket) succeeds or
/// nothing can free up before `deadline`. `refusal` is the answer that sent the caller here.
pub(super) async fn wait_in_line<P>(
    bucket: LogHandle,
    ticket: u64,
    mut refusal: Refusal,
    deadline: tokio::time::Instant,
    mut retry: impl FnMut(u64) -> Result<P, Refusal>,
) -> Result<P, Refusal> {
    let _queued = QueueGuard::enter(bucket.clone(), ticket);
    loop {
        let now_t = tokio::time::Instant::now();
        // Nothing frees up before the caller's deadline: say so now rather than hold it.
        if now_t + refusal.retry_after > deadline {
            return Err(refusal);
        }
        let notify = bucket.lock_unpoisoned().notify.clone();
        let notified = notify.notified();
        let wake = (now_t + refusal.retry_after).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = notified => {}
        }
        match retry(ticket) {
            Ok(p) => return Ok(p),
            Err(r) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(r);
                }
                refusal = r;
            }
        }
    }
}
