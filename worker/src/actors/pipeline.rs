//! ShardPipeline: the supervisor of one job's actors on a worker. It spawns
//! the publisher, the flusher and the normalizer pool (`normalization_workers`
//! files at once), linked to itself. A child that fails marks the pipeline
//! failed, stops the intake of files and reports the failure at once (the
//! coordinator then stops the job, committing only up to the last clean
//! checkpoint); a later drain reports it too. Nothing is lost by that:
//! uncommitted files are redone.

use std::sync::Arc;

use lance::Dataset;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sluice_common::protocol::CoordinatorApi;
use sluice_common::settings::Settings;
use sluice_common::table::TableHandle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::flusher::{Flusher, FlusherMsg};
use super::normalizer::{BusyGauge, FileTask, NormalizerPool};
use super::publisher::CheckpointPublisher;
use crate::PipelineError;

pub enum PipelineMsg {
    /// Tell the flusher a shard's files are coming; replies once it knows.
    ShardStarted { shard_id: String, generation: u64, files: usize, reply: RpcReplyPort<()> },
    /// The queue is closed: finish every file, flush, publish, then reply
    /// how each part ended.
    Drain(RpcReplyPort<Drained>),
}

/// How each part of a pipeline ended when it drained.
#[derive(Debug, Clone)]
pub struct Drained {
    /// The normalizer pool: every file normalized (or recorded as failed).
    pub normalizers: Result<(), PipelineError>,
    /// The flusher and the publisher behind it: everything written and
    /// published. Not asked (and so the pool's error) when the pool failed.
    pub flusher: Result<(), PipelineError>,
}

impl Drained {
    /// The first failure, if any.
    pub fn result(self) -> Result<(), PipelineError> {
        self.normalizers.and(self.flusher)
    }
}

pub struct PipelineArgs {
    pub table: TableHandle,
    pub dataset: Arc<Dataset>,
    pub settings: Arc<Settings>,
    pub job_id: String,
    pub worker_id: String,
    pub api: Arc<dyn CoordinatorApi>,
    pub queue: mpsc::Receiver<FileTask>,
    /// Cancelled to stop the intake of files.
    pub stop: CancellationToken,
    /// Cancelled when the coordinator refuses this worker's checkpoints.
    pub fenced: CancellationToken,
    /// Cancelled to drop the job at once (files in flight included).
    pub abandon: CancellationToken,
    /// Failures of a child or of a checkpoint, as they happen.
    pub failed: mpsc::UnboundedSender<PipelineError>,
    pub stats: Arc<PipelineStats>,
    /// Run media normalizers in child processes of these executables.
    pub isolation: Option<crate::isolation::Normalizers>,
}

/// Observations a pipeline exposes (for summaries, tests and metrics).
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub normalizers: Arc<BusyGauge>,
    /// Files cut in normalizer processes with FFmpeg at once.
    pub media_normalizers: Arc<BusyGauge>,
    /// PDF processes at work at once (a big PDF's helpers too).
    pub pdf_normalizers: Arc<BusyGauge>,
    /// Bytes of rows held against the row budget.
    pub rows_in_flight: Arc<super::budget::BudgetUsage>,
}

pub struct ShardPipeline;

pub struct PipelineState {
    flusher: ActorRef<FlusherMsg>,
    /// The normalizer pool; it ends when the queue is closed and drained.
    normalizers: Option<JoinHandle<Result<(), PipelineError>>>,
    abandon: CancellationToken,
    failure: Option<PipelineError>,
    stop: CancellationToken,
    failed: mpsc::UnboundedSender<PipelineError>,
}

impl Actor for ShardPipeline {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = PipelineArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, a: PipelineArgs) -> Result<PipelineState, ActorProcessingErr> {
        let publisher = CheckpointPublisher {
            job_id: a.job_id.clone(),
            worker_id: a.worker_id.clone(),
            api: a.api.clone(),
            stop: a.stop.clone(),
            fenced: a.fenced.clone(),
            failed: a.failed.clone(),
        };
        let (publisher, _) = Actor::spawn_linked(None, publisher, (), myself.get_cell()).await?;
        let budget = super::budget::RowBudget::new(a.settings.memory_budget_bytes, a.stats.rows_in_flight.clone());
        let flusher = Flusher {
            budget: budget.clone(),
            settings: a.settings.clone(),
            table: a.table.clone(),
            dataset: a.dataset.clone(),
            job_id: a.job_id.clone(),
            publisher,
        };
        let (flusher, _) = Actor::spawn_linked(None, flusher, (), myself.get_cell()).await?;
        let pool = NormalizerPool {
            settings: a.settings.clone(),
            isolation: a.isolation.clone(),
            sink: super::normalizer::Sink { flusher: flusher.clone(), budget },
            busy: a.stats.normalizers.clone(),
            media_busy: a.stats.media_normalizers.clone(),
            pdf_busy: a.stats.pdf_normalizers.clone(),
        };
        let normalizers = tokio::spawn(pool.run(a.queue, a.abandon.clone(), a.failed.clone()));
        Ok(PipelineState {
            flusher,
            normalizers: Some(normalizers),
            abandon: a.abandon,
            failure: None,
            stop: a.stop,
            failed: a.failed,
        })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, st: &mut PipelineState) -> Result<(), ActorProcessingErr> {
        match msg {
            PipelineMsg::ShardStarted { shard_id, generation, files, reply } => {
                st.flusher.send_message(FlusherMsg::ShardStarted { shard_id, generation, files })?;
                let _ = reply.send(());
            }
            PipelineMsg::Drain(reply) => {
                let normalizers = match st.normalizers.take() {
                    Some(pool) => pool.await.unwrap_or_else(|e| Err(PipelineError::Gone(format!("the normalizer pool: {e}")))),
                    None => Ok(()),
                };
                // A flusher or publisher that failed before: that is how it ended.
                let flusher = match (&normalizers, st.failure.clone()) {
                    (_, Some(e)) => Err(e),
                    (Err(e), None) => Err(e.clone()),
                    (Ok(()), None) => match st.flusher.call(FlusherMsg::Drain, None).await {
                        Ok(ractor::rpc::CallResult::Success(r)) => r,
                        Ok(_) => Err(PipelineError::Gone("the flusher did not answer".into())),
                        Err(e) => Err(PipelineError::Gone(format!("the flusher is gone: {e}"))),
                    },
                };
                let _ = reply.send(Drained { normalizers, flusher });
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, st: &mut PipelineState) -> Result<(), ActorProcessingErr> {
        // Stopped without a drain: nothing of this pipeline runs on.
        st.abandon.cancel();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = evt {
            tracing::error!(actor = %who.get_id(), error = %err, "pipeline actor failed");
            let failure = st.failure.get_or_insert_with(|| PipelineError::Actor(err.to_string())).clone();
            st.stop.cancel();
            let _ = st.failed.send(failure);
        }
        Ok(())
    }
}
