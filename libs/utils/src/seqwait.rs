//! Waiting for an LSN to be reached.
//!
//! [`SeqWait`] owns a monotonically increasing [`Lsn`] (for example a
//! timeline's last ingested record) and the set of tasks waiting for it to
//! reach some value. A reader asks for page@LSN before that LSN has been
//! ingested; it awaits [`SeqWait::wait_for`] and is woken by the ingest side's
//! [`SeqWait::advance`].
//!
//! Invariants:
//! * the value never goes backwards: `advance` to a lower value is a no-op
//!   that returns the current value;
//! * `advance` wakes exactly the waiters whose target is now reached, in
//!   ascending order of target (ties in the order they started waiting);
//! * after [`SeqWait::shutdown`] every current and future wait that is not
//!   already satisfied fails with [`SeqWaitError::Shutdown`].
//!
//! Cancellation: `wait_for` and `wait_for_timeout` are cancellation-safe. A
//! dropped wait removes its own registration, so abandoned or timed-out
//! waits do not accumulate. `advance` is synchronous and never blocks on
//! waiters (it only sends on one-shot channels).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::lsn::Lsn;

/// Why a wait ended without the LSN being reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqWaitError {
    #[error("timed out after {timeout_ms} ms waiting for LSN {wanted} (reached {reached})")]
    Timeout { wanted: Lsn, reached: Lsn, timeout_ms: u128 },
    #[error("shutting down while waiting for LSN {wanted}")]
    Shutdown { wanted: Lsn },
}

/// Registration key: target first so a `BTreeMap` keeps waiters in wake order.
type WaiterKey = (Lsn, u64);

struct State {
    current: Lsn,
    shutdown: bool,
    next_waiter_id: u64,
    waiters: BTreeMap<WaiterKey, oneshot::Sender<()>>,
}

/// A monotonically increasing LSN that tasks can wait on.
pub struct SeqWait {
    state: Mutex<State>,
}

/// Removes a registration when its wait ends in any way.
struct Registration<'a> {
    seq: &'a SeqWait,
    key: WaiterKey,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.seq.lock().waiters.remove(&self.key);
    }
}

enum Registered<'a> {
    Ready,
    Shutdown,
    Waiting(Registration<'a>, oneshot::Receiver<()>),
}

impl SeqWait {
    pub fn new(start: Lsn) -> SeqWait {
        SeqWait {
            state: Mutex::new(State {
                current: start,
                shutdown: false,
                next_waiter_id: 0,
                waiters: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent
        // (every update is a single assignment or map operation).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current value.
    pub fn load(&self) -> Lsn {
        self.lock().current
    }

    /// Number of tasks currently waiting (for metrics and tests).
    pub fn waiter_count(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Raise the value to `lsn` (if higher) and wake every waiter it satisfies,
    /// lowest target first. Returns the value before the call.
    pub fn advance(&self, lsn: Lsn) -> Lsn {
        let mut state = self.lock();
        let old = state.current;
        if lsn <= old {
            return old;
        }
        state.current = lsn;
        let still_waiting = match lsn.0.checked_add(1) {
            Some(above) => state.waiters.split_off(&(Lsn(above), 0)),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut state.waiters, still_waiting);
        drop(state);
        for (_, sender) in ready {
            // The receiver may be gone (wait cancelled): nothing to wake.
            let _ = sender.send(());
        }
        old
    }

    /// Fail every current and future wait that is not already satisfied.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shutdown = true;
        // Dropping the senders wakes the receivers with an error.
        state.waiters.clear();
    }

    fn register(&self, lsn: Lsn) -> Registered<'_> {
        let mut state = self.lock();
        if state.current >= lsn {
            return Registered::Ready;
        }
        if state.shutdown {
            return Registered::Shutdown;
        }
        let key = (lsn, state.next_waiter_id);
        state.next_waiter_id += 1;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(key, tx);
        Registered::Waiting(Registration { seq: self, key }, rx)
    }

    /// Wait until the value is at least `lsn`.
    pub async fn wait_for(&self, lsn: Lsn) -> Result<(), SeqWaitError> {
        match self.register(lsn) {
            Registered::Ready => Ok(()),
            Registered::Shutdown => Err(SeqWaitError::Shutdown { wanted: lsn }),
            Registered::Waiting(_registration, rx) => match rx.await {
                Ok(()) => Ok(()),
                Err(_) => Err(SeqWaitError::Shutdown { wanted: lsn }),
            },
        }
    }

    /// [`SeqWait::wait_for`] bounded by `timeout`.
    pub async fn wait_for_timeout(&self, lsn: Lsn, timeout: Duration) -> Result<(), SeqWaitError> {
        match tokio::time::timeout(timeout, self.wait_for(lsn)).await {
            Ok(result) => result,
            Err(_) => Err(SeqWaitError::Timeout {
                wanted: lsn,
                reached: self.load(),
                timeout_ms: timeout.as_millis(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn reached_lsn_returns_at_once() {
        let seq = SeqWait::new(Lsn(100));
        seq.wait_for(Lsn(100)).await.unwrap();
        seq.wait_for(Lsn(50)).await.unwrap();
        assert_eq!(seq.waiter_count(), 0);
    }

    #[tokio::test]
    async fn advance_never_goes_backwards() {
        let seq = SeqWait::new(Lsn(100));
        assert_eq!(seq.advance(Lsn(200)), Lsn(100));
        assert_eq!(seq.advance(Lsn(150)), Lsn(200));
        assert_eq!(seq.load(), Lsn(200));
    }

    #[tokio::test]
    async fn waiters_wake_in_lsn_order_and_only_when_reached() {
        let seq = Arc::new(SeqWait::new(Lsn(0)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for target in [300u64, 100, 200, 100, 400] {
            let seq = seq.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                seq.wait_for(Lsn(target)).await.unwrap();
                tx.send(target).unwrap();
            }));
        }
        while seq.waiter_count() < 5 {
            tokio::task::yield_now().await;
        }
        seq.advance(Lsn(250));
        let mut woken = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        woken.sort();
        assert_eq!(woken, vec![100, 100, 200]);
        assert_eq!(seq.waiter_count(), 2, "300 and 400 still wait");
        assert!(rx.try_recv().is_err());
        seq.advance(Lsn(1000));
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[test]
    fn advance_sends_in_ascending_order() {
        let seq = SeqWait::new(Lsn(0));
        let mut regs = Vec::new();
        for target in [30u64, 10, 20] {
            match seq.register(Lsn(target)) {
                Registered::Waiting(reg, rx) => regs.push((target, reg, rx)),
                _ => panic!("should wait"),
            }
        }
        let order: Vec<WaiterKey> = seq.lock().waiters.keys().copied().collect();
        assert_eq!(order.iter().map(|k| k.0 .0).collect::<Vec<_>>(), vec![10, 20, 30]);
        seq.advance(Lsn(25));
        for (target, _reg, mut rx) in regs {
            assert_eq!(rx.try_recv().is_ok(), target <= 25, "target {target}");
        }
    }

    #[tokio::test]
    async fn timeout_reports_what_was_reached_and_cleans_up() {
        let seq = SeqWait::new(Lsn(10));
        let err = seq.wait_for_timeout(Lsn(20), Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err, SeqWaitError::Timeout { wanted: Lsn(20), reached: Lsn(10), timeout_ms: 20 });
        assert_eq!(seq.waiter_count(), 0);
    }

    #[tokio::test]
    async fn dropped_wait_removes_its_registration() {
        let seq = SeqWait::new(Lsn(0));
        let mut fut = Box::pin(seq.wait_for(Lsn(5)));
        assert!(futures_poll_once(fut.as_mut()).await.is_none());
        assert_eq!(seq.waiter_count(), 1);
        drop(fut);
        assert_eq!(seq.waiter_count(), 0);
    }

    #[tokio::test]
    async fn shutdown_fails_current_and_later_waits() {
        let seq = Arc::new(SeqWait::new(Lsn(0)));
        let waiting = {
            let seq = seq.clone();
            tokio::spawn(async move { seq.wait_for(Lsn(10)).await })
        };
        while seq.waiter_count() < 1 {
            tokio::task::yield_now().await;
        }
        seq.shutdown();
        assert_eq!(waiting.await.unwrap(), Err(SeqWaitError::Shutdown { wanted: Lsn(10) }));
        assert_eq!(seq.wait_for(Lsn(11)).await, Err(SeqWaitError::Shutdown { wanted: Lsn(11) }));
        // What is already reached stays reachable.
        assert_eq!(seq.wait_for(Lsn(0)).await, Ok(()));
    }

    /// Poll a future once; `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
        let mut fut = fut;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
