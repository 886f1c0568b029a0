//! SQL over a sluice table (DataFusion, through Lance), shared by
//! `sluice query` and the coordinator's `TableService`.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, GenericStringArray, OffsetSizeTrait, RecordBatch};
use arrow_json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder};
use arrow_schema::FieldRef;
use futures::{StreamExt, TryStreamExt};
use lance::Dataset;
use lance_core::datatypes::BlobHandling;

use crate::{Error, Result};

/// The table's name in SQL: a location's last path segment, as an identifier.
pub fn table_name(uri: &str) -> String {
    let last = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("t");
    let name: String = last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) { format!("t_{name}") } else { name }
}

/// Batches of a query's result as they are computed.
pub type BatchStream = futures::stream::BoxStream<'static, Result<RecordBatch>>;

/// Start `sql` against `ds` (named `name`), returning at most `limit` rows
/// as a stream. Blob columns come back as descriptions unless `blobs`.
/// Mistakes in the statement are `InvalidInput`.
pub async fn sql_stream(ds: &Dataset, sql: &str, name: &str, limit: usize, blobs: bool) -> Result<BatchStream> {
    let handling = if blobs { BlobHandling::AllBinary } else { BlobHandling::AllDescriptions };
    let query = ds.sql(sql).table_name(name).blob_handling(handling).build().await.map_err(user_error)?;
    let frame = query.into_dataframe().limit(0, Some(limit)).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let stream = frame.execute_stream().await.map_err(|e| Error::InvalidInput(e.to_string()))?;
    // JSON columns come out of the scan as JSONB: give them back as JSON text.
    Ok(stream
        .map(|b| {
            let batch = b.map_err(|e| Error::Internal(format!("query failed: {e}")))?;
            Ok(lance_arrow::json::convert_lance_json_to_arrow(&batch)?)
        })
        .boxed())
}

/// Run `sql` to the end within `timeout` (see [`sql_stream`]).
pub async fn run_sql(
    ds: &Dataset,
    sql: &str,
    name: &str,
    limit: usize,
    blobs: bool,
    timeout: Duration,
) -> Result<Vec<RecordBatch>> {
    let run = async { sql_stream(ds, sql, name, limit, blobs).await?.try_collect::<Vec<_>>().await };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| Error::Timeout(format!("query timed out after {timeout:?}")))?
}

fn user_error(e: lance::Error) -> Error {
    match e {
        lance::Error::InvalidInput { .. } => Error::InvalidInput(Error::Lance(e).to_string()),
        other => Error::Lance(other),
    }
}

/// The result's column names, in order.
pub fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default()
}

/// Rows as JSON objects, one string per row. JSON columns are nested as
/// JSON, not quoted as strings.
pub fn json_rows(batches: &[RecordBatch]) -> Result<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_encoder_factory(Arc::new(RawJson))
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        writer.write_batches(&batches.iter().collect::<Vec<_>>()).map_err(Error::Arrow)?;
        writer.finish().map_err(Error::Arrow)?;
    }
    Ok(String::from_utf8_lossy(&buf).lines().map(String::from).collect())
}

/// Rows as JSON arrays in column order, one string per row (JSON columns
/// nested as JSON; nulls as `null`).
pub fn json_array_rows(batch: &RecordBatch) -> Result<Vec<String>> {
    let options = EncoderOptions::default().with_encoder_factory(Arc::new(RawJson));
    let schema = batch.schema();
    let mut encoders = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| arrow_json::writer::make_encoder(field, column.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut buf = Vec::new();
    for row in 0..batch.num_rows() {
        buf.clear();
        buf.push(b'[');
        for (i, encoder) in encoders.iter_mut().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            if encoder.is_null(row) {
                buf.extend_from_slice(b"null");
            } else {
                encoder.encode(row, &mut buf);
            }
        }
        buf.push(b']');
        out.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(out)
}

/// A DataFusion error's message without its layers of context prefixes.
pub fn concise_datafusion(e: &datafusion::error::DataFusionError) -> String {
    let root = e.find_root().to_string();
    let trimmed = ["Error during planning: ", "Schema error: ", "SQL error: ", "Execution error: ", "Arrow error: ", "This feature is not implemented: "]
        .iter()
        .fold(root.as_str(), |s, p| s.strip_prefix(p).unwrap_or(s));
    trimmed.trim().to_string()
}

/// Writes the text of JSON columns as it is.
#[derive(Debug)]
struct RawJson;

impl EncoderFactory for RawJson {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> std::result::Result<Option<NullableEncoder<'a>>, arrow_schema::ArrowError> {
        if !crate::schema::is_arrow_json(field) {
            return Ok(None);
        }
        let encoder: Box<dyn Encoder + 'a> = if let Some(text) = array.as_string_opt::<i32>() {
            Box::new(RawText(text))
        } else if let Some(text) = array.as_string_opt::<i64>() {
            Box::new(RawText(text))
        } else {
            return Ok(None);
        };
        Ok(Some(NullableEncoder::new(encoder, array.logical_nulls())))
    }
}

struct RawText<'a, O: OffsetSizeTrait>(&'a GenericStringArray<O>);

impl<O: OffsetSizeTrait> Encoder for RawText<'_, O> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.value(idx).as_bytes());
    }
}
