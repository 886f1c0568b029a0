use thiserror::Error;

/// Errors of the shared layer: storage, table and protocol plumbing.
#[derive(Debug, Error)]
pub enum Error {
    /// Not marked as the error's source: its message already holds the chain.
    #[error("{}", concise(.0))]
    Lance(lance::Error),
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

impl From<lance::Error> for Error {
    fn from(e: lance::Error) -> Self {
        Error::Lance(e)
    }
}

/// Lance errors repeat their whole cause chain, with source locations, in
/// their message. Keep each statement once, then the root cause.
fn concise(e: &lance::Error) -> String {
    let full = e.to_string();
    let head = full.split(", /").next().unwrap_or(&full);
    let mut seen = std::collections::HashSet::new();
    let parts: Vec<&str> = head.split(": ").map(str::trim).filter(|p| seen.insert(*p)).collect();
    let head = parts.join(": ");
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = cause.to_string();
    let root = cause.rsplit(": ").next().unwrap_or("").trim();
    if root.is_empty() || head.contains(root) || root.contains(".rs:") {
        head
    } else {
        format!("{head} (cause: {root})")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lance_errors_are_condensed() {
        let e = lance::Error::invalid_input("bad thing");
        let msg = super::Error::from(e).to_string();
        assert!(msg.contains("bad thing"), "{msg}");
        assert!(!msg.contains(".rs:"), "no source locations: {msg}");
    }
}
