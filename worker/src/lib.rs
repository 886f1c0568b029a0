//! The sluice worker: fetch → normalizers → flusher → checkpoint publisher.
//!
//! A worker session ([`session::run_worker`]) speaks the worker protocol
//! ([`sluice_common::protocol::CoordinatorApi`]) to the coordinator in this
//! process or over gRPC, and its [`Worker`] runs one [`actors::ShardPipeline`]
//! per job. Uncommitted Lance fragments are handed to the coordinator in
//! checkpoints; the coordinator commits them.

pub mod actors;
pub mod error;
pub mod fetch;
pub mod isolation;
pub mod membership;
pub mod normalize;
pub mod session;
mod worker;

pub use error::PipelineError;
pub use worker::Worker;
