//! The commit reconciler: absorbs workers' checkpoints in order and turns them
//! into Lance commits, every `commit_every` rows and at the end.
//!
//! A commit only ends at a *clean* checkpoint (no file has rows on both sides
//! of it), so a file's rows always land in one commit; the table is then its
//! own ledger of finished files. Each commit has a deterministic id (job,
//! worker, first and last checkpoint) and goes through
//! [`sluice_common::table::commit_append`], which never applies an id twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lance::Dataset;
use lance_table::format::Fragment;
use sluice_common::ledger::ErrorLedger;
use sluice_common::table::{commit_append, prop, TableHandle};
use sluice_common::protocol::{Checkpoint, CheckpointAck, FileFailed};
use sluice_common::{ids, Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::progress::JobProgress;

pub enum ReconcilerMsg {
    Checkpoint(Box<Checkpoint>, oneshot::Sender<Result<CheckpointAck>>),
    /// Inputs that failed before reaching a worker.
    PlanningFailed(Vec<FileFailed>),
    /// Commit what is left and stop: everything when the workers drained
    /// cleanly, otherwise only up to each worker's last clean checkpoint.
    Finish { complete: bool, reply: oneshot::Sender<Result<()>> },
    /// A worker was declared dead: drop its uncommitted checkpoints and
    /// refuse anything more from it. Its shards are redone elsewhere.
    Fence { worker_id: String, reply: oneshot::Sender<()> },
}

/// Called with the checkpoints of every commit once it landed (including
/// commits that only recorded failures).
pub type CommitObserver = Arc<dyn Fn(&[Checkpoint]) + Send + Sync>;

/// Asked right before each commit; an error stops the commit (a
/// coordinator that no longer leads must not commit).
pub type CommitGuard = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

#[derive(Default)]
struct WorkerStream {
    next_seq: u64,
    pending: Vec<Checkpoint>,
}

pub struct CommitReconciler {
    table: TableHandle,
    dataset: Dataset,
    known_version: u64,
    job_id: String,
    commit_every: u64,
    max_errors: Option<u64>,
    ledger: ErrorLedger,
    progress: Arc<JobProgress>,
    streams: BTreeMap<String, WorkerStream>,
    pending_rows: u64,
    planner_batches: u64,
    fenced: std::collections::HashSet<String>,
    observer: Option<CommitObserver>,
    guard: Option<CommitGuard>,
}

impl CommitReconciler {
    pub fn new(
        table: TableHandle,
        dataset: Dataset,
        job_id: String,
        commit_every: u32,
        max_errors: Option<u64>,
        ledger: ErrorLedger,
        progress: Arc<JobProgress>,
    ) -> Self {
        let known_version = dataset.version().version;
        progress.version.store(known_version, std::sync::atomic::Ordering::Relaxed);
        Self {
            table,
            dataset,
            known_version,
            job_id,
            commit_every: u64::from(commit_every),
            max_errors,
            ledger,
            progress,
            streams: BTreeMap::new(),
            pending_rows: 0,
            planner_batches: 0,
            fenced: Default::default(),
            observer: None,
            guard: None,
        }
    }

    pub fn with_guard(mut self, guard: CommitGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn with_observer(mut self, observer: CommitObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn fence(&mut self, worker_id: String) {
        if let Some(stream) = self.streams.remove(&worker_id) {
            // Their fragments will never be committed: remove the files.
            let orphans: Vec<Fragment> = stream.pending.iter().flat_map(|cp| cp.fragments.iter().cloned()).collect();
            if !orphans.is_empty() {
                let dataset = self.dataset.clone();
                tokio::spawn(async move {
                    let removed = sluice_common::table::discard_fragments(&dataset, &orphans).await;
                    tracing::info!(removed, "discarded the data files of a fenced worker's uncommitted fragments");
                });
            }
            let p = &self.progress;
            for cp in &stream.pending {
                p.files_done.fetch_sub(cp.completed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                p.files_failed.fetch_sub(cp.failed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                p.rows_written.fetch_sub(cp.rows, std::sync::atomic::Ordering::Relaxed);
                p.bytes.fetch_sub(cp.bytes, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::warn!(job_id = %self.job_id, %worker_id, dropped = stream.pending.len(), "worker fenced; its uncommitted checkpoints are dropped");
        }
        self.pending_rows = self.streams.values().flat_map(|s| &s.pending).map(|c| c.rows).sum();
        self.fenced.insert(worker_id);
        metrics::counter!("sluice_workers_fenced_total").increment(1);
    }

    /// Serve messages until `Finish`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ReconcilerMsg>) -> Result<()> {
        while let Some(msg) = rx.recv().await {
            match msg {
                ReconcilerMsg::Checkpoint(cp, reply) => {
                    let r = self.absorb(*cp).await;
                    let fatal = r.as_ref().err().map(|e| e.to_string());
                    let _ = reply.send(r);
                    if let Some(e) = fatal {
                        return Err(Error::Internal(format!("commit failed: {e}")));
                    }
                }
                ReconcilerMsg::PlanningFailed(failed) => {
                    self.planner_batches += 1;
                    let id = format!("planner-{:06}", self.planner_batches);
                    self.ledger.record(&self.job_id, &id, &failed).await?;
                    JobProgress::add(&self.progress.files_failed, failed.len() as u64);
                    self.check_errors();
                }
                ReconcilerMsg::Fence { worker_id, reply } => {
                    self.fence(worker_id);
                    let _ = reply.send(());
                }
                ReconcilerMsg::Finish { complete, reply } => {
                    let r = self.commit_ready(complete).await;
                    let _ = reply.send(r);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn check_errors(&self) -> bool {
        let failed = JobProgress::get(&self.progress.files_failed);
        match self.max_errors {
            Some(max) if failed > max => {
                self.progress.abort(format!("{failed} files failed, more than --max-errors {max}"));
                true
            }
            _ => false,
        }
    }

    pub async fn absorb(&mut self, cp: Checkpoint) -> Result<CheckpointAck> {
        if cp.job_id != self.job_id {
            return Ok(CheckpointAck::refused(format!("unknown job {}", cp.job_id)));
        }
        if self.fenced.contains(&cp.worker_id) {
            return Ok(CheckpointAck::refused(format!(
                "worker {} was declared dead; its shards went to other workers",
                cp.worker_id
            )));
        }
        let stream = self.streams.entry(cp.worker_id.clone()).or_insert(WorkerStream { next_seq: 1, pending: vec![] });
        if cp.seq < stream.next_seq {
            // A retried publish of a checkpoint we already hold.
            return Ok(CheckpointAck { accepted: true, reason: "duplicate".into(), stop: false });
        }
        if cp.seq > stream.next_seq {
            return Ok(CheckpointAck::refused(format!(
                "expected checkpoint {} from {}, got {}",
                stream.next_seq, cp.worker_id, cp.seq
            )));
        }
        stream.next_seq += 1;
        let reason = cp.flush_reason.map_or("unknown", |r| r.as_str());
        metrics::counter!("sluice_checkpoints_total", "flush_reason" => reason.to_string()).increment(1);
        if cp.flushes.is_empty() {
            // A peer that wrote a fragment per flush.
            self.progress.flushed(reason, 1);
        }
        for (r, n) in &cp.flushes {
            self.progress.flushed(r.as_str(), u64::from(*n));
        }
        metrics::counter!("sluice_files_failed_total").increment(cp.failed.len() as u64);
        let p = &self.progress;
        JobProgress::add(&p.files_done, cp.completed.len() as u64);
        JobProgress::add(&p.files_failed, cp.failed.len() as u64);
        JobProgress::add(&p.rows_written, cp.rows);
        JobProgress::add(&p.bytes, cp.bytes);
        self.pending_rows += cp.rows;
        stream.pending.push(cp);
        if self.pending_rows >= self.commit_every {
            self.commit_ready(false).await?;
        }
        let stop = self.check_errors();
        Ok(CheckpointAck::accepted(stop))
    }

    /// Commit each worker's pending checkpoints up to its last clean one (or all).
    async fn commit_ready(&mut self, all: bool) -> Result<()> {
        let workers: Vec<String> = self.streams.keys().cloned().collect();
        for worker in workers {
            let stream = self.streams.get_mut(&worker).expect("listed");
            let cut = if all {
                stream.pending.len()
            } else {
                stream.pending.iter().rposition(|c| c.clean).map_or(0, |i| i + 1)
            };
            if cut == 0 {
                continue;
            }
            let batch: Vec<_> = stream.pending.drain(..cut).collect();
            self.commit(&worker, batch).await?;
        }
        self.pending_rows = self.streams.values().flat_map(|s| &s.pending).map(|c| c.rows).sum();
        Ok(())
    }

    async fn commit(&mut self, worker: &str, cps: Vec<Checkpoint>) -> Result<()> {
        let (first, last) = (cps[0].seq, cps[cps.len() - 1].seq);
        let commit_id = ids::commit_id(&self.job_id, worker, first, last);
        let mut fragments: Vec<Fragment> = Vec::new();
        let mut failed = Vec::new();
        let (mut rows, mut files) = (0u64, 0u64);
        for cp in &cps {
            fragments.extend(cp.fragments.iter().cloned());
            rows += cp.rows;
            files += cp.completed.len() as u64;
            failed.extend(cp.failed.iter().cloned());
        }
        // Failures are recorded before the commit they belong to, under the
        // commit's id, so a retry rewrites rather than repeats them.
        self.ledger.record(&self.job_id, &commit_id, &failed).await?;
        if fragments.is_empty() {
            if let Some(observe) = &self.observer {
                observe(&cps);
            }
            return Ok(());
        }
        let n_fragments = fragments.len() as u64;
        if let Some(guard) = &self.guard {
            guard().await?;
        }
        sluice_common::failpoint::hit("before_commit");
        let props = HashMap::from([
            (prop::JOB_ID.to_string(), self.job_id.clone()),
            (prop::ROWS.to_string(), rows.to_string()),
            (prop::FILES.to_string(), files.to_string()),
            (prop::FAILED.to_string(), failed.len().to_string()),
        ]);
        let committed =
            commit_append(&self.table, &self.dataset, &commit_id, self.known_version, fragments, props).await?;
        sluice_common::failpoint::hit("after_commit");
        tracing::info!(job_id = %self.job_id, %commit_id, version = committed.version, rows, files, fresh = committed.fresh, "committed");
        self.known_version = committed.version;
        self.dataset = committed.dataset;
        let p = &self.progress;
        JobProgress::add(&p.rows_committed, rows);
        metrics::counter!("sluice_commits_total").increment(1);
        metrics::counter!("sluice_rows_committed_total").increment(rows);
        metrics::counter!("sluice_files_committed_total").increment(files);
        JobProgress::add(&p.commits, 1);
        JobProgress::add(&p.fragments, n_fragments);
        p.version.store(committed.version, std::sync::atomic::Ordering::Relaxed);
        if let Some(observe) = &self.observer {
            observe(&cps);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::schema::{build_batch, FileRows, Kind, Row, SourceInfo};
    use sluice_common::storage::TableLocation;

    fn part(uri: &str, first: u32, n: u32, last: bool) -> FileRows {
        FileRows {
            source: SourceInfo { uri: uri.into(), size: 1, modified_ms: Some(1), content_hash: "h".into(), attributes: None },
            shard_id: "s".into(),
            kind: Kind::Text,
            rows: (first..first + n).map(|i| Row { chunk_index: i, mime_type: "text/plain".into(), ..Default::default() }).collect(),
            last,
        }
    }

    async fn checkpoint(table: &TableHandle, seq: u64, files: Vec<FileRows>, clean: bool) -> Checkpoint {
        let ds = Arc::new(table.open().await.unwrap());
        let rows = files.iter().map(|f| f.rows.len() as u64).sum();
        let batch = build_batch(&files, "job", 0).unwrap();
        let fragments = table.write_uncommitted(ds, batch).await.unwrap();
        Checkpoint { fragments, rows, clean, ..Checkpoint::empty("job", "w", seq) }
    }

    /// A reconciler committing every row, over a new table in `dir`.
    async fn reconciler(dir: &std::path::Path) -> (TableHandle, CommitReconciler, Arc<JobProgress>) {
        let location = TableLocation::new(dir.to_str().unwrap(), HashMap::new()).unwrap();
        let table = TableHandle::new(location.clone(), 4);
        let ds = table.open_or_create().await.unwrap();
        let progress = Arc::new(JobProgress::default());
        let ledger = ErrorLedger::new(&location).unwrap();
        let r = CommitReconciler::new(table.clone(), ds, "job".into(), 1, None, ledger, progress.clone());
        (table, r, progress)
    }

    #[tokio::test]
    async fn commits_end_only_at_clean_checkpoints_and_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let (table, mut r, progress) = reconciler(dir.path()).await;

        // File A spans two checkpoints: no commit may end between them.
        let cp1 = checkpoint(&table, 1, vec![part("file:///a", 0, 2, false)], false).await;
        let cp2 = checkpoint(&table, 2, vec![part("file:///a", 2, 1, true), part("file:///b", 0, 1, true)], true).await;
        assert!(r.absorb(cp1.clone()).await.unwrap().accepted);
        assert_eq!(table.open().await.unwrap().count_rows(None).await.unwrap(), 0, "A is incomplete: nothing committed");

        let gap = Checkpoint { seq: 5, ..cp2.clone() };
        assert!(!r.absorb(gap).await.unwrap().accepted, "a gap in the sequence is refused");
        assert!(r.absorb(cp2.clone()).await.unwrap().accepted);
        assert_eq!(table.open().await.unwrap().count_rows(None).await.unwrap(), 4, "A and B land together");

        let dup = r.absorb(cp2).await.unwrap();
        assert_eq!((dup.accepted, dup.reason.as_str()), (true, "duplicate"));
        r.commit_ready(true).await.unwrap();
        assert_eq!(table.open().await.unwrap().count_rows(None).await.unwrap(), 4, "a duplicate adds nothing");
        assert_eq!(JobProgress::get(&progress.commits), 1);
    }

    #[tokio::test]
    async fn a_fenced_worker_is_refused_and_its_uncommitted_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (table, mut r, progress) = reconciler(dir.path()).await;

        let data_files = || -> Vec<String> {
            std::fs::read_dir(dir.path().join("data")).map_or(vec![], |d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".lance")).collect())
        };
        // An open file: the checkpoint is held, not committed.
        let cp1 = checkpoint(&table, 1, vec![part("file:///a", 0, 2, false)], false).await;
        assert!(r.absorb(cp1).await.unwrap().accepted);
        assert_eq!(data_files().len(), 1);
        assert_eq!(JobProgress::get(&progress.rows_written), 2);

        r.fence("w".into());
        let cp2 = checkpoint(&table, 2, vec![part("file:///a", 2, 1, true)], true).await;
        let ack = r.absorb(cp2).await.unwrap();
        assert!(!ack.accepted && ack.stop, "a fenced worker is refused");
        assert_eq!(JobProgress::get(&progress.rows_written), 0, "its uncommitted rows no longer count");
        r.commit_ready(true).await.unwrap();
        assert_eq!(table.open().await.unwrap().count_rows(None).await.unwrap(), 0, "nothing of it is committed");
        // The held checkpoint's file is discarded (in the background); the
        // refused one's file is the worker's own orphan.
        let started = std::time::Instant::now();
        while data_files().len() != 1 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "files left: {:?}", data_files());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
