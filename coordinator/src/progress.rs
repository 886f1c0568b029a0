//! Live job counters and the end-of-job summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use parking_lot::Mutex;

use serde::Serialize;
use sluice_common::ledger::ErrorRecord;

/// Counters shared between the job and whoever watches it.
#[derive(Debug, Default)]
pub struct JobProgress {
    pub files_planned: AtomicU64,
    /// Inputs refused while planning (missing, unreadable, bad per-file
    /// values): failed files that were never planned.
    pub files_rejected: AtomicU64,
    pub files_skipped: AtomicU64,
    pub files_done: AtomicU64,
    pub files_failed: AtomicU64,
    pub rows_written: AtomicU64,
    pub rows_committed: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
    pub fragments: AtomicU64,
    pub version: AtomicU64,
    pub planning_done: AtomicBool,
    /// Checkpoints received, by the reason of the flush that made them.
    flushes: Mutex<std::collections::BTreeMap<String, u64>>,
    abort: Mutex<Option<String>>,
    /// Cancelled with the first abort, for whoever must react at once.
    aborted: tokio_util::sync::CancellationToken,
}

impl JobProgress {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// A checkpoint came from a flush for `reason`.
    pub fn flushed(&self, reason: &str, n: u64) {
        *self.flushes.lock().entry(reason.to_string()).or_default() += n;
    }
    /// Flushes by reason so far.
    pub fn flushes(&self) -> std::collections::BTreeMap<String, u64> {
        self.flushes.lock().clone()
    }
    /// Ask the job to stop taking files; the first reason wins.
    pub fn abort(&self, reason: impl Into<String>) {
        self.abort.lock().get_or_insert_with(|| reason.into());
        self.aborted.cancel();
    }
    /// Resolves once the job is asked to stop ([`JobProgress::abort`]).
    pub async fn aborted(&self) {
        self.aborted.cancelled().await;
    }
    pub fn abort_reason(&self) -> Option<String> {
        self.abort.lock().clone()
    }
    /// Every input file the job has seen so far: planned or refused.
    pub fn files_total(&self) -> u64 {
        Self::get(&self.files_planned) + Self::get(&self.files_rejected)
    }
    /// Files finished one way or another.
    pub fn files_finished(&self) -> u64 {
        Self::get(&self.files_done) + Self::get(&self.files_failed) + Self::get(&self.files_skipped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Succeeded,
    CompletedWithErrors,
    Aborted,
}

impl JobStatus {
    /// Process exit code: 0 all good, 2 some files failed, 3 aborted.
    pub fn exit_code(self) -> i32 {
        match self {
            JobStatus::Succeeded => 0,
            JobStatus::CompletedWithErrors => 2,
            JobStatus::Aborted => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub job_id: String,
    pub table: String,
    pub status: JobStatus,
    pub abort_reason: Option<String>,
    pub files_planned: u64,
    pub files_skipped: u64,
    pub files_ingested: u64,
    pub files_failed: u64,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub files_per_sec: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub table_version: u64,
    pub commits: u64,
    pub fragments: u64,
    /// Checkpoints by the reason of their flush (rows, bytes, interval,
    /// shards_done, drain).
    pub flushes: std::collections::BTreeMap<String, u64>,
    pub errors: Vec<ErrorRecord>,
    pub peak_rss_bytes: Option<u64>,
    pub peak_concurrent_normalizations: u64,
    /// Most files cut at once in normalizer processes with FFmpeg (video,
    /// audio), each in a process of its own (`media_processes`).
    pub peak_media_normalizations: u64,
    /// Most PDF processes at work at once (`media_processes`), a big PDF's
    /// helpers on its other page ranges included.
    pub peak_pdf_normalizations: u64,
    /// Most bytes of rows in flight at once (held against the row budget).
    pub peak_rows_in_flight_bytes: u64,
    pub storage_requests: u64,
    pub storage_peak_in_flight: u64,
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod abort_tests {
    use super::JobProgress;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_first_abort_wakes_waiters_and_its_reason_stays() {
        let progress = Arc::new(JobProgress::default());
        let waiter = tokio::spawn({
            let progress = progress.clone();
            async move { progress.aborted().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        progress.abort("interrupted");
        progress.abort("later reason");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(progress.abort_reason().as_deref(), Some("interrupted"));
        // Waiting after the abort returns at once.
        progress.aborted().await;
    }
}
