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
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Timeout(String),
    /// Too much is running now; the request may be retried later.
    #[error("{0}")]
    Busy(String),
    /// Not served here or not now (a standby, a coordinator that lost the
    /// lead, an unreachable peer or etcd): the same request may succeed
    /// later or elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// The caller did not prove who it is (a bearer token, a client
    /// certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// Sluice's own machinery failed (a task or actor that stopped, a
    /// pipeline that broke): not the caller's doing, not worth a blind retry.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error answers with: the caller's mistakes are
    /// 4xx, never 5xx.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) | Error::InvalidSettings(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::NotFound(_) => 404,
            Error::Timeout(_) => 408,
            Error::Conflict(_) => 409,
            Error::Busy(_) => 429,
            Error::Unavailable(_) => 503,
            _ => 500,
        }
    }

    /// Whether the same request may succeed if tried again later: what
    /// retries (workers, clients) decide by.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Busy(_) | Error::Timeout(_))
    }

    /// The message without the kind's prefix, for answers that carry the
    /// kind separately (an HTTP status, a gRPC code).
    pub fn message(&self) -> String {
        match self {
            Error::InvalidInput(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

impl From<lance::Error> for Error {
    fn from(e: lance::Error) -> Self {
        Error::Lance(e)
    }
}

/// Lance errors repeat their whole cause chain, with source locations, in
/// their message. Keep each statement once, then the root cause.
fn concise(e: &lance::Error) -> String {
    let full = strip_locations(&e.to_string());
    let mut seen = std::collections::HashSet::new();
    let head = full.split(": ").map(str::trim).filter(|p| !p.is_empty() && seen.insert(*p)).collect::<Vec<_>>().join(": ");
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = strip_locations(&cause.to_string());
    let root = cause.rsplit(": ").next().unwrap_or("").trim();
    if root.is_empty() || head.contains(root) {
        head
    } else {
        format!("{head} (cause: {root})")
    }
}

/// Drop `, path/to/file.rs:LINE:COL` source locations from a message.
fn strip_locations(msg: &str) -> String {
    msg.split(", ")
        .filter_map(|piece| {
            let token = piece.split(' ').next().unwrap_or("");
            match token.find(".rs:") {
                Some(at) => {
                    let after = &token[at + 4..];
                    let loc_len = at + 4 + after.find(|c: char| !c.is_ascii_digit() && c != ':').unwrap_or(after.len());
                    let rest = piece[loc_len..].trim_start_matches(':').trim();
                    (!rest.is_empty()).then_some(rest)
                }
                None => Some(piece),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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

    #[test]
    fn locations_are_stripped_wherever_they_stand() {
        assert_eq!(
            super::strip_locations("Not found: x, /a/commit.rs:653:26: Not found: x, b/builder.rs:9:1"),
            "Not found: x, Not found: x"
        );
        assert_eq!(super::strip_locations("retries: 3, retry_timeout: 180s"), "retries: 3, retry_timeout: 180s");
    }
}
