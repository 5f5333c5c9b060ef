//! The one retry helper: capped attempts with jittered exponential backoff.
//!
//! Every request to a backend goes through it for throttling and transient faults,
//! and every optimistic read-modify-write of the filesystem goes through it for
//! conflicts. Nothing else in the program sleeps and tries again.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// Time after which no further attempt starts, however many retries are left.
    pub budget: Option<Duration>,
}

/// How long to wait for the backend: for one attempt, and in all for a request and
/// its retries (mount options `timeout=` and `retry_budget=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// Upper bound on one attempt, connection set-up included.
    pub request_timeout: Duration,
    /// Upper bound on the retries of one request; past it the request fails.
    pub retry_budget: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            request_timeout: Duration::from_secs(20),
            retry_budget: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// For requests the backend throttled or failed transiently: back off up to
    /// seconds, for as long as `patience` allows.
    pub fn transient(patience: Patience) -> Policy {
        Policy {
            min_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(3),
            max_retries: usize::MAX,
            budget: Some(patience.retry_budget),
        }
    }

    /// For optimistic read-modify-write loops that lost a race to another writer.
    /// Patient: a directory many clients create in at once is one hot item, and an
    /// attempt that gives up turns into EIO.
    pub const CONFLICT: Policy = Policy {
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(500),
        max_retries: 120,
        budget: None,
    };
}

/// Run `op` until it succeeds, fails with an error `retryable` rejects, or the policy
/// runs out of attempts or time (then the last error is returned).
pub async fn retry<T, E, F, Fut>(
    policy: Policy,
    op: F,
    retryable: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = policy.budget.map(|budget| Instant::now() + budget);
    let in_time = move || deadline.is_none_or(|deadline| Instant::now() < deadline);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries)
        .with_jitter();
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| retryable(e) && in_time())
        .notify(|_, delay| tracing::debug!(?delay, "retrying"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn retries_until_success_and_stops_on_permanent_errors() {
        let calls = AtomicUsize::new(0);
        let ok: Result<u32, &str> = retry(
            Policy::CONFLICT,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("again")
                } else {
                    Ok(7)
                }
            },
            |e| *e == "again",
        )
        .await;
        assert_eq!(ok, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let err: Result<u32, &str> = retry(
            Policy::CONFLICT,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("fatal")
            },
            |e| *e == "again",
        )
        .await;
        assert_eq!(err, Err("fatal"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Retry an operation that always fails under `policy`: its attempts.
    async fn attempts_of_a_lost_cause(policy: Policy) -> usize {
        let calls = AtomicUsize::new(0);
        let err: Result<(), &str> = retry(
            policy,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("again")
            },
            |_| true,
        )
        .await;
        assert_eq!(err, Err("again"));
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn gives_up_after_the_cap() {
        let policy = Policy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            max_retries: 4,
            budget: None,
        };
        assert_eq!(attempts_of_a_lost_cause(policy).await, 5);
    }

    #[tokio::test]
    async fn gives_up_when_the_budget_is_spent() {
        let policy = Policy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            max_retries: usize::MAX,
            budget: Some(Duration::from_millis(100)),
        };
        let started = Instant::now();
        let calls = attempts_of_a_lost_cause(policy).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!((2..=11).contains(&calls), "{calls} attempts");
    }
}
