//! Deterministic identifiers. A row id depends only on the source URI and chunk
//! index, so re-ingesting a file yields the same ids; a commit id depends only
//! on what it commits, so a retried commit can be recognised.

/// 128-bit row id, hex encoded.
pub fn row_id(source_uri: &str, chunk_index: u32) -> String {
    let mut h = blake3::Hasher::new();
    h.update(source_uri.as_bytes());
    h.update(&[0]);
    h.update(&chunk_index.to_le_bytes());
    hex16(h.finalize().as_bytes())
}

/// Id of the commit that publishes checkpoints `first..=last` of a worker in a job.
pub fn commit_id(job_id: &str, worker_id: &str, first_seq: u64, last_seq: u64) -> String {
    let mut h = blake3::Hasher::new();
    for part in [job_id, worker_id] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.update(&first_seq.to_le_bytes());
    h.update(&last_seq.to_le_bytes());
    let b = h.finalize();
    uuid::Builder::from_random_bytes(b.as_bytes()[..16].try_into().expect("16 bytes"))
        .into_uuid()
        .to_string()
}

/// Id of the commit of an insert into `table_uri` with an idempotency key.
pub fn insert_commit_id(table_uri: &str, key: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in ["insert", table_uri, key] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    uuid::Builder::from_random_bytes(h.finalize().as_bytes()[..16].try_into().expect("16 bytes")).into_uuid().to_string()
}

/// 64-bit key of a URI, for in-memory sets and maps over many files.
pub fn uri_key(uri: &str) -> u64 {
    let h = blake3::hash(uri.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Content hash of a file: blake3, hex encoded.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A fresh job id.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn hex16(bytes: &[u8; 32]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_are_deterministic_and_distinct() {
        assert_eq!(row_id("file:///a", 0), row_id("file:///a", 0));
        assert_ne!(row_id("file:///a", 0), row_id("file:///a", 1));
        assert_ne!(row_id("file:///a", 0), row_id("file:///b", 0));
        assert_eq!(row_id("x", 3).len(), 32);
    }

    #[test]
    fn commit_ids_depend_on_every_part() {
        let a = commit_id("j", "w", 1, 4);
        assert_eq!(a, commit_id("j", "w", 1, 4));
        assert_ne!(a, commit_id("j", "w", 1, 5));
        assert_ne!(a, commit_id("j", "w2", 1, 4));
        assert_ne!(a, commit_id("j2", "w", 1, 4));
    }
}
