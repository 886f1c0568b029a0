//! The sluice worker: fetch → normalizers → flusher → checkpoint publisher.
//!
//! A [`Worker`] receives shard assignments through [`sluice_common::link::WorkerLink`]
//! and runs one [`actors::ShardPipeline`] per job. Uncommitted Lance fragments
//! are handed to the coordinator in checkpoints; the coordinator commits them.

pub mod actors;
pub mod fetch;
pub mod isolation;
pub mod normalize;
pub mod remote;
mod worker;

pub use worker::Worker;
