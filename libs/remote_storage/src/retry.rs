//! The loop every operation runs in: concurrency limit, per-attempt
//! timeout, retries of transient failures with exponential backoff and full
//! jitter, cancellation, the retry log lines and the metrics.
//!
//! Invariants: a permit of the semaphore is held only while an attempt runs
//! (never while backing off); an attempt is abandoned (its future dropped)
//! when it times out or the token fires, so attempts must leave nothing
//! behind that a later attempt or the caller could mistake for a result.
//!
//! Cancellation: [`Retrier::run`] returns `Cancelled` as soon as the token
//! fires, whether waiting for a permit, inside an attempt or backing off.
//! Dropping its future is equally safe: nothing runs on after it.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{AttemptError, Op, RemoteStorageError};
use crate::metrics;

/// The tuning of [`Retrier::run`], from the configuration.
#[derive(Debug)]
pub(crate) struct Retrier {
    pub(crate) semaphore: Semaphore,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) base_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Retrier {
    /// Runs `attempt(n)` for n = 1, 2, ... until it succeeds, fails
    /// permanently, or `max_retries` retries have failed.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: Op,
        path: &str,
        cancel: &CancellationToken,
        mut attempt: F,
    ) -> Result<T, RemoteStorageError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let started = Instant::now();
        let max_attempts = self.max_retries.saturating_add(1);
        let timeout_ms = self.timeout.as_millis() as u64;
        let cancelled = || RemoteStorageError::Cancelled { op, path: path.to_string() };
        let mut n = 0u32;
        let result = loop {
            n += 1;
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(cancelled()),
                p = self.semaphore.acquire() => p.expect("the semaphore is never closed"),
            };
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(cancelled()),
                r = tokio::time::timeout(self.timeout, attempt(n)) => r,
            };
            drop(permit);
            let err = match outcome {
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(e)) => e,
                Err(_elapsed) => AttemptError::Timeout,
            };
            metrics::ERRORS.with_label_values(&[op.as_str(), err.kind()]).inc();
            if !err.is_transient() {
                break Err(err.into_final(op, path, n, timeout_ms));
            }
            if n >= max_attempts {
                warn!(error = %err, "remote storage {op} of '{path}' failed on attempt {n} of {max_attempts}, giving up");
                break Err(err.into_final(op, path, n, timeout_ms));
            }
            let backoff = self.backoff(n);
            warn!(error = %err, "remote storage {op} of '{path}' failed on attempt {n} of {max_attempts}, retrying in {backoff:?}");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Err(cancelled()),
                _ = tokio::time::sleep(backoff) => {}
            }
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(RemoteStorageError::Cancelled { .. }) => "cancelled",
            Err(_) => "error",
        };
        metrics::OPERATIONS.with_label_values(&[op.as_str(), label]).inc();
        metrics::OPERATION_SECONDS.with_label_values(&[op.as_str()]).observe(started.elapsed().as_secs_f64());
        result
    }

    /// Full jitter: uniform in `0..=min(max, base * 2^(attempt-1))`.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let ms = bound.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rand::thread_rng().gen_range(0..=ms) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn retrier(max_retries: u32) -> Retrier {
        Retrier {
            semaphore: Semaphore::new(1),
            timeout: Duration::from_millis(50),
            max_retries,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    fn transient() -> AttemptError {
        AttemptError::Store(object_store::Error::Generic {
            store: "test",
            source: Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
        })
    }

    #[test]
    fn backoff_is_bounded() {
        let r = retrier(3);
        for attempt in 1..40 {
            assert!(r.backoff(attempt) <= Duration::from_millis(4));
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let r = retrier(3);
        let v = r
            .run(Op::Head, "k", &CancellationToken::new(), |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 3 { Err(transient()) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (3, 3));
    }

    #[tokio::test]
    async fn permanent_is_not_retried_and_timeouts_are() {
        let calls = AtomicU32::new(0);
        let r = retrier(5);
        let e = r
            .run(Op::Download, "k", &CancellationToken::new(), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(AttemptError::Store(object_store::Error::NotFound { path: "k".into(), source: "x".into() })) }
            })
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteStorageError::NotFound { .. }), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let e = retrier(2)
            .run(Op::Upload, "a/b", &CancellationToken::new(), |_| std::future::pending::<Result<(), _>>())
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteStorageError::Timeout { attempts: 3, after_ms: 50, .. }), "{e}");
        assert!(e.to_string().contains("upload of 'a/b'"), "{e}");
    }

    #[tokio::test]
    async fn cancellation_ends_the_loop() {
        let cancel = CancellationToken::new();
        let r = retrier(1000);
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.cancel();
        });
        let e = r
            .run(Op::List, "p", &cancel, |_| async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteStorageError::Cancelled { .. }), "{e}");
    }
}
