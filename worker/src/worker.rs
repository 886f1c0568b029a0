//! The worker handle: receives assignments, runs one pipeline per job, and
//! feeds files into the pipeline's bounded queue (which is what makes
//! `assign_shard` wait when the worker is busy).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use sluice_common::protocol::{CoordinatorApi, JobEnded, ShardAssignment};
use sluice_common::storage::StorageLimiter;
use sluice_common::table::TableHandle;
use sluice_common::{Error, Result};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::actors::pipeline::{PipelineArgs, PipelineMsg};
use crate::actors::{FileTask, PipelineStats, ShardPipeline};

struct RunningJob {
    pipeline: ActorRef<PipelineMsg>,
    queue: mpsc::Sender<FileTask>,
    /// Cancelled when the job takes no more files: told to stop, failed,
    /// or the session ended.
    stop: CancellationToken,
    /// Cancelled to drop the job's files in flight at once.
    abandon: CancellationToken,
}

/// One worker session's jobs.
pub struct Worker {
    id: String,
    api: Arc<dyn CoordinatorApi>,
    jobs: Mutex<HashMap<String, RunningJob>>,
    stats: Arc<PipelineStats>,
    limiter: Option<StorageLimiter>,
    isolation: Option<crate::isolation::Normalizers>,
    /// Cancelled when the session ends; every job's `stop` is a child of it.
    session: CancellationToken,
    /// Cancelled by a pipeline when the coordinator refuses this worker's
    /// checkpoints for good or cannot be reached: the session must end.
    fenced: CancellationToken,
}

impl Worker {
    pub fn new(id: impl Into<String>, api: Arc<dyn CoordinatorApi>, session: CancellationToken, fenced: CancellationToken) -> Self {
        Self {
            id: id.into(),
            api,
            jobs: Mutex::default(),
            stats: Arc::default(),
            limiter: None,
            isolation: None,
            session,
            fenced,
        }
    }

    /// Normalize media (video, audio, PDF) in child processes of `exes`,
    /// so a crashing or hanging decoder costs one file, not the worker.
    /// Without them, everything is normalized in this process, which then
    /// needs FFmpeg of its own ([`crate::normalize::install_ffmpeg`]) for
    /// video and audio.
    pub fn with_normalizer_processes(mut self, exes: Option<crate::isolation::Normalizers>) -> Self {
        self.isolation = exes;
        self
    }

    /// Share one storage limiter with the rest of the process, so
    /// `storage_concurrency` bounds every request the process makes.
    pub fn with_storage_limiter(mut self, limiter: Option<StorageLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Count into these statistics (shared across sessions).
    pub fn with_stats(mut self, stats: Arc<PipelineStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Drop one job at once: nothing more is published; what was not yet
    /// committed is redone elsewhere.
    pub async fn abandon_job(&self, job_id: &str) {
        if let Some(job) = self.jobs.lock().await.remove(job_id) {
            job.stop.cancel();
            job.abandon.cancel();
            job.pipeline.kill();
        }
    }

    /// Stop one job cleanly: take no more files, finish the ones queued,
    /// publish them, then tell the coordinator this worker is done with it
    /// (or why its pipeline failed).
    pub async fn stop_job(&self, job_id: &str) {
        let Some(job) = self.jobs.lock().await.remove(job_id) else { return };
        job.stop.cancel();
        drop(job.queue);
        let error = match job.pipeline.call(PipelineMsg::Drain, None).await {
            Ok(ractor::rpc::CallResult::Success(drained)) => {
                tracing::info!(%job_id, normalizers = ?drained.normalizers, flusher = ?drained.flusher, "job drained");
                drained.result().err().map(|e| e.to_string()).unwrap_or_default()
            }
            Ok(_) => "the pipeline did not answer the drain".into(),
            Err(e) => format!("the pipeline is gone: {e}"),
        };
        let error = (!error.is_empty()).then_some(error);
        if let Some(error) = &error {
            tracing::error!(%job_id, %error, "job stopped with an error");
        }
        let ended = JobEnded { job_id: job_id.to_string(), worker_id: self.id.clone(), error };
        if let Err(e) = self.api.end_job(ended).await {
            tracing::warn!(%job_id, error = %e, "cannot report the job's end");
        }
    }

    /// Jobs this worker is running.
    pub async fn job_ids(&self) -> Vec<String> {
        self.jobs.lock().await.keys().cloned().collect()
    }

    async fn start_job(&self, a: &ShardAssignment) -> Result<RunningJob> {
        let settings = a.settings.clone();
        let location = a.table.clone();
        let table = match &self.limiter {
            Some(limiter) => TableHandle::with_limiter(location, limiter.clone()),
            None => TableHandle::new(location, settings.storage_concurrency),
        }
        .for_writing();
        let dataset = Arc::new(table.open().await?);
        let (tx, rx) = mpsc::channel(settings.normalization_workers as usize);
        let stop = self.session.child_token();
        let abandon = CancellationToken::new();
        let (failed, mut failures) = mpsc::unbounded_channel();
        let args = PipelineArgs {
            table: table.clone(),
            dataset,
            settings: Arc::new(settings),
            job_id: a.job_id.clone(),
            worker_id: self.id.clone(),
            api: self.api.clone(),
            queue: rx,
            stop: stop.clone(),
            fenced: self.fenced.clone(),
            abandon: abandon.clone(),
            failed,
            stats: self.stats.clone(),
            isolation: self.isolation.clone(),
        };
        let (pipeline, _) = Actor::spawn(None, ShardPipeline, args)
            .await
            .map_err(|e| Error::Internal(format!("cannot start pipeline: {e}")))?;
        // A failed pipeline is reported at once, so the coordinator stops
        // the job instead of waiting for shards that will not finish.
        let (api, job_id, worker_id, intake) = (self.api.clone(), a.job_id.clone(), self.id.clone(), stop.clone());
        tokio::spawn(async move {
            // The first failure is the cause; later ones follow from it.
            if let Some(error) = failures.recv().await {
                intake.cancel();
                let ended = JobEnded { job_id: job_id.clone(), worker_id, error: Some(error.to_string()) };
                if let Err(e) = api.end_job(ended).await {
                    tracing::warn!(%job_id, error = %e, "cannot report the pipeline's failure");
                }
            }
        });
        tracing::info!(job_id = %a.job_id, worker_id = %self.id, "pipeline started");
        Ok(RunningJob { pipeline, queue: tx, stop, abandon })
    }

    /// Queue a shard's files; waits while the pipeline's queue is full.
    /// `Ok(Some(reason))`: the shard was not (wholly) taken, because the
    /// job is stopping here; the coordinator hands it out again.
    pub async fn assign_shard(&self, a: ShardAssignment) -> Result<Option<&'static str>> {
        let (pipeline, queue, stop) = {
            let mut jobs = self.jobs.lock().await;
            if !jobs.contains_key(&a.job_id) {
                let job = self.start_job(&a).await?;
                jobs.insert(a.job_id.clone(), job);
            }
            let job = &jobs[&a.job_id];
            (job.pipeline.clone(), job.queue.clone(), job.stop.clone())
        };
        if stop.is_cancelled() {
            return Ok(Some("worker is stopping this job"));
        }
        let files = a.files.len();
        pipeline
            .call(|reply| PipelineMsg::ShardStarted { shard_id: a.shard_id.clone(), generation: a.generation, files, reply }, None)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::debug!(job_id = %a.job_id, shard_id = %a.shard_id, files, "shard assigned");
        for file in a.files {
            // Wait for room, unless the pipeline stops taking files (a
            // failed actor, or the coordinator said stop).
            tokio::select! {
                sent = queue.send(FileTask { file }) => {
                    if sent.is_err() {
                        return Err(Error::Internal("pipeline queue closed".into()));
                    }
                }
                _ = stop.cancelled() => {
                    return Ok(Some("worker stopped taking files"));
                }
            }
        }
        Ok(None)
    }
}
