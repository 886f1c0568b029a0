//! The worker's actors, one file each.

mod budget;
mod flusher;
mod normalizer;
pub(crate) mod pipeline;
mod publisher;

pub use budget::{BudgetUsage, Grant, RowBudget};
pub use flusher::{Flusher, FlusherMsg};
pub use normalizer::{FileTask, NormalizerPool};
pub use pipeline::{PipelineStats, ShardPipeline};
pub use publisher::{CheckpointPublisher, PublisherMsg};
