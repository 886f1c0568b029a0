//! The sluice coordinator: plans a job's files into shards, hands shards to
//! workers through [`sluice_common::link::WorkerLink`], and reconciles the
//! workers' checkpoints into exactly-once Lance commits.

pub mod cluster;
pub mod embedded;
pub mod job;
pub mod manifest;
pub mod planner;
pub mod progress;
pub mod reconciler;

pub use embedded::{run_embedded, EmbeddedJob};
pub use progress::{JobProgress, JobStatus, JobSummary};
