//! Retries, one way: exponential backoff with jitter (`backon`), and the
//! error's kind decides whether another attempt may help.

use std::time::Duration;

use backon::ExponentialBuilder;

use crate::Error;

/// Attempts of one storage write (commit, table creation) before its error
/// is final.
pub const STORAGE_ATTEMPTS: usize = 6;

/// Storage writes the object-store client does not retry itself (a
/// conditional put that timed out is ambiguous): 200 ms doubling, with
/// jitter, [`STORAGE_ATTEMPTS`] attempts in all.
pub fn storage() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_max_times(STORAGE_ATTEMPTS - 1)
        .with_jitter()
}

/// Calls to a peer (a worker publishing to the coordinator): 100 ms
/// doubling up to 2 s, 8 retries.
pub fn peer() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_max_times(8)
        .with_jitter()
}

/// A call that may be retried until `total` has passed in waits: 100 ms
/// doubling up to 1 s, with jitter (etcd briefly away while a lease lives).
pub fn within(total: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .without_max_times()
        .with_total_delay(Some(total))
        .with_jitter()
}

/// A call retried for as long as it takes (campaigning for leadership):
/// 200 ms doubling up to 5 s, with jitter.
pub fn forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter()
}

/// Whether a failed storage write may be tried again: anything but the
/// caller's mistake (bad input or settings, a missing or existing thing).
pub fn storage_retryable(e: &Error) -> bool {
    !matches!(e, Error::InvalidInput(_) | Error::InvalidSettings(_) | Error::NotFound(_) | Error::Conflict(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::Retryable;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The storage policy with its delays shortened for the test.
    fn quick() -> ExponentialBuilder {
        storage().with_min_delay(Duration::from_millis(1)).with_max_delay(Duration::from_millis(5))
    }

    #[tokio::test]
    async fn storage_retries_transient_errors_a_bounded_number_of_times_and_never_the_callers() {
        let calls = AtomicUsize::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::Io(std::io::Error::other("connection reset")))
        };
        assert!(failing.retry(quick()).when(storage_retryable).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), STORAGE_ATTEMPTS);

        calls.store(0, Ordering::SeqCst);
        let refused = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::InvalidInput("bad".into()))
        };
        assert!(refused.retry(quick()).when(storage_retryable).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
