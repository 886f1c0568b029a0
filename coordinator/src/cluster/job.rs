//! A running job on the coordinator: its shard book (which shard is queued,
//! with which worker, finished, committed). The job runner queues shards
//! here; workers pull them; a dead worker's shards go back to the queue
//! under a new generation, minus the files already committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sluice_common::protocol::{Checkpoint, CheckpointAck, FileFailed, FileRef, ShardAssignment};
use sluice_common::settings::Settings;
use sluice_common::storage::TableLocation;
use sluice_common::{pb, Error, Result};
use tokio::sync::{mpsc, oneshot, Notify};

use super::watch::{JobWatch, Sample};
use crate::progress::{JobProgress, JobSummary};
use crate::reconciler::ReconcilerMsg;

/// Shards waiting for a worker at most; planning waits beyond that, so a
/// huge manifest is never held in memory.
const MAX_QUEUED_SHARDS: usize = 64;

/// Files waiting in queued shards at most (a shard is queued anyway when
/// none waits). Workers take one shard at a time, and planning refills the
/// queue as fast as it lists; a deeper queue only holds more of the
/// manifest in memory (~200 bytes a file: at 64 shards of 256 files, ~3.5
/// MB of a small-file job's peak that a job of 1,000 files never had).
const MAX_QUEUED_FILES: usize = 4096;

/// Poison files: a shard whose workers died this many times is split into
/// one-file shards, and a one-file shard whose workers died this many times
/// is quarantined (recorded as failed) instead of being retried forever.
/// High enough that workers killed for other reasons rarely trip it.
const LOSSES_BEFORE_SPLIT: u32 = 3;
const LOSSES_BEFORE_QUARANTINE: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
enum ShardState {
    Queued,
    Assigned(String),
    /// Finished in a checkpoint the coordinator holds, not yet committed.
    Finished(String),
}

#[derive(Debug)]
struct Shard {
    files: Vec<FileRef>,
    generation: u64,
    state: ShardState,
    /// Files of this shard already committed (or recorded as failed).
    committed: HashSet<String>,
    /// Workers lost while they held this shard.
    losses: u32,
}

#[derive(Debug, Default)]
struct Book {
    /// Shards not yet committed. Committed shards are forgotten.
    shards: HashMap<String, Shard>,
    queue: VecDeque<String>,
    total: u64,
    committed: u64,
}

/// Where a cluster job stands.
#[derive(Debug, Clone)]
pub enum Phase {
    Running,
    Done { state: pb::JobState, message: String },
}

pub struct ClusterJob {
    pub id: String,
    pub spec: pb::JobSpec,
    pub submitted: SystemTime,
    pub started: Instant,
    pub progress: Arc<JobProgress>,
    /// History, per-worker load and commits, for the dashboard.
    pub watch: JobWatch,
    /// Times a new leader took this job over and resumed it.
    pub takeovers: u32,
    table: TableLocation,
    settings: Settings,
    book: Mutex<Book>,
    phase: Mutex<Phase>,
    /// When the job ended.
    finished: Mutex<Option<Instant>>,
    cancelled: AtomicBool,
    /// Why a worker's pipeline for this job failed (the first one to).
    failure: Mutex<Option<String>>,
    /// Workers that stopped this job and published all they had.
    ended: Mutex<HashSet<String>>,
    /// What the job runner returned, until taken.
    outcome: Mutex<Option<Result<JobSummary>>>,
    reconciler: OnceLock<mpsc::Sender<ReconcilerMsg>>,
    /// Rung when a shard is queued (workers waiting in a poll wake up).
    work: Arc<Notify>,
    /// Rung when shards finish or the phase changes.
    changed: Notify,
}

impl ClusterJob {
    pub fn new(id: String, spec: pb::JobSpec, table: TableLocation, settings: Settings, work: Arc<Notify>) -> Self {
        Self {
            id,
            spec,
            submitted: SystemTime::now(),
            started: Instant::now(),
            progress: Arc::default(),
            watch: JobWatch::default(),
            takeovers: 0,
            table,
            settings,
            book: Mutex::default(),
            phase: Mutex::new(Phase::Running),
            finished: Mutex::default(),
            cancelled: AtomicBool::new(false),
            failure: Mutex::default(),
            ended: Mutex::default(),
            outcome: Mutex::default(),
            reconciler: OnceLock::new(),
            work,
            changed: Notify::new(),
        }
    }

    pub fn attach(&self, reconciler: mpsc::Sender<ReconcilerMsg>) {
        let _ = self.reconciler.set(reconciler);
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().clone()
    }

    /// Add the job's figures now to its history.
    pub fn sample(&self) {
        let p = &self.progress;
        self.watch.sample(Sample {
            seconds: self.elapsed().as_secs_f64(),
            files: p.files_finished(),
            failed: JobProgress::get(&p.files_failed),
            rows: JobProgress::get(&p.rows_committed),
            bytes: JobProgress::get(&p.bytes),
        });
    }

    /// How long the job ran (so far, while it runs).
    pub fn elapsed(&self) -> Duration {
        self.finished.lock().unwrap_or_else(Instant::now).duration_since(self.started)
    }

    pub fn set_done(&self, state: pb::JobState, message: String, outcome: Result<JobSummary>) {
        self.finished.lock().get_or_insert_with(Instant::now);
        self.sample();
        *self.outcome.lock() = Some(outcome);
        *self.phase.lock() = Phase::Done { state, message };
        self.changed.notify_waiters();
    }

    /// Wait until the job ended, then take what its runner returned (the
    /// summary, or why the job failed); `None` if already taken.
    pub async fn outcome(&self) -> Option<Result<JobSummary>> {
        loop {
            let changed = self.changed.notified();
            if !self.is_running() {
                return self.outcome.lock().take();
            }
            changed.await;
        }
    }

    /// A worker's pipeline for this job failed: the job stops and fails,
    /// committing only up to each worker's last clean checkpoint.
    pub fn fail(&self, reason: String) {
        self.failure.lock().get_or_insert(reason);
        self.changed.notify_waiters();
    }

    /// `worker_id` stopped this job and published everything it had.
    pub fn worker_ended(&self, worker_id: &str) {
        self.watch.ended(worker_id);
        self.ended.lock().insert(worker_id.to_string());
        self.changed.notify_waiters();
    }

    pub fn is_running(&self) -> bool {
        matches!(self.phase(), Phase::Running)
    }

    pub fn request_cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.progress.abort("cancelled");
        self.changed.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Workers must stop this job: it ended, or it is being stopped.
    pub fn stopping(&self) -> bool {
        !self.is_running() || self.is_cancelled() || self.progress.abort_reason().is_some() || self.failure.lock().is_some()
    }

    /// (total shards, committed shards)
    pub fn shard_counts(&self) -> (u64, u64) {
        let book = self.book.lock();
        (book.total, book.committed)
    }

    /// Shards `worker_id` holds (assigned, or finished and not committed).
    pub fn shards_held_by(&self, worker_id: &str) -> u32 {
        let book = self.book.lock();
        book.shards.values().filter(|s| matches!(&s.state, ShardState::Assigned(w) | ShardState::Finished(w) if w == worker_id)).count() as u32
    }

    /// Hand up to `n` queued shards to `worker_id`.
    pub fn take_shards(&self, worker_id: &str, n: usize) -> Vec<ShardAssignment> {
        if self.stopping() {
            return Vec::new();
        }
        let mut book = self.book.lock();
        let mut out = Vec::new();
        while out.len() < n {
            let Some(id) = book.queue.pop_front() else { break };
            let Some(shard) = book.shards.get_mut(&id) else { continue };
            shard.state = ShardState::Assigned(worker_id.to_string());
            // The book holds each file once, without its shard's id; the
            // worker reports every file under the shard it was handed in.
            let files = shard.files.iter().map(|f| FileRef { shard_id: id.clone(), ..f.clone() }).collect();
            out.push(ShardAssignment {
                job_id: self.id.clone(),
                shard_id: id.clone(),
                generation: shard.generation,
                table: self.table.clone(),
                settings: self.settings.clone(),
                files,
            });
            tracing::debug!(job_id = %self.id, shard_id = %id, %worker_id, generation = shard.generation, "shard assigned");
        }
        drop(book);
        self.watch.took(worker_id, out.len());
        if !out.is_empty() {
            // Planning may be waiting for room in the queue.
            self.changed.notify_waiters();
        }
        out
    }

    /// Check a checkpoint against the book: every shard it speaks of must be
    /// this worker's, in its current generation (fencing).
    pub fn check_generations(&self, cp: &Checkpoint) -> std::result::Result<(), String> {
        let book = self.book.lock();
        for (shard_id, generation) in &cp.shard_generations {
            let Some(shard) = book.shards.get(shard_id) else {
                return Err(format!("shard {shard_id} is not outstanding"));
            };
            let owner = match &shard.state {
                ShardState::Assigned(w) | ShardState::Finished(w) => Some(w.as_str()),
                ShardState::Queued => None,
            };
            if shard.generation != *generation || owner != Some(cp.worker_id.as_str()) {
                return Err(format!(
                    "shard {shard_id} generation {generation} from {} is stale (now generation {})",
                    cp.worker_id, shard.generation
                ));
            }
        }
        Ok(())
    }

    /// Hand a checkpoint to the job's reconciler.
    pub async fn publish(&self, cp: Checkpoint) -> Result<CheckpointAck> {
        let gone = || sluice_common::Error::Internal("the job's reconciler has stopped".into());
        let reconciler = self.reconciler.get().ok_or_else(gone)?;
        let (reply, answer) = oneshot::channel();
        reconciler.send(ReconcilerMsg::Checkpoint(Box::new(cp), reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// A checkpoint was accepted: note the shards it finished.
    pub fn absorbed(&self, cp: &Checkpoint) {
        self.watch.checkpoint(cp);
        let mut book = self.book.lock();
        for id in &cp.shards_finished {
            if let Some(shard) = book.shards.get_mut(id) {
                shard.state = ShardState::Finished(cp.worker_id.clone());
            }
        }
        drop(book);
        self.changed.notify_waiters();
    }

    /// A commit landed with these checkpoints.
    pub fn committed(&self, cps: &[Checkpoint]) {
        let fragments: usize = cps.iter().map(|c| c.fragments.len()).sum();
        if fragments > 0 {
            // The reconciler records the version before it calls this.
            let rows = cps.iter().map(|c| c.rows).sum();
            let files = cps.iter().map(|c| c.completed.len() as u64).sum();
            let failed = cps.iter().map(|c| c.failed.len() as u64).sum();
            let version = self.progress.version.load(Ordering::Relaxed);
            self.watch.committed(version, rows, files, failed, fragments as u64);
        }
        let mut book = self.book.lock();
        for cp in cps {
            for uri in cp.completed.iter().map(|c| (&c.shard_id, &c.uri)).chain(cp.failed.iter().map(|f| (&f.shard_id, &f.uri))) {
                if let Some(shard) = book.shards.get_mut(uri.0) {
                    shard.committed.insert(uri.1.clone());
                }
            }
            for id in &cp.shards_finished {
                if book.shards.remove(id).is_some() {
                    book.committed += 1;
                }
            }
        }
        drop(book);
        self.changed.notify_waiters();
    }

    /// `worker_id` is gone: fence it in the reconciler, then queue its
    /// shards again (new generation, without the files already committed).
    pub async fn worker_lost(&self, worker_id: &str) {
        self.watch.lost(worker_id);
        let holds = {
            let book = self.book.lock();
            book.shards.values().any(|s| matches!(&s.state, ShardState::Assigned(w) | ShardState::Finished(w) if w == worker_id))
        };
        if !holds {
            return;
        }
        if let Some(reconciler) = self.reconciler.get() {
            let (reply, done) = oneshot::channel();
            if reconciler.send(ReconcilerMsg::Fence { worker_id: worker_id.to_string(), reply }).await.is_ok() {
                let _ = done.await;
            }
        }
        let mut quarantined = Vec::new();
        let (requeued, split) = {
            let mut book = self.book.lock();
            let lost: Vec<String> = book
                .shards
                .iter()
                .filter(|(_, s)| matches!(&s.state, ShardState::Assigned(w) | ShardState::Finished(w) if w == worker_id))
                .map(|(id, _)| id.clone())
                .collect();
            let mut requeued = Vec::new();
            let mut split = 0;
            for id in lost {
                let Some(mut shard) = book.shards.remove(&id) else { continue };
                let committed = std::mem::take(&mut shard.committed);
                shard.files.retain(|f| !committed.contains(&f.uri));
                shard.generation += 1;
                shard.losses += 1;
                shard.state = ShardState::Queued;
                if shard.files.is_empty() {
                    book.committed += 1;
                } else if shard.files.len() == 1 && shard.losses >= LOSSES_BEFORE_QUARANTINE {
                    let file = &shard.files[0];
                    quarantined.push(FileFailed {
                        uri: file.uri.clone(),
                        shard_id: id.clone(),
                        kind: None,
                        reason: format!(
                            "quarantined: {} workers were lost while processing this file (it crashes or hangs them)",
                            shard.losses
                        ),
                    });
                    book.committed += 1;
                } else if shard.files.len() > 1 && shard.losses >= LOSSES_BEFORE_SPLIT {
                    // Find the culprit: one file per shard from now on.
                    split += 1;
                    book.committed += 1;
                    for (i, file) in std::mem::take(&mut shard.files).into_iter().enumerate() {
                        let single = format!("{id}/{i}");
                        let one = Shard { files: vec![file], generation: 1, state: ShardState::Queued, committed: HashSet::new(), losses: 0 };
                        book.shards.insert(single.clone(), one);
                        book.total += 1;
                        requeued.push(single);
                    }
                } else {
                    book.shards.insert(id.clone(), shard);
                    requeued.push(id);
                }
            }
            for id in requeued.iter().rev() {
                book.queue.push_front(id.clone());
            }
            (requeued, split)
        };
        if !quarantined.is_empty() {
            tracing::error!(job_id = %self.id, files = ?quarantined.iter().map(|f| &f.uri).collect::<Vec<_>>(), "poison files quarantined");
            metrics::counter!("sluice_files_quarantined_total").increment(quarantined.len() as u64);
            if let Some(reconciler) = self.reconciler.get() {
                let _ = reconciler.send(ReconcilerMsg::PlanningFailed(quarantined)).await;
            }
        }
        tracing::warn!(job_id = %self.id, %worker_id, shards = requeued.len(), split, "worker lost; its shards are queued again");
        metrics::counter!("sluice_shards_requeued_total").increment(requeued.len() as u64);
        self.work.notify_waiters();
        self.changed.notify_waiters();
    }

    /// Wait until something about this job changed, or `timeout` passed.
    pub async fn wait_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    #[cfg(test)]
    fn outstanding(&self) -> bool {
        let book = self.book.lock();
        book.shards.values().any(|s| !matches!(s.state, ShardState::Finished(_)))
    }
}

impl ClusterJob {
    /// Queue a shard (its first generation) for the workers; waits while
    /// [`MAX_QUEUED_SHARDS`] or [`MAX_QUEUED_FILES`] are queued
    /// (backpressure on planning). False if the job is stopping.
    pub async fn queue_shard(&self, shard_id: String, files: Vec<FileRef>) -> bool {
        loop {
            let changed = self.changed.notified();
            if self.stopping() {
                return false;
            }
            {
                let mut book = self.book.lock();
                let queued_files: usize = book.queue.iter().filter_map(|id| book.shards.get(id)).map(|s| s.files.len()).sum();
                if book.queue.is_empty() || (book.queue.len() < MAX_QUEUED_SHARDS && queued_files < MAX_QUEUED_FILES) {
                    let shard = Shard {
                        files,
                        generation: 1,
                        state: ShardState::Queued,
                        committed: HashSet::new(),
                        losses: 0,
                    };
                    book.shards.insert(shard_id.clone(), shard);
                    book.queue.push_back(shard_id);
                    book.total += 1;
                    break;
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = self.progress.aborted() => {}
            }
        }
        self.work.notify_waiters();
        true
    }

    /// Wait until every queued shard finished in a checkpoint the
    /// reconciler holds. A job being stopped waits instead until every
    /// worker holding its shards has flushed what it had and said so (or
    /// was declared dead). A failed worker pipeline fails the drain.
    pub async fn drain(&self) -> Result<()> {
        loop {
            let changed = self.changed.notified();
            if let Some(reason) = self.failure.lock().clone() {
                return Err(Error::Internal(reason));
            }
            let stopping = self.is_cancelled() || self.progress.abort_reason().is_some();
            let done = {
                let book = self.book.lock();
                let ended = self.ended.lock();
                let busy = |s: &Shard| match &s.state {
                    ShardState::Queued | ShardState::Finished(_) => false,
                    ShardState::Assigned(w) => !ended.contains(w),
                };
                match stopping {
                    true => !book.shards.values().any(busy),
                    false => book.shards.values().all(|s| matches!(s.state, ShardState::Finished(_))),
                }
            };
            if done {
                return Ok(());
            }
            tokio::select! {
                _ = changed => {}
                _ = self.progress.aborted(), if !stopping => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::protocol::FileCompleted;
    use sluice_common::schema::Kind;

    fn file(uri: &str) -> FileRef {
        FileRef { uri: uri.into(), size: 1, ..Default::default() }
    }

    fn job() -> ClusterJob {
        let table = TableLocation::new("file:///t", HashMap::new()).unwrap();
        ClusterJob::new("j".into(), pb::JobSpec::default(), table, Settings::default(), Arc::new(Notify::new()))
    }

    #[tokio::test]
    async fn a_lost_workers_shard_is_requeued_without_committed_files_under_a_new_generation() {
        let job = job();
        assert!(job.queue_shard("s1".into(), vec![file("a"), file("b"), file("c")]).await);
        let got = job.take_shards("w1", 4);
        assert_eq!(got.len(), 1);
        assert!(job.take_shards("w2", 4).is_empty(), "a shard goes to one worker");

        // w1 had file a committed, then died.
        let cp = Checkpoint {
            completed: vec![FileCompleted { uri: "a".into(), shard_id: "s1".into(), kind: Kind::Text, rows: 1, bytes: 1 }],
            shard_generations: HashMap::from([("s1".to_string(), 1)]),
            ..Checkpoint::empty("j", "w1", 1)
        };
        assert!(job.check_generations(&cp).is_ok());
        job.committed(std::slice::from_ref(&cp));
        job.worker_lost("w1").await;

        let again = job.take_shards("w2", 4);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].generation, 2);
        let uris: Vec<&str> = again[0].files.iter().map(|f| f.uri.as_str()).collect();
        assert_eq!(uris, ["b", "c"], "committed files are not redone");
        assert!(job.check_generations(&cp).is_err(), "the old generation is fenced");
        let fresh = Checkpoint { worker_id: "w2".into(), shard_generations: HashMap::from([("s1".to_string(), 2)]), ..cp };
        assert!(job.check_generations(&fresh).is_ok());
    }

    #[tokio::test]
    async fn planning_waits_for_room_by_files_and_a_taken_shard_makes_room() {
        let job = Arc::new(job());
        let files = |shard: usize, n: usize| (0..n).map(|i| file(&format!("s{shard}/{i}"))).collect::<Vec<_>>();
        // A shard larger than the bound still goes into an empty queue.
        assert!(job.queue_shard("big".into(), files(0, MAX_QUEUED_FILES + 1)).await);
        let queued = tokio::spawn({
            let job = job.clone();
            async move { job.queue_shard("next".into(), files(1, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!queued.is_finished(), "the queue already holds more files than the bound");
        let got = job.take_shards("w", 1);
        assert_eq!(got[0].files.len(), MAX_QUEUED_FILES + 1);
        assert!(got[0].files.iter().all(|f| f.shard_id == "big"), "files carry the id of the shard they were handed in");
        assert!(tokio::time::timeout(Duration::from_secs(5), queued).await.unwrap().unwrap(), "taking a shard wakes planning");
        assert_eq!(job.take_shards("w", 1)[0].files[0].shard_id, "next");
    }

    #[tokio::test]
    async fn a_shard_that_keeps_losing_workers_is_split_and_its_poison_file_quarantined() {
        let job = job();
        assert!(job.queue_shard("s".into(), vec![file("a"), file("poison"), file("c")]).await);
        for n in 0..LOSSES_BEFORE_SPLIT {
            let got = job.take_shards(&format!("w{n}"), 1);
            assert_eq!(got[0].files.len(), 3, "whole until the split");
            job.worker_lost(&format!("w{n}")).await;
        }
        // Now one file per shard.
        let singles = job.take_shards("x", 10);
        assert_eq!(singles.len(), 3);
        assert!(singles.iter().all(|s| s.files.len() == 1));
        let poison = singles.iter().find(|s| s.files[0].uri == "poison").unwrap().shard_id.clone();
        // The innocent files finish and are committed; the poison one kills its worker.
        let innocent: Vec<String> = singles.iter().map(|s| s.shard_id.clone()).filter(|id| *id != poison).collect();
        job.committed(&[Checkpoint { shards_finished: innocent, ..Checkpoint::empty("j", "x", 1) }]);
        job.worker_lost("x").await;
        for n in 1..LOSSES_BEFORE_QUARANTINE {
            let worker = format!("y{n}");
            let got = job.take_shards(&worker, 10);
            assert_eq!(got.len(), 1, "round {n}: {got:?}");
            assert_eq!(got[0].shard_id, poison);
            job.worker_lost(&worker).await;
        }
        assert!(job.take_shards("z", 10).is_empty(), "quarantined, not retried");
        assert!(!job.outstanding(), "nothing left: the job can finish");
    }
}
