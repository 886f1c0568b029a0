//! The row budget: bytes of rows in flight at once, from the moment a
//! normalizer hands rows on, through the flusher's buffer, until the
//! fragment write that carries them has finished. A normalizer with rows to
//! hand on waits while the budget is spent, so a job's memory follows the
//! budget whatever its files are like.
//!
//! The flusher writes a fragment whenever its buffer holds a
//! `1 / (MAX_UPLOADS + 1)` share of the budget (or `flush_bytes`, if that is
//! less), so the buffer and the writes in flight fit the budget together and
//! a writer always frees what a waiting normalizer needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::flusher::MAX_UPLOADS;

/// Budget accounting unit: permits are KiB (a semaphore counts in u32).
const UNIT: u64 = 1024;

#[derive(Debug, Clone)]
pub struct RowBudget {
    permits: Arc<Semaphore>,
    total_units: u64,
    usage: Arc<BudgetUsage>,
}

/// What the budget held, now and at most (for summaries and metrics).
#[derive(Debug, Default)]
pub struct BudgetUsage {
    now: AtomicU64,
    peak: AtomicU64,
}

impl BudgetUsage {
    /// Most bytes ever held at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Bytes of rows held against the budget; given back when dropped.
#[derive(Debug)]
pub struct Grant {
    _permit: OwnedSemaphorePermit,
    units: u64,
    usage: Arc<BudgetUsage>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let now = self.usage.now.fetch_sub(self.units * UNIT, Ordering::Relaxed) - self.units * UNIT;
        metrics::gauge!("sluice_worker_rows_in_flight_bytes").set(now as f64);
    }
}

impl RowBudget {
    /// A budget of `bytes` (at least one flush share of 1 KiB each), whose
    /// use is recorded in `usage`.
    pub fn new(bytes: u64, usage: Arc<BudgetUsage>) -> Self {
        let total_units = (bytes / UNIT).clamp(MAX_UPLOADS as u64 + 1, u64::from(u32::MAX >> 4));
        Self { permits: Arc::new(Semaphore::new(total_units as usize)), total_units, usage }
    }

    /// The buffer size at which the flusher writes, given its own
    /// `flush_bytes`: at most one share of the budget.
    pub fn flush_bytes(&self, flush_bytes: u64) -> u64 {
        flush_bytes.min(self.share_units() * UNIT).max(UNIT)
    }

    fn share_units(&self) -> u64 {
        self.total_units / (MAX_UPLOADS as u64 + 1)
    }

    /// Hold `bytes` of rows, waiting while the budget is spent. Rows larger
    /// than one flush share (a long video segment) hold one share, so that
    /// they can always be written.
    pub async fn reserve(&self, bytes: u64) -> Grant {
        let units = bytes.div_ceil(UNIT).clamp(1, self.share_units());
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(units as u32)
            .await
            .expect("the row budget's semaphore is never closed");
        let now = self.usage.now.fetch_add(units * UNIT, Ordering::Relaxed) + units * UNIT;
        self.usage.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("sluice_worker_rows_in_flight_bytes").set(now as f64);
        Grant { _permit: permit, units, usage: self.usage.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_at_default_settings_fits_one_upload_part() {
        let d = sluice_common::settings::Settings::DEFAULT;
        let share = RowBudget::new(d.memory_budget_bytes, Arc::default()).flush_bytes(d.flush_bytes);
        // The buffer reaches a share one row late, by a row of up to a share
        // (larger rows are files stored whole: written in parts).
        let largest = 2 * share;
        assert!(largest + (1 << 20) <= crate::UPLOAD_PART_BYTES as u64, "{largest} bytes of rows against {} a part", crate::UPLOAD_PART_BYTES);
    }

    #[tokio::test]
    async fn a_spent_budget_holds_back_until_rows_are_written() {
        let usage = Arc::new(BudgetUsage::default());
        let budget = RowBudget::new(30 * UNIT, usage.clone());
        assert_eq!(budget.flush_bytes(u64::MAX), 10 * UNIT, "a third each: buffer and two writes");
        assert_eq!(budget.flush_bytes(4 * UNIT), 4 * UNIT, "flush_bytes below the share wins");
        let a = budget.reserve(10 * UNIT).await;
        let b = budget.reserve(10 * UNIT).await;
        // Bigger than a share: holds one share, so it can always be written.
        let c = budget.reserve(100 * UNIT).await;
        assert_eq!(usage.peak_bytes(), 30 * UNIT);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the budget is spent");
        drop(a);
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        drop((b, c, d));
        assert_eq!(usage.now.load(Ordering::Relaxed), 0);
        assert_eq!(usage.peak_bytes(), 30 * UNIT);
    }
}
