//! Embedded mode: the coordinator and one worker in this process, talking
//! through the same link traits cluster mode carries over gRPC.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_common::link::CoordinatorLink;
use sluice_common::settings::Settings;
use sluice_common::storage::TableLocation;
use sluice_common::{pb, Error, Result};
use sluice_worker::Worker;
use tokio::sync::{mpsc, oneshot};

use crate::job::run_job;
use crate::manifest::Inputs;
use crate::progress::{JobProgress, JobSummary};
use crate::reconciler::ReconcilerMsg;

/// Everything an embedded ingest needs.
#[derive(Debug, Clone)]
pub struct EmbeddedJob {
    pub job_id: Option<String>,
    pub table: TableLocation,
    pub inputs: Inputs,
    pub settings: Settings,
    pub max_errors: Option<u64>,
    pub shard_files: usize,
    pub shard_bytes: u64,
    /// Columns of per-file values; empty: inferred from the inputs.
    pub columns: Vec<pb::ColumnDef>,
    /// Executable serving `normalize-server`: media decoders run in child
    /// processes of it. `None` runs them in this process.
    pub normalizer_exe: Option<PathBuf>,
}

impl EmbeddedJob {
    pub fn new(table: TableLocation, inputs: Inputs, settings: Settings) -> Self {
        Self { job_id: None, table, inputs, settings, max_errors: None, shard_files: 256, shard_bytes: 1 << 30, columns: Vec::new(), normalizer_exe: None }
    }
}

/// The coordinator side of the in-process link.
struct InProcessCoordinator {
    tx: mpsc::Sender<ReconcilerMsg>,
}

#[async_trait]
impl CoordinatorLink for InProcessCoordinator {
    async fn publish_checkpoint(&self, checkpoint: pb::Checkpoint) -> Result<pb::CheckpointAck> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(ReconcilerMsg::Checkpoint(checkpoint, reply))
            .await
            .map_err(|_| Error::Internal("coordinator is gone".into()))?;
        rx.await.map_err(|_| Error::Internal("coordinator dropped the checkpoint".into()))?
    }
}

/// Run a whole job in this process. `progress` can be watched meanwhile.
pub async fn run_embedded(job: EmbeddedJob, progress: Arc<JobProgress>) -> Result<JobSummary> {
    let mut worker_slot: Option<Arc<Worker>> = None;
    let summary = run_job(
        &job,
        progress,
        |table, reconciler| {
            let mut worker = Worker::new("embedded-0", Arc::new(InProcessCoordinator { tx: reconciler }))
                .with_storage_limiter(table.limiter.clone());
            if let Some(exe) = &job.normalizer_exe {
                worker = worker.with_normalizer_processes(exe.clone());
            }
            let worker = Arc::new(worker);
            worker_slot = Some(worker.clone());
            worker
        },
        Default::default(),
    )
    .await?;
    let peak = worker_slot.map_or(0, |w| w.stats().normalizers.peak() as u64);
    Ok(JobSummary { peak_concurrent_normalizations: peak, ..summary })
}

