//! Checkpoint publisher: receives fragment-write results in any order and
//! publishes them to the coordinator strictly in sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_common::protocol::CoordinatorApi;
use lance_table::format::Fragment;
use sluice_common::protocol::{Checkpoint, FileCompleted, FileFailed, FlushReason};

use crate::PipelineError;
use tokio_util::sync::CancellationToken;

/// What a flush produced, apart from the fragments themselves.
#[derive(Debug, Clone)]
pub struct CheckpointDraft {
    pub seq: u64,
    pub rows: u64,
    pub bytes: u64,
    pub completed: Vec<FileCompleted>,
    pub failed: Vec<FileFailed>,
    pub clean: bool,
    pub shards_finished: Vec<String>,
    pub shard_generations: std::collections::HashMap<String, u64>,
    /// Why the flush that closed the fragment happened.
    pub reason: FlushReason,
    /// The flushes whose rows the fragment holds, by reason.
    pub flushes: std::collections::HashMap<FlushReason, u32>,
}

pub enum PublisherMsg {
    Written { draft: Box<CheckpointDraft>, result: Result<Vec<Fragment>, PipelineError> },
    /// Reply once everything received so far is published (or failed).
    Drain(RpcReplyPort<Result<(), PipelineError>>),
}

pub struct CheckpointPublisher {
    pub job_id: String,
    pub worker_id: String,
    pub api: Arc<dyn CoordinatorApi>,
    /// Cancelled to stop the job's intake of files.
    pub stop: CancellationToken,
    /// Cancelled when the coordinator refuses a checkpoint for good (this
    /// worker was fenced) or cannot be reached: the session is over.
    pub fenced: CancellationToken,
    /// Told at once when a checkpoint is lost, so the job stops.
    pub failed: tokio::sync::mpsc::UnboundedSender<PipelineError>,
}

/// A flush's draft and its fragment write's outcome.
type Written = (Box<CheckpointDraft>, Result<Vec<Fragment>, PipelineError>);

#[derive(Default)]
pub struct PublisherState {
    next: u64,
    waiting: BTreeMap<u64, Written>,
    error: Option<PipelineError>,
}

impl Actor for CheckpointPublisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<PublisherState, ActorProcessingErr> {
        Ok(PublisherState { next: 1, ..Default::default() })
    }

    async fn handle(&self, _: ActorRef<Self::Msg>, msg: Self::Msg, st: &mut PublisherState) -> Result<(), ActorProcessingErr> {
        match msg {
            PublisherMsg::Written { draft, result } => {
                st.waiting.insert(draft.seq, (draft, result));
                while let Some((draft, result)) = st.waiting.remove(&st.next) {
                    st.next += 1;
                    if st.error.is_some() {
                        continue;
                    }
                    match result {
                        Ok(fragments) => {
                            if let Err(e) = self.publish(*draft, fragments).await {
                                st.error = Some(e);
                            }
                        }
                        Err(e) => {
                            // The job cannot go on without these rows: the
                            // coordinator stops it at once.
                            let _ = self.failed.send(e.clone());
                            st.error = Some(e);
                        }
                    }
                    if st.error.is_some() {
                        // Nothing after a lost checkpoint may be published:
                        // the coordinator must see checkpoints without gaps.
                        self.stop.cancel();
                    }
                }
            }
            PublisherMsg::Drain(reply) => {
                let _ = reply.send(match &st.error {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                });
            }
        }
        Ok(())
    }
}

impl CheckpointPublisher {
    async fn publish(&self, d: CheckpointDraft, fragments: Vec<Fragment>) -> Result<(), PipelineError> {
        let cp = Checkpoint {
            job_id: self.job_id.clone(),
            worker_id: self.worker_id.clone(),
            seq: d.seq,
            fragments,
            rows: d.rows,
            bytes: d.bytes,
            completed: d.completed,
            failed: d.failed,
            clean: d.clean,
            shards_finished: d.shards_finished,
            shard_generations: d.shard_generations,
            flush_reason: Some(d.reason),
            flushes: d.flushes,
        };
        let ack = match self.api.publish_checkpoint(cp).await {
            Ok(ack) => ack,
            Err(e) => {
                self.fenced.cancel();
                return Err(PipelineError::Publish { seq: d.seq, reason: e.to_string() });
            }
        };
        if ack.stop {
            self.stop.cancel();
            if !ack.accepted {
                self.fenced.cancel();
            }
        }
        if !ack.accepted {
            return Err(PipelineError::Publish { seq: d.seq, reason: format!("refused: {}", ack.reason) });
        }
        Ok(())
    }
}
