//! The worker handle: receives assignments, runs one pipeline per job, and
//! feeds files into the pipeline's bounded queue (which is what makes
//! `assign_shard` wait when the worker is busy).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use ractor::{Actor, ActorRef};
use sluice_common::link::{CoordinatorLink, WorkerLink};
use sluice_common::settings::Settings;
use sluice_common::storage::{StorageLimiter, TableLocation};
use sluice_common::table::TableHandle;
use sluice_common::{pb, Error, Result};
use std::time::Duration;

use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, Mutex};

use crate::actors::pipeline::{PipelineArgs, PipelineMsg};
use crate::actors::{FileTask, PipelineStats, ShardPipeline};

struct RunningJob {
    pipeline: ActorRef<PipelineMsg>,
    queue: mpsc::Sender<FileTask>,
    stop: Arc<AtomicBool>,
}

/// One worker process's side of the protocol.
pub struct Worker {
    id: String,
    link: Arc<dyn CoordinatorLink>,
    jobs: Mutex<HashMap<String, RunningJob>>,
    stats: Arc<PipelineStats>,
    limiter: Option<StorageLimiter>,
    isolation: Option<std::path::PathBuf>,
    flush_when_idle: bool,
}

impl Worker {
    pub fn new(id: impl Into<String>, link: Arc<dyn CoordinatorLink>) -> Self {
        Self {
            id: id.into(),
            link,
            jobs: Mutex::default(),
            stats: Arc::default(),
            limiter: None,
            isolation: None,
            flush_when_idle: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Flush as soon as the assigned shards are all done (cluster workers),
    /// so finished shards are reported without waiting for more rows.
    pub fn with_flush_when_idle(mut self) -> Self {
        self.flush_when_idle = true;
        self
    }

    /// Drop one job at once: nothing more is published; what was not yet
    /// committed is redone elsewhere.
    pub async fn abandon_job(&self, job_id: &str) {
        if let Some(job) = self.jobs.lock().await.remove(job_id) {
            job.stop.store(true, Ordering::SeqCst);
            job.pipeline.kill();
        }
    }

    /// Jobs this worker is running.
    pub async fn job_ids(&self) -> Vec<String> {
        self.jobs.lock().await.keys().cloned().collect()
    }

    async fn drain_one(job_id: &str, job: RunningJob) -> Result<()> {
        drop(job.queue);
        let result = job.pipeline.call(PipelineMsg::Drain, None).await.map_err(|e| Error::Internal(e.to_string()))?;
        match result {
            ractor::rpc::CallResult::Success(Ok(())) => Ok(()),
            ractor::rpc::CallResult::Success(Err(e)) => Err(Error::Internal(format!("job {job_id}: {e}"))),
            _ => Err(Error::Internal(format!("job {job_id}: pipeline did not answer the drain"))),
        }
    }

    /// Normalize media (video, PDF) in child processes of `exe`
    /// (`exe normalize-server`), so a crashing or hanging decoder costs one
    /// file, not the worker.
    pub fn with_normalizer_processes(mut self, exe: std::path::PathBuf) -> Self {
        self.isolation = Some(exe);
        self
    }

    /// Share one storage limiter with the rest of the process, so
    /// `storage_concurrency` bounds every request the process makes.
    pub fn with_storage_limiter(mut self, limiter: StorageLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }


    async fn start_job(&self, a: &pb::ShardAssignment) -> Result<RunningJob> {
        let settings = Settings::try_from(&a.settings.unwrap_or_default())?;
        let table_ref = a.table.clone().ok_or_else(|| Error::InvalidInput("assignment without a table".into()))?;
        let mut options = table_ref.storage_options;
        sluice_common::storage::complete_options(&table_ref.uri, &mut options);
        let location = TableLocation::new(&table_ref.uri, options)?;
        let table = match &self.limiter {
            Some(limiter) => TableHandle::with_limiter(location, limiter.clone()),
            None => TableHandle::new(location, settings.storage_concurrency),
        };
        let dataset = Arc::new(table.open().await?);
        let (tx, rx) = mpsc::channel(settings.normalization_workers as usize);
        let stop = Arc::new(AtomicBool::new(false));
        let args = PipelineArgs {
            table: table.clone(),
            dataset,
            settings: Arc::new(settings),
            job_id: a.job_id.clone(),
            worker_id: self.id.clone(),
            link: self.link.clone(),
            queue: rx,
            stop: stop.clone(),
            stats: self.stats.clone(),
            isolation: self.isolation.clone(),
            flush_when_idle: self.flush_when_idle,
        };
        let (pipeline, _) = Actor::spawn(None, ShardPipeline, args)
            .await
            .map_err(|e| Error::Internal(format!("cannot start pipeline: {e}")))?;
        tracing::info!(job_id = %a.job_id, worker_id = %self.id, "pipeline started");
        Ok(RunningJob { pipeline, queue: tx, stop })
    }
}

#[async_trait]
impl WorkerLink for Worker {
    async fn assign_shard(&self, a: pb::ShardAssignment) -> Result<pb::AssignmentAck> {
        let (pipeline, queue, stop) = {
            let mut jobs = self.jobs.lock().await;
            if !jobs.contains_key(&a.job_id) {
                let job = self.start_job(&a).await?;
                jobs.insert(a.job_id.clone(), job);
            }
            let job = &jobs[&a.job_id];
            (job.pipeline.clone(), job.queue.clone(), job.stop.clone())
        };
        if stop.load(Ordering::SeqCst) {
            return Ok(pb::AssignmentAck { accepted: false, reason: "worker is stopping this job".into() });
        }
        let files = a.files.len();
        pipeline
            .call(|reply| PipelineMsg::ShardStarted { shard_id: a.shard_id.clone(), generation: a.generation, files, reply }, None)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::debug!(job_id = %a.job_id, shard_id = %a.shard_id, files, "shard assigned");
        for file in a.files {
            let mut task = FileTask { file };
            // Wait for room, but notice a pipeline that stopped taking files
            // (failed actors, or the coordinator said stop) instead of
            // waiting on a queue nobody drains.
            loop {
                if stop.load(Ordering::SeqCst) {
                    return Ok(pb::AssignmentAck { accepted: false, reason: "worker stopped taking files".into() });
                }
                match queue.send_timeout(task, Duration::from_millis(200)).await {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(t)) => task = t,
                    Err(SendTimeoutError::Closed(_)) => return Err(Error::Internal("pipeline queue closed".into())),
                }
            }
        }
        Ok(pb::AssignmentAck { accepted: true, reason: String::new() })
    }

    async fn cancel(&self, job_id: &str) -> Result<()> {
        if let Some(job) = self.jobs.lock().await.get(job_id) {
            job.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn drain(&self) -> Result<()> {
        let jobs: Vec<_> = self.jobs.lock().await.drain().collect();
        for (job_id, job) in jobs {
            Self::drain_one(&job_id, job).await?;
        }
        Ok(())
    }
}
