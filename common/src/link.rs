//! The coordinator <-> worker protocol as traits. Embedded mode implements them
//! with in-process channels; cluster mode implements them over gRPC. The
//! messages are the protocol's own (`sluice.v1`), so both carry the same data.

use async_trait::async_trait;

use crate::{pb, Result};

/// What a worker can ask of the coordinator.
#[async_trait]
pub trait CoordinatorLink: Send + Sync + 'static {
    /// Hand over one flush worth of uncommitted fragments and file outcomes.
    async fn publish_checkpoint(&self, checkpoint: pb::Checkpoint) -> Result<pb::CheckpointAck>;
}

/// What the coordinator can ask of a worker.
#[async_trait]
pub trait WorkerLink: Send + Sync + 'static {
    /// Queue a shard; waits while the worker's queue is full (backpressure).
    async fn assign_shard(&self, assignment: pb::ShardAssignment) -> Result<pb::AssignmentAck>;
    /// Take no more files of this job; files already being normalized finish.
    async fn cancel(&self, job_id: &str) -> Result<()>;
    /// Finish every assigned file, publish the last checkpoint, then return.
    async fn drain(&self) -> Result<()>;
}
