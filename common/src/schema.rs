//! The one table schema every file kind shares, and the row model that fills it.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BinaryBuilder, Float64Builder, LargeBinaryBuilder, StringBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{Array, ArrayRef, LargeBinaryArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Result;

/// Column names, so readers and writers agree.
pub mod col {
    pub const ID: &str = "id";
    pub const SOURCE_URI: &str = "source_uri";
    pub const SOURCE_SIZE: &str = "source_size";
    pub const SOURCE_MODIFIED: &str = "source_modified";
    pub const CONTENT_HASH: &str = "content_hash";
    pub const KIND: &str = "kind";
    pub const MIME_TYPE: &str = "mime_type";
    pub const CHUNK_INDEX: &str = "chunk_index";
    pub const START_SECONDS: &str = "start_seconds";
    pub const END_SECONDS: &str = "end_seconds";
    pub const PAGE: &str = "page";
    pub const TEXT: &str = "text";
    pub const DATA: &str = "data";
    pub const THUMBNAIL: &str = "thumbnail";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const METADATA: &str = "metadata";
    pub const JOB_ID: &str = "job_id";
    pub const INGESTED_AT: &str = "ingested_at";
}

/// What a row was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Image,
    Video,
    Audio,
    Pdf,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Image => "image",
            Kind::Video => "video",
            Kind::Audio => "audio",
            Kind::Pdf => "pdf",
            Kind::Other => "other",
        }
    }

    /// The kind named `s` (as [`Kind::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Text, Kind::Image, Kind::Video, Kind::Audio, Kind::Pdf, Kind::Other].into_iter().find(|k| k.as_str() == s)
    }
}

/// File name extensions (lower case) and the kind each suggests: the one
/// list the planner (grouping shards by kind, before any byte is read) and
/// the normalizers (when a file's magic bytes say nothing) share.
const EXTENSIONS: &[(Kind, &[&str])] = &[
    (Kind::Pdf, &["pdf"]),
    // `ts` is MPEG-TS here; TypeScript sources named `.ts` have no MPEG-TS
    // sync bytes and are taken as text once their bytes are seen.
    (
        Kind::Video,
        &[
            "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "mts", "m2ts", "flv", "mpg", "mpeg", "m2v", "vob", "ogv", "3gp", "3g2",
            "wmv", "asf", "nut", "mxf", "dv", "h264", "264", "hevc", "h265", "265",
        ],
    ),
    // `ogg` is mostly audio; an Ogg file with a video stream becomes video
    // once its streams are seen (as does any audio-named file with video).
    (Kind::Audio, &["mp3", "m4a", "aac", "flac", "wav", "ogg", "oga", "opus", "wma", "aif", "aiff", "aifc", "ac3", "mka"]),
    (
        Kind::Image,
        &[
            "jpg", "jpeg", "png", "gif", "webp", "tif", "tiff", "bmp", "exr", "jp2", "j2k", "j2c", "jpx", "psd", "dpx", "sgi",
            "ras", "xwd", "pcx", "qoi", "pbm", "pgm", "ppm", "pnm", "pam", "tga", "hdr", "ico", "dds",
        ],
    ),
    (
        Kind::Text,
        &[
            "txt", "text", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "ndjson", "xml", "html", "htm", "yaml",
            "yml", "toml", "ini", "cfg", "conf", "log", "tex", "srt", "vtt", "sql", "rs", "py", "js", "go", "java", "c",
            "h", "cpp", "hpp", "sh", "rb", "php", "css", "scss",
        ],
    ),
];

impl Kind {
    /// The kind a file's name suggests (`None`: the name says nothing).
    pub fn from_name(name: &str) -> Option<Kind> {
        let file = name.rsplit('/').next().unwrap_or(name);
        let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        EXTENSIONS.iter().find(|(_, exts)| exts.contains(&ext.as_str())).map(|(kind, _)| *kind)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let utc = || Some(Arc::<str>::from("UTC"));
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::SOURCE_URI, DataType::Utf8, false),
        Field::new(col::SOURCE_SIZE, DataType::UInt64, false),
        Field::new(col::SOURCE_MODIFIED, DataType::Timestamp(TimeUnit::Millisecond, utc()), true),
        Field::new(col::CONTENT_HASH, DataType::Utf8, false),
        Field::new(col::KIND, DataType::Utf8, false),
        Field::new(col::MIME_TYPE, DataType::Utf8, false),
        Field::new(col::CHUNK_INDEX, DataType::UInt32, false),
        Field::new(col::START_SECONDS, DataType::Float64, true),
        Field::new(col::END_SECONDS, DataType::Float64, true),
        Field::new(col::PAGE, DataType::UInt32, true),
        Field::new(col::TEXT, DataType::Utf8, true),
        data_field(),
        Field::new(col::THUMBNAIL, DataType::Binary, true),
        Field::new(col::WIDTH, DataType::UInt32, true),
        Field::new(col::HEIGHT, DataType::UInt32, true),
        json_field(col::METADATA, true),
        Field::new(col::JOB_ID, DataType::Utf8, false),
        Field::new(col::INGESTED_AT, DataType::Timestamp(TimeUnit::Microsecond, utc()), false),
    ]))
});

/// Blobs up to this size go into the fragment's packed blob file (one
/// upload, its parts in flight together) rather than a file each, which
/// Lance writes one after another: for blobs of a few MB (video segments,
/// page renders, most files) the packed file keeps the store busy.
pub const DEDICATED_BLOB_BYTES: usize = 64 << 20;

/// The `data` column: a Lance blob (v2), packed up to
/// [`DEDICATED_BLOB_BYTES`].
fn data_field() -> Field {
    let threshold = std::num::NonZeroUsize::new(DEDICATED_BLOB_BYTES).expect("not zero");
    lance::blob_field_with_options(col::DATA, true, lance::BlobFieldOptions::default().with_dedicated_size_threshold(threshold))
}

/// A JSON column: text in Arrow (extension `arrow.json`), stored by Lance
/// as JSONB so SQL can filter on fields (`json_get_int(metadata, 'fps')`).
pub fn json_field(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
        .with_metadata(std::collections::HashMap::from([(ARROW_EXT_KEY.to_string(), ARROW_JSON.to_string())]))
}

/// Arrow's extension-type metadata key and the JSON extension's name.
pub const ARROW_EXT_KEY: &str = "ARROW:extension:name";
pub const ARROW_JSON: &str = "arrow.json";

/// Is `field` a JSON column as Arrow carries it?
pub fn is_arrow_json(field: &Field) -> bool {
    field.metadata().get(ARROW_EXT_KEY).is_some_and(|e| e == ARROW_JSON)
}

/// The table's Arrow schema.
pub fn table_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Identity of a source file, shared by all rows made from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub uri: String,
    pub size: u64,
    pub modified_ms: Option<i64>,
    pub content_hash: String,
    /// The file's per-file values (a JSON object, checked against the
    /// job's columns when the file was planned), for every row of it.
    pub attributes: Option<Arc<str>>,
}

/// One row before it is written. `id`, `job_id` and `ingested_at` are filled in
/// when the batch is built.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub chunk_index: u32,
    pub mime_type: String,
    pub start_seconds: Option<f64>,
    pub end_seconds: Option<f64>,
    pub page: Option<u32>,
    pub text: Option<String>,
    pub data: Option<Bytes>,
    pub thumbnail: Option<Vec<u8>>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub metadata: Option<serde_json::Value>,
}

impl Row {
    /// Approximate in-memory size, used for the flusher's byte budget.
    pub fn approx_bytes(&self) -> usize {
        256 + self.text.as_ref().map_or(0, String::len)
            + self.data.as_ref().map_or(0, Bytes::len)
            + self.thumbnail.as_ref().map_or(0, Vec::len)
    }
}

/// All rows of one file (or, for streamed files, one part of them).
#[derive(Debug, Clone)]
pub struct FileRows {
    pub source: SourceInfo,
    pub shard_id: String,
    pub kind: Kind,
    pub rows: Vec<Row>,
    /// True when no more rows of this file follow.
    pub last: bool,
}

/// Rows with at least this many bytes of data go to the writer in batches
/// of their own, whose data column is the row's bytes as they are (a
/// normalizer's sealed memfd, mapped, or the file as read): not copied
/// into a column of the batch first. For a video that copy faulted in a
/// fresh buffer as big as the flush for every flush. Smaller rows share
/// batches of about this much data, where their bytes are copied: a batch
/// costs the writer more than copying a few hundred KB. Lance copies each
/// batch's blobs once more as it prepares them, so a flush's small rows in
/// one batch were another copy of the whole flush at once: at 200 rows of
/// small files a flush, peak RSS of the ingest (release build, three
/// alternating runs) went from 44.0–44.8, 50.2–50.8 and 53.1–54.9 MB at
/// 1,000, 10,000 and 100,000 files to 41.0–41.8, 46.2–46.4 and 49.7–52.4 MB
/// with batches of this size, in the same time.
pub const OWN_BATCH_BYTES: usize = 256 << 10;

/// The `data` column of `rows`, a Lance blob struct (`data`, `uri`). One
/// row's bytes are used as they are; several rows' are copied into one
/// buffer of their exact size (Lance's `BlobArrayBuilder` grows its buffer
/// by doubling: every blob of a fragment was copied about twice and the
/// buffer's pages faulted in twice over).
fn data_column(rows: &[&Row]) -> Result<ArrayRef> {
    let data = match rows {
        [Row { data: Some(only), .. }] => {
            let offsets = arrow::buffer::OffsetBuffer::from_lengths([only.len()]);
            LargeBinaryArray::new(offsets, arrow::buffer::Buffer::from(only.clone()), None)
        }
        _ => {
            let bytes = rows.iter().filter_map(|r| r.data.as_ref()).map(Bytes::len).sum();
            let mut data = LargeBinaryBuilder::with_capacity(rows.len(), bytes);
            rows.iter().for_each(|r| data.append_option(r.data.as_deref()));
            data.finish()
        }
    };
    let n = data.len();
    // A blob is null where its bytes are.
    let valid = data.nulls().cloned();
    let DataType::Struct(fields) = data_field().data_type().clone() else {
        unreachable!("the data column is a struct")
    };
    let columns: Vec<ArrayRef> = vec![Arc::new(data), Arc::new(StringArray::new_null(n))];
    Ok(Arc::new(StructArray::try_new(fields, columns, valid)?))
}

/// Build one record batch of the table schema from rows of several files.
pub fn build_batch(files: &[FileRows], job_id: &str, ingested_at_us: i64) -> Result<RecordBatch> {
    let rows: Vec<&Row> = files.iter().flat_map(|f| &f.rows).collect();
    with_data(files, job_id, ingested_at_us, data_column(&rows)?)
}

/// The batch of `files`' rows with `data` as its data column.
fn with_data(files: &[FileRows], job_id: &str, ingested_at_us: i64, data: ArrayRef) -> Result<RecordBatch> {
    let n: usize = files.iter().map(|f| f.rows.len()).sum();
    let mut id = StringBuilder::with_capacity(n, n * 32);
    let mut uri = StringBuilder::new();
    let mut size = UInt64Builder::with_capacity(n);
    let mut modified = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut hash = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut mime = StringBuilder::new();
    let mut chunk = UInt32Builder::with_capacity(n);
    let mut start = Float64Builder::with_capacity(n);
    let mut end = Float64Builder::with_capacity(n);
    let mut page = UInt32Builder::with_capacity(n);
    let mut text = StringBuilder::new();
    let mut thumb = BinaryBuilder::new();
    let mut width = UInt32Builder::with_capacity(n);
    let mut height = UInt32Builder::with_capacity(n);
    let mut meta = StringBuilder::new();
    let mut job = StringBuilder::new();
    let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");

    for file in files {
        for row in &file.rows {
            id.append_value(crate::ids::row_id(&file.source.uri, row.chunk_index));
            uri.append_value(&file.source.uri);
            size.append_value(file.source.size);
            modified.append_option(file.source.modified_ms);
            hash.append_value(&file.source.content_hash);
            kind.append_value(file.kind.as_str());
            mime.append_value(&row.mime_type);
            chunk.append_value(row.chunk_index);
            start.append_option(row.start_seconds);
            end.append_option(row.end_seconds);
            page.append_option(row.page);
            text.append_option(row.text.as_deref());
            thumb.append_option(row.thumbnail.as_deref());
            width.append_option(row.width);
            height.append_option(row.height);
            meta.append_option(row.metadata.as_ref().map(|m| m.to_string()));
            job.append_value(job_id);
            at.append_value(ingested_at_us);
        }
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(uri.finish()),
        Arc::new(size.finish()),
        Arc::new(modified.finish()),
        Arc::new(hash.finish()),
        Arc::new(kind.finish()),
        Arc::new(mime.finish()),
        Arc::new(chunk.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(page.finish()),
        Arc::new(text.finish()),
        data,
        Arc::new(thumb.finish()),
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(meta.finish()),
        Arc::new(job.finish()),
        Arc::new(at.finish()),
    ];
    Ok(RecordBatch::try_new(table_schema(), columns)?)
}

/// Build the batches of `files`' rows for a table whose schema is `table`
/// (as inserts see it: JSON columns as text): the sluice columns plus the
/// table's attribute columns, filled from each file's attributes (null
/// where a file has no value), in the table's column order. Rows in order;
/// each row of [`OWN_BATCH_BYTES`] or more is a batch of its own, the rows
/// between them share batches that end once they hold that much data.
pub fn build_batches_for(table: &SchemaRef, files: &[FileRows], job_id: &str, ingested_at_us: i64) -> Result<Vec<RecordBatch>> {
    let rows: Vec<&Row> = files.iter().flat_map(|f| &f.rows).collect();
    let mut runs = Vec::new();
    let (mut start, mut run_bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let bytes = row.data.as_ref().map_or(0, Bytes::len);
        if bytes >= OWN_BATCH_BYTES {
            runs.extend((start < i).then_some(start..i));
            runs.push(i..i + 1);
            (start, run_bytes) = (i + 1, 0);
        } else {
            run_bytes += bytes;
            if run_bytes >= OWN_BATCH_BYTES {
                runs.push(start..i + 1);
                (start, run_bytes) = (i + 1, 0);
            }
        }
    }
    runs.extend((start < rows.len() || rows.is_empty()).then_some(start..rows.len()));
    // Every column but the data is built once for all rows and sliced.
    let placeholder = arrow_array::new_null_array(data_field().data_type(), rows.len());
    let whole = with_attributes(table, files, with_data(files, job_id, ingested_at_us, placeholder)?)?;
    let at = whole.schema().index_of(col::DATA)?;
    runs.into_iter()
        .map(|run| {
            let part = whole.slice(run.start, run.len());
            let mut columns = part.columns().to_vec();
            columns[at] = data_column(&rows[run])?;
            Ok(RecordBatch::try_new(part.schema(), columns)?)
        })
        .collect()
}

/// `base`, the sluice columns of `files`' rows, with `table`'s attribute
/// columns, in the table's column order.
fn with_attributes(table: &SchemaRef, files: &[FileRows], base: RecordBatch) -> Result<RecordBatch> {
    let extra: Vec<Field> = table
        .fields()
        .iter()
        .filter(|f| SCHEMA.field_with_name(f.name()).is_err())
        .map(|f| f.as_ref().clone())
        .collect();
    if extra.is_empty() {
        return Ok(base);
    }
    let extra_schema = Arc::new(Schema::new(extra));
    let mut rows: Vec<serde_json::Map<String, serde_json::Value>> = Vec::with_capacity(base.num_rows());
    for file in files {
        let values = match &file.source.attributes {
            Some(text) => match serde_json::from_str(text)? {
                serde_json::Value::Object(m) => m,
                _ => return Err(crate::Error::InvalidInput(format!("attributes of {} are not a JSON object", file.source.uri))),
            },
            None => serde_json::Map::new(),
        };
        rows.extend(std::iter::repeat_n(values, file.rows.len()));
    }
    let mut decoder = arrow_json::ReaderBuilder::new(extra_schema.clone()).build_decoder()?;
    decoder.serialize(&rows)?;
    let attributes = decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(extra_schema.clone()));
    let mut fields = Vec::with_capacity(table.fields().len());
    let mut columns = Vec::with_capacity(table.fields().len());
    for field in table.fields() {
        let (batch, schema) = match base.schema().index_of(field.name()) {
            Ok(_) => (&base, base.schema()),
            Err(_) => (&attributes, extra_schema.clone()),
        };
        let i = schema.index_of(field.name())?;
        fields.push(schema.field(i).clone());
        columns.push(batch.column(i).clone());
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn kinds_by_name() {
        assert_eq!(Kind::from_name("file:///data/Clip.MP4"), Some(Kind::Video));
        assert_eq!(Kind::from_name("s3://b/docs/report.pdf"), Some(Kind::Pdf));
        assert_eq!(Kind::from_name("a/b.flv"), Some(Kind::Video));
        assert_eq!(Kind::from_name("Song.FLAC"), Some(Kind::Audio));
        assert_eq!(Kind::parse("audio"), Some(Kind::Audio));
        assert_eq!(Kind::from_name("notes.md"), Some(Kind::Text));
        assert_eq!(Kind::from_name("photo.webp"), Some(Kind::Image));
        assert_eq!(Kind::from_name("archive.tar.gz"), None);
        assert_eq!(Kind::from_name("dir.v1/README"), None);
    }

    #[test]
    fn the_data_column_is_the_blob_struct_with_every_row_in_order() {
        use arrow_array::cast::AsArray;
        let row = |data: Option<&'static [u8]>| Row { data: data.map(Bytes::from_static), ..Default::default() };
        let file = |uri: &str, rows| FileRows {
            source: SourceInfo { uri: uri.into(), size: 1, modified_ms: None, content_hash: "h".into(), attributes: None },
            shard_id: "s".into(),
            kind: Kind::Other,
            rows,
            last: true,
        };
        let files = [file("file:///a", vec![row(Some(b"abc")), row(None)]), file("file:///b", vec![row(Some(b"")), row(Some(b"xy"))])];
        let batch = build_batch(&files, "job", 0).unwrap();
        let column = batch.column_by_name(col::DATA).unwrap();
        assert_eq!(column.data_type(), data_field().data_type());
        let blobs = column.as_struct();
        assert_eq!(blobs.null_count(), 1);
        assert!(blobs.is_null(1));
        let data = blobs.column(0).as_binary::<i64>();
        assert_eq!((data.value(0), data.value(2), data.value(3)), (&b"abc"[..], &b""[..], &b"xy"[..]));
        assert!(data.is_null(1) && !data.is_null(2));
        assert_eq!(data.values().len(), 5, "exactly the blobs' bytes");
        assert_eq!(blobs.column(1).null_count(), 4, "no URIs");
    }

    /// All the rows of one file of `kind`.
    fn one_file(kind: Kind, rows: Vec<Row>) -> FileRows {
        let source = SourceInfo { uri: "file:///f".into(), size: 1, modified_ms: None, content_hash: "h".into(), attributes: None };
        FileRows { source, shard_id: "s".into(), kind, rows, last: true }
    }

    #[test]
    fn big_rows_are_batches_of_their_own_whose_data_is_not_copied() {
        use arrow_array::cast::AsArray;
        let big = |b: u8| Bytes::from(vec![b; OWN_BATCH_BYTES]);
        let row = |i: u32, data: Option<Bytes>| Row { chunk_index: i, data, ..Default::default() };
        let (b2, b4, b5) = (big(2), big(4), big(5));
        let rows = vec![
            row(0, Some(Bytes::from_static(b"a"))),
            row(1, None),
            row(2, Some(b2.clone())),
            row(3, Some(Bytes::from_static(b"bb"))),
            row(4, Some(b4.clone())),
            row(5, Some(b5.clone())),
        ];
        let batches = build_batches_for(&table_schema(), &[one_file(Kind::Video, rows)], "job", 0).unwrap();
        let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [2, 1, 1, 1, 1]);
        let chunks: Vec<u32> = batches
            .iter()
            .flat_map(|b| b.column_by_name(col::CHUNK_INDEX).unwrap().as_primitive::<arrow_array::types::UInt32Type>().values().to_vec())
            .collect();
        assert_eq!(chunks, [0, 1, 2, 3, 4, 5], "rows keep their order");
        let data = |b: &RecordBatch| b.column_by_name(col::DATA).unwrap().as_struct().column(0).as_binary::<i64>().clone();
        let first = data(&batches[0]);
        assert_eq!((first.value(0), first.is_null(1)), (&b"a"[..], true));
        assert_eq!(data(&batches[2]).value(0), b"bb");
        for (batch, bytes) in [(&batches[1], &b2), (&batches[3], &b4), (&batches[4], &b5)] {
            let column = data(batch);
            assert_eq!(column.value(0), &bytes[..]);
            assert_eq!(column.values().as_ptr(), bytes.as_ptr(), "the row's own bytes, not a copy");
            assert_eq!(batch.schema(), table_schema());
        }
    }

    #[test]
    fn small_rows_share_batches_of_about_own_batch_bytes() {
        use arrow_array::cast::AsArray;
        let quarter = OWN_BATCH_BYTES / 4;
        let rows: Vec<Row> = (0..10u32)
            .map(|i| Row { chunk_index: i, data: (i != 4).then(|| Bytes::from(vec![i as u8; quarter])), ..Default::default() })
            .collect();
        let batches = build_batches_for(&table_schema(), &[one_file(Kind::Other, rows)], "job", 0).unwrap();
        // Four quarters end a batch; a row without data adds nothing.
        let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [4, 5, 1]);
        let data: Vec<Option<u8>> = batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name(col::DATA).unwrap().as_struct().column(0).as_binary::<i64>().clone();
                (0..column.len()).map(move |i| column.is_valid(i).then(|| column.value(i)[0])).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(data, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map(|i| (i != 4).then_some(i)), "rows keep their order and bytes");
    }

    #[test]
    fn attribute_columns_follow_the_table_and_repeat_per_row() {
        let mut file = FileRows {
            source: SourceInfo { uri: "file:///v.mp4".into(), size: 1, modified_ms: None, content_hash: "h".into(), attributes: Some(r#"{"label":"cat","n":3}"#.into()) },
            shard_id: "s".into(),
            kind: Kind::Video,
            rows: vec![Row::default(), Row { chunk_index: 1, ..Default::default() }],
            last: true,
        };
        let mut other = file.clone();
        other.source.uri = "file:///w.mp4".into();
        other.source.attributes = None;
        other.rows.truncate(1);
        let mut fields: Vec<Field> = table_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("label", DataType::Utf8, true));
        fields.push(Field::new("n", DataType::Int64, true));
        let table = Arc::new(Schema::new(fields));
        file.rows[0].mime_type = "video/mp4".into();
        let batches = build_batches_for(&table, &[file, other], "job", 0).unwrap();
        assert_eq!(batches.len(), 1, "small rows share a batch");
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 3);
        let labels = batch.column_by_name("label").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        assert_eq!((labels.value(0), labels.value(1), labels.is_null(2)), ("cat", "cat", true));
        assert_eq!(batch.schema().field(batch.num_columns() - 1).name(), "n");
    }

    #[test]
    fn batch_has_one_row_per_chunk_with_deterministic_ids() {
        let file = FileRows {
            source: SourceInfo {
                uri: "file:///x.txt".into(),
                size: 3,
                modified_ms: Some(1),
                content_hash: "h".into(),
                attributes: None,
            },
            shard_id: "s".into(),
            kind: Kind::Text,
            rows: (0..3)
                .map(|i| Row {
                    chunk_index: i,
                    mime_type: "text/plain".into(),
                    text: Some(format!("chunk {i}")),
                    ..Default::default()
                })
                .collect(),
            last: true,
        };
        let batch = build_batch(std::slice::from_ref(&file), "job", 0).unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.schema().fields().len(), table_schema().fields().len());
        let ids = batch
            .column_by_name(col::ID)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(ids.value(1), crate::ids::row_id("file:///x.txt", 1));
    }
}

