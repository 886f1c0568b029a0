//! The worker protocol: what a worker asks of the coordinator. Workers pull:
//! they register, poll for shards (the poll is also their heartbeat), publish
//! checkpoints in order and say when they are done with a job.
//!
//! There are two transports and one protocol. Over the network the worker
//! calls the coordinator's `sluice.v1.CoordinatorService` through gRPC; in one
//! process (`sluice ingest`) it calls the coordinator directly through this
//! trait. Either way the same shard book, generations and fencing decide,
//! so every embedded run exercises what a cluster does.
//!
//! The messages here are the protocol's domain types; [`wire`] converts them
//! to and from protobuf at the gRPC edges only, so nothing inside one
//! process is encoded (fragments stay Lance fragments, settings stay
//! validated [`Settings`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use lance_table::format::Fragment;

use crate::schema::Kind;
use crate::settings::Settings;
use crate::storage::TableLocation;
use crate::Result;

pub mod wire;

#[async_trait]
pub trait CoordinatorApi: Send + Sync + 'static {
    /// Start an incarnation under `req.worker_id`.
    async fn register(&self, req: Registration) -> Result<Admission>;
    /// Heartbeat and work request: shards to take, jobs to stop.
    async fn poll(&self, req: PollRequest) -> Result<PollResponse>;
    /// Hand over one flush worth of uncommitted fragments and file outcomes.
    async fn publish_checkpoint(&self, checkpoint: Checkpoint) -> Result<CheckpointAck>;
    /// This worker is done with a job (stopped and flushed, or failed).
    async fn end_job(&self, ended: JobEnded) -> Result<()>;
}

/// A worker incarnation asking to join.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// Unique per worker process start: a worker that was declared dead
    /// comes back under a new id.
    pub worker_id: String,
    /// The worker holds a membership lease in etcd: when the lease is gone,
    /// so is the worker.
    pub leased: bool,
}

/// The coordinator's terms for a registered worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// How often the worker must poll.
    pub heartbeat: Duration,
    /// Silence this long means the worker is dead.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollRequest {
    pub worker_id: String,
    /// Shards the worker can take now (0: heartbeat only).
    pub free_slots: u32,
}

#[derive(Debug, Clone, Default)]
pub struct PollResponse {
    pub assignments: Vec<ShardAssignment>,
    /// Jobs the worker must stop: cancelled, aborted or finished.
    pub stop_jobs: Vec<String>,
    /// The coordinator does not know this worker (declared dead, or a new
    /// leader took over): drop every job and register again, with a new id.
    pub reregister: bool,
}

impl PollResponse {
    pub fn reregister() -> Self {
        Self { reregister: true, ..Default::default() }
    }
}

/// One source file as planned by the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRef {
    pub uri: String,
    pub size: u64,
    /// Last modification time in milliseconds since the Unix epoch.
    pub modified_ms: i64,
    pub shard_id: String,
    /// A previous version of this file is in the table (its rows are
    /// removed before the shard is handed out).
    pub replaces_previous: bool,
    /// Per-file values: a JSON object checked against the job's columns,
    /// carried onto every row of the file; empty when there are none.
    pub attributes: String,
}

/// A group of files handed to one worker. `generation` fences stale owners:
/// checkpoints carrying an older generation are refused.
#[derive(Debug, Clone)]
pub struct ShardAssignment {
    pub job_id: String,
    pub shard_id: String,
    pub generation: u64,
    pub table: TableLocation,
    pub settings: Settings,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCompleted {
    pub uri: String,
    pub shard_id: String,
    pub kind: Kind,
    pub rows: u64,
    pub bytes: u64,
}

/// A file that produced no rows, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFailed {
    pub uri: String,
    /// Empty for files that failed while the job was planned.
    pub shard_id: String,
    /// `None` when the file failed before its bytes were seen.
    pub kind: Option<Kind>,
    pub reason: String,
}

/// Why a worker flushed its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// `flush_every` rows (or failed files) buffered.
    Rows,
    /// `flush_bytes` buffered.
    Bytes,
    /// Rows waited `flush_interval_secs`.
    Interval,
    /// Every file of the assigned shards is accounted for.
    ShardsDone,
    /// The job is stopping: everything buffered goes.
    Drain,
}

impl FlushReason {
    pub const ALL: [FlushReason; 5] =
        [FlushReason::Rows, FlushReason::Bytes, FlushReason::Interval, FlushReason::ShardsDone, FlushReason::Drain];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Interval => "interval",
            FlushReason::ShardsDone => "shards_done",
            FlushReason::Drain => "drain",
        }
    }

    pub fn parse(s: &str) -> Option<FlushReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for FlushReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one flush produced: uncommitted Lance fragments the coordinator
/// commits, and the outcome of every file they finish.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub job_id: String,
    pub worker_id: String,
    /// Per-worker sequence number; checkpoints are published in order.
    pub seq: u64,
    pub rows: u64,
    pub bytes: u64,
    pub fragments: Vec<Fragment>,
    pub completed: Vec<FileCompleted>,
    pub failed: Vec<FileFailed>,
    /// No file has rows both in this checkpoint and in a later one, so a
    /// commit may end here without splitting a file.
    pub clean: bool,
    /// Shards whose every file is accounted for by this and earlier
    /// checkpoints.
    pub shards_finished: Vec<String>,
    pub shard_generations: HashMap<String, u64>,
    /// Why the flush that closed the checkpoint's fragment happened; `None`
    /// from a peer that did not say.
    pub flush_reason: Option<FlushReason>,
    /// The flushes whose rows the checkpoint's fragment holds, by reason
    /// (a fragment gathers flushes). Empty from a peer that did not say.
    pub flushes: HashMap<FlushReason, u32>,
}

impl Checkpoint {
    /// An empty checkpoint of `worker_id` for `job_id` (tests, tools).
    pub fn empty(job_id: &str, worker_id: &str, seq: u64) -> Self {
        Self {
            job_id: job_id.into(),
            worker_id: worker_id.into(),
            seq,
            rows: 0,
            bytes: 0,
            fragments: Vec::new(),
            completed: Vec::new(),
            failed: Vec::new(),
            clean: true,
            shards_finished: Vec::new(),
            shard_generations: HashMap::new(),
            flush_reason: None,
            flushes: HashMap::new(),
        }
    }
}

/// The coordinator's answer to a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointAck {
    pub accepted: bool,
    /// Why it was refused (or "duplicate" for a retried publish).
    pub reason: String,
    /// The worker must stop taking new files for this job.
    pub stop: bool,
}

impl CheckpointAck {
    pub fn accepted(stop: bool) -> Self {
        Self { accepted: true, reason: String::new(), stop }
    }

    /// Refused for good: the worker stops the job (its checkpoints would
    /// be refused too).
    pub fn refused(reason: impl Into<String>) -> Self {
        Self { accepted: false, reason: reason.into(), stop: true }
    }
}

/// A worker is done with a job: told to stop, it finished the files in
/// flight and published them; or its pipeline for the job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnded {
    pub job_id: String,
    pub worker_id: String,
    /// Why the worker's pipeline failed; `None` when every checkpoint was
    /// published. A failure fails the job, committing only up to the last
    /// clean checkpoint.
    pub error: Option<String>,
}
