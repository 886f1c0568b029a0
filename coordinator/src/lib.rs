//! The sluice coordinator: plans a job's files into shards, serves them to
//! workers through the worker protocol ([`sluice_common::protocol::CoordinatorApi`],
//! in process or over gRPC), and reconciles the workers' checkpoints into
//! exactly-once Lance commits.

pub mod cluster;
pub mod job;
pub mod manifest;
pub mod planner;
pub mod progress;
pub mod reconciler;

pub use job::JobPlan;
pub use progress::{JobProgress, JobStatus, JobSummary};
