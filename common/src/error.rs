use thiserror::Error;

/// Errors of the shared layer: storage, table and protocol plumbing.
#[derive(Debug, Error)]
pub enum Error {
    #[error("lance: {0}")]
    Lance(#[from] lance::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("link to peer failed: {0}")]
    Link(String),
    #[error("fenced: {0}")]
    Fenced(String),
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::ObjectStore(_) | Error::Io(_) | Error::Link(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
