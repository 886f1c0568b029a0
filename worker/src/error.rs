//! How a job's pipeline on a worker can fail. A file that fails is not here:
//! it is recorded with its reason and the job goes on.

/// A failure that stops the job's pipeline on this worker. The coordinator
/// fails the job, committing only up to the last clean checkpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// An actor of the pipeline failed (a normalizer that broke after
    /// handing on rows of a file, a panic).
    #[error("pipeline actor failed: {0}")]
    Actor(String),
    /// Files whose last rows never came: their rows must not be committed.
    #[error("{} file(s) ended before their last rows (a normalizer failed mid-file): {}", .0.len(), .0.join(", "))]
    CutOff(Vec<String>),
    /// Writing a fragment failed (after the storage retries).
    #[error("writing fragments failed: {0}")]
    Write(String),
    /// The coordinator did not take a checkpoint; nothing after it may be
    /// published.
    #[error("checkpoint {seq} not published: {reason}")]
    Publish { seq: u64, reason: String },
    /// An actor stopped answering.
    #[error("{0}")]
    Gone(String),
}
