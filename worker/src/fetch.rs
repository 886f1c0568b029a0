//! Fetch: read a source file, with the checks that turn the usual problems
//! (missing, a directory, unreadable, too large) into clear reasons.

use bytes::Bytes;
use sluice_common::schema::SourceInfo;

/// Local filesystem path of a `file://` URI (or a plain path).
pub fn local_path(uri: &str) -> &str {
    uri.strip_prefix("file://").unwrap_or(uri)
}

/// Read a whole file, refusing anything above `max_bytes`.
pub async fn fetch(uri: &str, max_bytes: u64) -> Result<(SourceInfo, Bytes), String> {
    let path = local_path(uri);
    let meta = tokio::fs::metadata(path).await.map_err(|e| describe(&e))?;
    if meta.is_dir() {
        return Err("is a directory, not a file".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max_bytes {
        return Err(format!("file is {} bytes, above the limit of {max_bytes} (max_file_bytes)", meta.len()));
    }
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let bytes = tokio::fs::read(path).await.map_err(|e| describe(&e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!("file grew to {} bytes while read, above max_file_bytes", bytes.len()));
    }
    let source = SourceInfo {
        uri: uri.to_string(),
        size: bytes.len() as u64,
        modified_ms,
        content_hash: sluice_common::ids::content_hash(&bytes),
    };
    Ok((source, Bytes::from(bytes)))
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot read: {e}"),
    }
}
