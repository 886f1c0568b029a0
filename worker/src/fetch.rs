//! Fetch: look at a source file and read it, with the checks that turn the
//! usual problems (missing, a directory, unreadable, too large) into clear
//! reasons. Small kinds are read whole; media is opened by path and hashed
//! by streaming, never loaded.

use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;

/// Local filesystem path of a `file://` URI (or a plain path).
pub fn local_path(uri: &str) -> &str {
    uri.strip_prefix("file://").unwrap_or(uri)
}

/// What a first look at a file found.
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ms: Option<i64>,
    /// The first bytes, for kind detection.
    pub head: Vec<u8>,
}

const HEAD_BYTES: usize = crate::normalize::DETECT_BYTES;

/// Stat the file and read its first bytes.
pub async fn probe(uri: &str) -> Result<Probe, String> {
    let path = PathBuf::from(local_path(uri));
    let meta = tokio::fs::metadata(&path).await.map_err(|e| describe(&e))?;
    if meta.is_dir() {
        return Err("is a directory, not a file".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let p = path.clone();
    let head = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut head = Vec::with_capacity(HEAD_BYTES);
        std::fs::File::open(p)?.take(HEAD_BYTES as u64).read_to_end(&mut head)?;
        Ok(head)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| describe(&e))?;
    Ok(Probe { path, size: meta.len(), modified_ms, head })
}

/// A source object from an object store (`s3://...`), downloaded to a
/// local temporary file (streamed, never held in memory) so every kind is
/// normalized the same way as a local file. The temporary file goes away
/// with the returned guard. Size and modification time are the object's.
pub async fn probe_remote(uri: &str, max_bytes: u64) -> Result<(Probe, tempfile::TempPath), String> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncWriteExt;
    let (store, path) = sluice_common::sources::open(uri).map_err(|e| e.to_string())?;
    let describe = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => "no such object".to_string(),
        other => format!("cannot read: {other}"),
    };
    let meta = store.head(&path).await.map_err(describe)?;
    if meta.size > max_bytes {
        return Err(format!("object is {} bytes, above the limit of {max_bytes}", meta.size));
    }
    let tmp = tempfile::Builder::new().prefix("sluice-fetch-").tempfile().map_err(|e| format!("no temporary space: {e}"))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let mut body = store.get(&path).await.map_err(describe)?.into_stream();
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(describe)?;
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(format!("object grew above the limit of {max_bytes} bytes while read"));
        }
        if head.len() < HEAD_BYTES {
            head.extend_from_slice(&chunk[..chunk.len().min(HEAD_BYTES - head.len())]);
        }
        out.write_all(&chunk).await.map_err(|e| format!("cannot write a temporary copy: {e}"))?;
    }
    out.flush().await.map_err(|e| format!("cannot write a temporary copy: {e}"))?;
    let probe = Probe {
        path: tmp_path.to_path_buf(),
        size,
        modified_ms: Some(meta.last_modified.timestamp_millis()),
        head,
    };
    Ok((probe, tmp_path))
}

/// Read a whole file, refusing anything above `max_bytes`.
pub async fn read_all(probe: &Probe, max_bytes: u64) -> Result<Bytes, String> {
    if probe.size > max_bytes {
        return Err(format!("file is {} bytes, above the limit of {max_bytes} (max_file_bytes)", probe.size));
    }
    let bytes = tokio::fs::read(&probe.path).await.map_err(|e| describe(&e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!("file grew to {} bytes while read, above max_file_bytes", bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

/// Content hash of a file, read in blocks (blocking).
pub fn hash_file(path: &std::path::Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| describe(&e))?;
    // Reads through a 64 KiB buffer on the stack: no buffer to allocate
    // (and fault in) per file.
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(|e| describe(&e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot read: {e}"),
    }
}
