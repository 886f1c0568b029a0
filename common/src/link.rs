//! The worker protocol: what a worker asks of the coordinator. Workers pull:
//! they register, poll for shards (the poll is also their heartbeat), publish
//! checkpoints in order and say when they are done with a job.
//!
//! There are two transports and one protocol. Over the network the worker
//! calls the coordinator's `sluice.v1.CoordinatorService` through gRPC; in one
//! process (`sluice ingest`) it calls the coordinator directly through this
//! trait. Either way the same shard book, generations and fencing decide,
//! so every embedded run exercises what a cluster does.

use async_trait::async_trait;

use crate::{pb, Result};

#[async_trait]
pub trait CoordinatorApi: Send + Sync + 'static {
    /// Start an incarnation under `req.worker_id`.
    async fn register(&self, req: pb::RegisterWorkerRequest) -> Result<pb::RegisterWorkerResponse>;
    /// Heartbeat and work request: shards to take, jobs to stop.
    async fn poll(&self, req: pb::PollRequest) -> Result<pb::PollResponse>;
    /// Hand over one flush worth of uncommitted fragments and file outcomes.
    async fn publish_checkpoint(&self, checkpoint: pb::Checkpoint) -> Result<pb::CheckpointAck>;
    /// This worker is done with a job (stopped and flushed, or failed).
    async fn end_job(&self, ended: pb::JobEnded) -> Result<()>;
}
