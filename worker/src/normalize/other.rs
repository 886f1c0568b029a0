//! Anything else: stored as bytes with its MIME type.

use bytes::Bytes;
use serde_json::json;
use sluice_common::schema::Row;

pub fn normalize_other(bytes: Bytes, mime: &str) -> Vec<Row> {
    vec![Row {
        chunk_index: 0,
        mime_type: mime.to_string(),
        metadata: Some(json!({ "bytes": bytes.len() })),
        data: Some(bytes),
        ..Default::default()
    }]
}
