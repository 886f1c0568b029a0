//! Table access and the exactly-once commit protocol.
//!
//! Lance has no idempotent commit: committing the same fragments twice adds
//! their rows twice. Every sluice commit therefore carries a deterministic
//! commit id (as the transaction uuid and as a transaction property). Before
//! committing, and after any commit error, the versions written since the
//! caller's last known version are searched for that id; if it is there the
//! commit already landed and is not repeated.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use futures::{StreamExt, TryStreamExt};
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::{
    CommitBuilder, InsertBuilder, ReadParams, WriteMode, WriteParams,
};
use lance::dataset::builder::DatasetBuilder;
use lance::io::ObjectStoreRegistry;
use lance::session::Session;
use lance::Dataset;
use lance_file::version::LanceFileVersion;
use lance_file::writer::FileWriterOptions;
use lance_table::format::Fragment;

use crate::schema::{col, table_schema};
use crate::storage::{store_params, StorageLimiter, TableLocation};
use crate::{Error, Result};

/// Transaction property keys sluice writes on every commit.
pub mod prop {
    pub const COMMIT_ID: &str = "sluice.commit_id";
    pub const JOB_ID: &str = "sluice.job_id";
    pub const ROWS: &str = "sluice.rows";
    pub const FILES: &str = "sluice.files";
    pub const FAILED: &str = "sluice.failed";
}

/// Blob v2 columns need Lance file format 2.2.
pub const FILE_VERSION: LanceFileVersion = LanceFileVersion::V2_2;

/// Lance caches sized for ingest, not for queries: Lance's defaults (1 GiB
/// of metadata, 6 GiB of index cache per session) would let memory grow with
/// the number of commits a long job makes.
const METADATA_CACHE_BYTES: usize = 8 << 20;
const INDEX_CACHE_BYTES: usize = 4 << 20;

/// The metadata cache of a handle that appends (a job's coordinator and
/// workers). Such a handle reads nothing back but the newest manifest and
/// the transactions since its own, and Lance keeps the manifest it works
/// from anyway; a larger cache only holds older manifests, each as large as
/// the table has fragments (part of why peak RSS grew with the job: with
/// `sluice_worker::map_large_allocations`, 120–122 MiB at 100,000 small
/// files with 8 MiB here, 110–111 MiB with this).
const WRITER_METADATA_CACHE_BYTES: usize = 256 << 10;

/// Bytes a fragment's open file buffers for all its columns together before
/// it encodes a page of one (Lance's default: 8 MiB per column, ~150 MiB
/// for this schema). A fragment gathers many flushes, and its small
/// columns would otherwise stay buffered until it is closed: at 100,000
/// small files the ingest process's median anonymous memory was 35–36 MB
/// with the default and 33–34 MB with this (pages of ~200 KiB per column).
const WRITER_COLUMN_CACHE_BYTES: u64 = 4 << 20;

/// A Lance session (caches) of [`INDEX_CACHE_BYTES`] and `metadata_bytes`.
fn session(metadata_bytes: usize) -> Arc<Session> {
    Arc::new(Session::new(INDEX_CACHE_BYTES, metadata_bytes, Arc::new(ObjectStoreRegistry::default())))
}

/// A table location together with the storage limiter every access goes
/// through and the one Lance session (caches) they share.
#[derive(Clone)]
pub struct TableHandle {
    pub location: TableLocation,
    pub limiter: StorageLimiter,
    session: Arc<Session>,
}

impl std::fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableHandle").field("location", &self.location).finish_non_exhaustive()
    }
}

impl TableHandle {
    pub fn new(location: TableLocation, storage_concurrency: u32) -> Self {
        Self::with_limiter(location, StorageLimiter::new(storage_concurrency))
    }

    /// A handle sharing an existing limiter (one request budget per process).
    pub fn with_limiter(location: TableLocation, limiter: StorageLimiter) -> Self {
        Self { location, limiter, session: session(METADATA_CACHE_BYTES) }
    }

    /// The same handle with caches sized for appending rather than reading
    /// ([`WRITER_METADATA_CACHE_BYTES`]).
    pub fn for_writing(mut self) -> Self {
        self.session = session(WRITER_METADATA_CACHE_BYTES);
        self
    }

    pub fn write_params(&self, mode: WriteMode) -> WriteParams {
        WriteParams {
            mode,
            data_storage_version: Some(FILE_VERSION),
            store_params: Some(store_params(&self.location, &self.limiter)),
            session: Some(self.session.clone()),
            max_rows_per_file: usize::MAX / 2,
            file_writer_options: Some(FileWriterOptions { data_cache_bytes: Some(WRITER_COLUMN_CACHE_BYTES), ..Default::default() }),
            ..Default::default()
        }
    }

    /// Open the table at its latest version.
    pub async fn open(&self) -> Result<Dataset> {
        Ok(DatasetBuilder::from_uri(&self.location.uri)
            .with_read_params(ReadParams {
                store_options: Some(store_params(&self.location, &self.limiter)),
                session: Some(self.session.clone()),
                metadata_cache_size_bytes: METADATA_CACHE_BYTES,
                index_cache_size_bytes: INDEX_CACHE_BYTES,
                ..Default::default()
            })
            .load()
            .await?)
    }

    /// Open the table, creating it empty with the sluice schema if absent.
    pub async fn open_or_create(&self) -> Result<Dataset> {
        self.open_or_create_with(&[]).await
    }

    /// Open the table, creating it empty with the sluice schema plus
    /// `attributes` (per-file columns) if absent. An existing table gains
    /// the attribute columns it lacks (null in its rows so far); one that
    /// has a column of that name with another type is refused.
    pub async fn open_or_create_with(&self, attributes: &[arrow_schema::Field]) -> Result<Dataset> {
        // Creating is a conditional write the object-store client does not
        // retry when it times out: retry here (a retry finds the table if
        // the first attempt landed).
        use backon::Retryable;
        (|| self.open_or_create_once(attributes))
            .retry(crate::retry::storage())
            .when(crate::retry::storage_retryable)
            .notify(|e, after| {
                tracing::warn!(table = %self.location.uri, error = %e, ?after, "cannot open or create the table; retrying");
            })
            .await
    }

    async fn open_or_create_once(&self, attributes: &[arrow_schema::Field]) -> Result<Dataset> {
        match self.open().await {
            Ok(mut ds) => {
                check_schema(&ds)?;
                let have = crate::insert::insert_schema(&ds);
                let mut missing = Vec::new();
                for want in attributes {
                    match have.field_with_name(want.name()) {
                        Ok(f) if crate::insert::type_name(f) == crate::insert::type_name(want) => {}
                        Ok(f) => {
                            return Err(Error::InvalidInput(format!(
                                "table {} has column `{}` of type {}; this job gives it as {}",
                                self.location.uri,
                                want.name(),
                                crate::insert::type_name(f),
                                crate::insert::type_name(want)
                            )))
                        }
                        Err(_) => missing.push(lance_arrow::json::arrow_json_to_lance_json(want)),
                    }
                }
                if !missing.is_empty() {
                    let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
                    let schema = Arc::new(arrow_schema::Schema::new(missing));
                    ds.add_columns(lance::dataset::NewColumnTransform::AllNulls(schema), None, None).await?;
                    tracing::info!(table = %self.location.uri, columns = ?names, "added attribute columns");
                }
                Ok(ds)
            }
            Err(Error::Lance(lance::Error::DatasetNotFound { .. })) => {
                let mut fields: Vec<arrow_schema::Field> = table_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.extend(attributes.iter().cloned());
                let empty = RecordBatch::new_empty(Arc::new(arrow_schema::Schema::new(fields)));
                let params = self.write_params(WriteMode::Create);
                match InsertBuilder::new(self.location.uri.as_str())
                    .with_params(&params)
                    .execute(vec![empty])
                    .await
                {
                    Ok(ds) => Ok(ds),
                    // Someone else created it first.
                    Err(lance::Error::DatasetAlreadyExists { .. }) => self.open().await,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Write rows as uncommitted fragments; the coordinator commits them later.
    pub async fn write_uncommitted(&self, dataset: Arc<Dataset>, batch: RecordBatch) -> Result<Vec<Fragment>> {
        let schema = batch.schema();
        self.write_uncommitted_stream(dataset, schema, futures::stream::iter([Ok(batch)])).await
    }

    /// Write `batches` (of `schema`) into one uncommitted fragment, each
    /// batch as it comes: the fragment's file stays open until the stream
    /// ends, so a fragment can gather many flushes. An error from the
    /// stream abandons the fragment (Lance removes what it wrote).
    pub async fn write_uncommitted_stream(
        &self,
        dataset: Arc<Dataset>,
        schema: arrow_schema::SchemaRef,
        batches: impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
    ) -> Result<Vec<Fragment>> {
        let fitted = fit_json_schema(&dataset, &schema);
        let refit = (!Arc::ptr_eq(&fitted, &schema)).then(|| fitted.clone());
        let batches = batches.map(move |batch| {
            let batch = batch.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            match &refit {
                Some(to_table) => Ok(RecordBatch::try_new(to_table.clone(), batch.columns().to_vec())?),
                None => Ok(batch),
            }
        });
        let stream: datafusion::execution::SendableRecordBatchStream =
            Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(fitted, batches));
        let params = self.write_params(WriteMode::Append);
        let txn = InsertBuilder::new(dataset).with_params(&params).execute_uncommitted_stream(stream).await?;
        match txn.operation {
            Operation::Append { fragments } => Ok(fragments),
            other => Err(Error::InvalidInput(format!("unexpected write operation {other}"))),
        }
    }
}

/// Tables created before `metadata` became a JSON column keep it as plain
/// text: batches for them carry the column without the JSON extension.
/// Returns `schema` itself when nothing needs changing.
fn fit_json_schema(ds: &Dataset, schema: &arrow_schema::SchemaRef) -> arrow_schema::SchemaRef {
    let have: arrow_schema::Schema = ds.schema().into();
    let as_text = |f: &arrow_schema::Field| {
        crate::schema::is_arrow_json(f)
            && have.field_with_name(f.name()).is_ok_and(|h| !lance_arrow::json::is_json_field(h) && !crate::schema::is_arrow_json(h))
    };
    if !schema.fields().iter().any(|f| as_text(f)) {
        return schema.clone();
    }
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| if as_text(f) { f.as_ref().clone().with_metadata(HashMap::new()) } else { f.as_ref().clone() })
        .collect();
    Arc::new(arrow_schema::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Delete the files of fragments that will never be committed (their
/// checkpoints were dropped when their worker was fenced): each data file
/// and the blob sidecar directory beside it. Best effort; returns how many
/// data files were removed.
pub async fn discard_fragments(dataset: &Dataset, fragments: &[Fragment]) -> usize {
    let store = match dataset.object_store(None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the table's store to discard fragments");
            return 0;
        }
    };
    let mut removed = 0;
    for file in fragments.iter().flat_map(|f| &f.files) {
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        if let Some(stem) = name.strip_suffix(".lance") {
            let _ = store.remove_dir_all(dataset.data_dir().join(stem)).await;
        }
        match store.delete(&dataset.data_dir().join(name)).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(file = %file.path, error = %e, "cannot discard an orphaned data file"),
        }
    }
    removed
}

/// Delete a table: every object under its location.
pub async fn remove_table(location: &crate::storage::TableLocation) -> Result<()> {
    use futures::StreamExt;
    if location.is_local() {
        let path = location.uri.trim_start_matches("file://");
        return match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    let (store, path) = location.object_store()?;
    let listed = store.list(Some(&path)).map(|m| m.map(|m| m.location)).boxed();
    store.delete_stream(listed).try_collect::<Vec<_>>().await?;
    Ok(())
}

/// Refuse tables that were not written by sluice (or by an incompatible version).
fn check_schema(ds: &Dataset) -> Result<()> {
    let have: arrow_schema::Schema = ds.schema().into();
    let want = table_schema();
    for field in want.fields() {
        if have.field_with_name(field.name()).is_err() {
            return Err(Error::InvalidInput(format!(
                "table {} exists but has no column `{}`: not a sluice table",
                ds.uri(),
                field.name()
            )));
        }
    }
    Ok(())
}

/// The version at which the commit with `commit_id` landed, searching versions
/// newer than `after_version`.
pub async fn find_commit(ds: &Dataset, commit_id: &str, after_version: u64) -> Result<Option<u64>> {
    let latest = ds.latest_version_id().await?;
    for version in (after_version + 1..=latest).rev() {
        if let Some(txn) = ds.read_transaction_by_version(version).await? {
            if txn.uuid == commit_id
                || txn.transaction_properties.as_ref().and_then(|p| p.get(prop::COMMIT_ID)).map(String::as_str)
                    == Some(commit_id)
            {
                return Ok(Some(version));
            }
        }
    }
    Ok(None)
}

/// Outcome of [`commit_append`].
#[derive(Debug)]
pub struct Committed {
    pub dataset: Dataset,
    pub version: u64,
    /// False when the commit had already landed earlier and was not repeated.
    pub fresh: bool,
}

/// Commit fragments as one Append, exactly once per `commit_id`.
///
/// `known_version` is a version the caller knows to precede any earlier
/// attempt of this commit; only newer versions are searched.
pub async fn commit_append(
    handle: &TableHandle,
    ds: &Dataset,
    commit_id: &str,
    known_version: u64,
    fragments: Vec<Fragment>,
    properties: HashMap<String, String>,
) -> Result<Committed> {
    // Storage faults the object-store client does not retry (a conditional
    // put that timed out is ambiguous) are retried here: each attempt first
    // checks whether an earlier one landed, so the commit happens once.
    use backon::Retryable;
    (|| commit_once(handle, ds, commit_id, known_version, fragments.clone(), properties.clone()))
        .retry(crate::retry::storage())
        .when(crate::retry::storage_retryable)
        .notify(|e, after| tracing::warn!(%commit_id, error = %e, ?after, "commit failed; checking and retrying"))
        .await
}

async fn commit_once(
    handle: &TableHandle,
    ds: &Dataset,
    commit_id: &str,
    known_version: u64,
    fragments: Vec<Fragment>,
    mut properties: HashMap<String, String>,
) -> Result<Committed> {
    let mut latest = ds.clone();
    latest.checkout_latest().await?;
    if let Some(version) = find_commit(&latest, commit_id, known_version).await? {
        let dataset = latest.checkout_version(version).await?;
        return Ok(Committed { dataset, version, fresh: false });
    }
    properties.insert(prop::COMMIT_ID.into(), commit_id.to_string());
    let txn = TransactionBuilder::new(latest.version().version, Operation::Append { fragments })
        .uuid(commit_id.to_string())
        .transaction_properties(Some(Arc::new(properties)))
        .build();
    let result = CommitBuilder::new(Arc::new(latest.clone()))
        .with_store_params(store_params(&handle.location, &handle.limiter))
        .with_session(handle.session.clone())
        .execute(txn)
        .await;
    match result {
        Ok(dataset) => {
            let version = dataset.version().version;
            Ok(Committed { dataset, version, fresh: true })
        }
        Err(err) => {
            // The commit may have landed even though we saw an error.
            let mut again = handle.open().await?;
            again.checkout_latest().await?;
            match find_commit(&again, commit_id, known_version).await? {
                Some(version) => {
                    let dataset = again.checkout_version(version).await?;
                    Ok(Committed { dataset, version, fresh: false })
                }
                None => Err(err.into()),
            }
        }
    }
}

/// What the table already holds of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedFile {
    pub size: u64,
    pub modified_ms: Option<i64>,
}

/// Every source file with rows in the table, keyed by [`crate::ids::uri_key`]
/// (16 bytes a file instead of the whole URI). A file's rows are always
/// committed together, so one row (chunk 0) stands for the whole file.
pub async fn committed_files(ds: &Dataset) -> Result<HashMap<u64, CommittedFile>> {
    // A new table: no query to plan (DataFusion's planner is a good part of
    // what a small ingest would otherwise run and map of the binary).
    if ds.manifest().fragments.is_empty() {
        return Ok(HashMap::new());
    }
    let mut scan = ds.scan();
    scan.project(&[col::SOURCE_URI, col::SOURCE_SIZE, col::SOURCE_MODIFIED])?;
    scan.filter(&format!("{} = 0", col::CHUNK_INDEX))?;
    let mut stream = scan.try_into_stream().await?;
    let mut files = HashMap::new();
    while let Some(batch) = stream.try_next().await? {
        let uris = downcast::<StringArray>(&batch, col::SOURCE_URI)?;
        let sizes = downcast::<UInt64Array>(&batch, col::SOURCE_SIZE)?;
        let modified = downcast::<TimestampMillisecondArray>(&batch, col::SOURCE_MODIFIED)?;
        for i in 0..batch.num_rows() {
            let m = (!modified.is_null(i)).then(|| modified.value(i));
            files.insert(crate::ids::uri_key(uris.value(i)), CommittedFile { size: sizes.value(i), modified_ms: m });
        }
    }
    Ok(files)
}

pub(crate) fn downcast<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::InvalidInput(format!("column {name} missing or of an unexpected type")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{build_batch, FileRows, Kind, Row, SourceInfo};

    pub(crate) fn rows(uri: &str, n: u32) -> FileRows {
        FileRows {
            source: SourceInfo { uri: uri.into(), size: 1, modified_ms: Some(1), content_hash: "h".into(), attributes: None },
            shard_id: "s".into(),
            kind: Kind::Text,
            rows: (0..n).map(|i| Row { chunk_index: i, mime_type: "text/plain".into(), ..Default::default() }).collect(),
            last: true,
        }
    }

    #[tokio::test]
    async fn a_commit_id_is_applied_once_however_often_it_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let handle = TableHandle::new(TableLocation::new(dir.path().to_str().unwrap(), HashMap::new()).unwrap(), 4);
        let ds = handle.open_or_create().await.unwrap();
        let batch = build_batch(&[rows("file:///a", 3)], "job", 0).unwrap();
        let fragments = handle.write_uncommitted(Arc::new(ds.clone()), batch).await.unwrap();
        let known = ds.version().version;

        let first = commit_append(&handle, &ds, "c-1", known, fragments.clone(), HashMap::new()).await.unwrap();
        assert!(first.fresh);
        // The same commit again, e.g. after a lost acknowledgement: not repeated.
        let again = commit_append(&handle, &ds, "c-1", known, fragments.clone(), HashMap::new()).await.unwrap();
        assert!(!again.fresh);
        assert_eq!(again.version, first.version);
        let latest = handle.open().await.unwrap();
        assert_eq!(latest.count_rows(None).await.unwrap(), 3);
        assert_eq!(find_commit(&latest, "c-1", known).await.unwrap(), Some(first.version));
        assert_eq!(find_commit(&latest, "c-2", known).await.unwrap(), None);

        let files = committed_files(&latest).await.unwrap();
        assert_eq!(files.get(&crate::ids::uri_key("file:///a")), Some(&CommittedFile { size: 1, modified_ms: Some(1) }));
        let metadata = arrow_schema::Schema::from(latest.schema()).field_with_name(col::METADATA).unwrap().clone();
        assert_eq!(crate::insert::type_name(&metadata), "json", "new tables hold metadata as JSON");
    }

    #[tokio::test]
    async fn tables_with_text_metadata_still_take_rows() {
        let dir = tempfile::tempdir().unwrap();
        let handle = TableHandle::new(TableLocation::new(dir.path().to_str().unwrap(), HashMap::new()).unwrap(), 4);
        // The table as earlier versions created it: metadata as plain text.
        let fields: Vec<arrow_schema::Field> = table_schema()
            .fields()
            .iter()
            .map(|f| if f.name() == col::METADATA { arrow_schema::Field::new(col::METADATA, arrow_schema::DataType::Utf8, true) } else { f.as_ref().clone() })
            .collect();
        let old = RecordBatch::new_empty(Arc::new(arrow_schema::Schema::new(fields)));
        let params = handle.write_params(WriteMode::Create);
        InsertBuilder::new(handle.location.uri.as_str()).with_params(&params).execute(vec![old]).await.unwrap();

        let ds = handle.open_or_create().await.unwrap();
        let mut file = rows("file:///b", 2);
        file.rows[0].metadata = Some(serde_json::json!({"pages": 3}));
        let batch = build_batch(&[file], "job", 0).unwrap();
        let fragments = handle.write_uncommitted(Arc::new(ds.clone()), batch).await.unwrap();
        let done = commit_append(&handle, &ds, "c-old", ds.version().version, fragments, HashMap::new()).await.unwrap();
        assert_eq!(done.dataset.count_rows(None).await.unwrap(), 2);
        let metadata = arrow_schema::Schema::from(done.dataset.schema()).field_with_name(col::METADATA).unwrap().clone();
        assert_eq!(crate::insert::type_name(&metadata), "string", "the table keeps its column type");
    }
}
