//! What a table holds: columns, rows per kind, versions with the job or
//! insert that wrote each, and the error ledger. Shared by `sluice inspect`
//! / `sluice tables` and the coordinator's `TableService`.

use std::collections::HashMap;

use arrow_array::{Array, StringArray};
use futures::{StreamExt, TryStreamExt};
use lance::Dataset;

use serde::Serialize;

use crate::insert::{type_name, IDEMPOTENCY_KEY};
use crate::ledger::{ErrorLedger, ErrorRecord};
use crate::schema::col;
use crate::storage::TableLocation;
use crate::table::{prop, TableHandle};
use crate::{pb, Error, Result};

/// A column as users name its type (`json`, `blob`, `int64`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
}

/// What a table holds.
#[derive(Debug, Clone, Serialize)]
pub struct TableDescription {
    pub table_uri: String,
    /// The table's name in SQL.
    pub name: String,
    pub version: u64,
    pub rows: u64,
    pub columns: Vec<ColumnInfo>,
    /// Rows per `kind` (tables written by ingest jobs).
    pub rows_per_kind: HashMap<String, u64>,
    /// Failed files in all (`errors` may list fewer).
    pub failed_files: u64,
    pub errors: Vec<ErrorRecord>,
}

/// One version of a table and what wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableVersion {
    pub version: u64,
    /// RFC 3339.
    pub timestamp: String,
    /// Append, Overwrite, Delete, ...
    pub operation: String,
    /// The ingest job that wrote it, if one did.
    pub job_id: String,
    /// Rows and files the commit added and failed files it recorded
    /// (sluice commits).
    pub rows: u64,
    pub files: u64,
    pub failed: u64,
    pub commit_id: String,
    /// The insert's idempotency key, if the version is an insert with one.
    pub idempotency_key: String,
}

/// A table found under a storage root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub table_uri: String,
    pub version: u64,
    pub rows: u64,
}

/// Open a table, with a not-found error that names it.
pub async fn open(handle: &TableHandle) -> Result<Dataset> {
    match handle.open().await {
        Err(Error::Lance(lance::Error::DatasetNotFound { .. })) => {
            Err(Error::NotFound(format!("no table at {}", handle.location.uri)))
        }
        other => other,
    }
}

/// The table's columns as users name their types.
pub fn columns(ds: &Dataset) -> Vec<ColumnInfo> {
    let schema: arrow_schema::Schema = ds.schema().into();
    schema
        .fields()
        .iter()
        .map(|f| ColumnInfo { name: f.name().clone(), ty: type_name(f), nullable: f.is_nullable() })
        .collect()
}

/// Schema, row counts, rows per kind and failed files of the table `ds`
/// opened from `handle`. Failed files are those of `job_id`, or else the
/// latest failure of each file the table does not hold now; at most
/// `max_errors` are listed.
pub async fn describe(
    handle: &TableHandle,
    ds: &Dataset,
    job_id: Option<&str>,
    max_errors: usize,
) -> Result<TableDescription> {
    let columns = columns(ds);
    let mut rows_per_kind = HashMap::new();
    if columns.iter().any(|c| c.name == col::KIND && c.ty == "string") {
        let mut scan = ds.scan();
        scan.project(&[col::KIND])?;
        let mut stream = scan.try_into_stream().await?;
        while let Some(batch) = stream.try_next().await? {
            let kinds = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::InvalidInput("kind column is not text".into()))?;
            for k in kinds.iter().flatten() {
                *rows_per_kind.entry(k.to_string()).or_insert(0) += 1;
            }
        }
    }
    let ledger = ErrorLedger::new(&handle.location)?;
    let errors = match job_id {
        Some(job) => ledger.list(Some(job)).await?,
        None => {
            let latest = ledger.latest().await?;
            if latest.is_empty() || !columns.iter().any(|c| c.name == col::SOURCE_URI) {
                latest
            } else {
                // A file that failed once and is in the table now was fixed and re-ingested.
                let present = crate::table::committed_files(ds).await?;
                latest.into_iter().filter(|e| !present.contains_key(&crate::ids::uri_key(&e.uri))).collect()
            }
        }
    };
    Ok(TableDescription {
        table_uri: handle.location.uri.clone(),
        name: crate::query::table_name(&handle.location.uri),
        version: ds.version().version,
        rows: ds.count_rows(None).await? as u64,
        columns,
        rows_per_kind,
        failed_files: errors.len() as u64,
        errors: errors.into_iter().take(max_errors).collect(),
    })
}

/// The newest `limit` versions, newest first, with what wrote each.
pub async fn versions(ds: &Dataset, limit: usize) -> Result<Vec<TableVersion>> {
    let mut all = ds.versions().await?;
    all.sort_by_key(|v| std::cmp::Reverse(v.version));
    all.truncate(limit);
    let described = futures::stream::iter(all.into_iter().map(|v| async move {
        let txn = ds.read_transaction_by_version(v.version).await?;
        let props = txn.as_ref().and_then(|t| t.transaction_properties.clone()).unwrap_or_default();
        let get = |k: &str| props.get(k).cloned().unwrap_or_default();
        let num = |k: &str| props.get(k).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok::<_, Error>(TableVersion {
            version: v.version,
            timestamp: v.timestamp.to_rfc3339(),
            operation: txn.as_ref().map_or_else(String::new, |t| t.operation.to_string()),
            job_id: get(prop::JOB_ID),
            rows: num(prop::ROWS),
            files: num(prop::FILES),
            failed: num(prop::FAILED),
            commit_id: get(prop::COMMIT_ID),
            idempotency_key: get(IDEMPOTENCY_KEY),
        })
    }))
    .buffered(8)
    .try_collect()
    .await?;
    Ok(described)
}

/// Most tables listed under a root.
const MAX_TABLES: usize = 1000;

/// Tables directly below `root` (directories holding a Lance table), plus
/// `others` given by URI (e.g. tables jobs wrote elsewhere).
pub async fn list_tables(root: Option<&TableLocation>, others: &[String]) -> Result<Vec<TableInfo>> {
    let mut found: Vec<(String, TableLocation)> = Vec::new();
    if let Some(root) = root {
        let (store, base) = root.object_store()?;
        let listing = store.list_with_delimiter(Some(&base)).await?;
        for dir in listing.common_prefixes.into_iter().take(MAX_TABLES) {
            let versions = dir.clone().join("_versions");
            if store.list(Some(&versions)).next().await.is_none() {
                continue;
            }
            let name = dir.filename().unwrap_or_default().to_string();
            let uri = format!("{}/{name}", root.uri.trim_end_matches('/'));
            found.push((name, TableLocation::new(&uri, root.storage_options.clone())?));
        }
    }
    for uri in others {
        if found.iter().all(|(_, l)| &l.uri != uri) {
            let mut options = HashMap::new();
            crate::storage::complete_options(uri, &mut options);
            found.push((uri.clone(), TableLocation::new(uri, options)?));
        }
    }
    let infos = futures::stream::iter(found.into_iter().map(|(name, location)| async move {
        let table_uri = location.uri.clone();
        let ds = TableHandle::new(location, 8).open().await.ok()?;
        let rows = ds.count_rows(None).await.ok()? as u64;
        Some(TableInfo { name, table_uri, version: ds.version().version, rows })
    }))
    .buffered(8)
    .filter_map(|t| async move { t })
    .collect::<Vec<_>>()
    .await;
    Ok(infos)
}

// The protobuf form, for the coordinator's `TableService` and its clients.

impl From<ColumnInfo> for pb::ColumnInfo {
    fn from(c: ColumnInfo) -> Self {
        pb::ColumnInfo { name: c.name, r#type: c.ty, nullable: c.nullable }
    }
}

impl From<pb::ColumnInfo> for ColumnInfo {
    fn from(c: pb::ColumnInfo) -> Self {
        ColumnInfo { name: c.name, ty: c.r#type, nullable: c.nullable }
    }
}

impl From<ErrorRecord> for pb::FailedFile {
    fn from(e: ErrorRecord) -> Self {
        pb::FailedFile { uri: e.uri, kind: e.kind, reason: e.reason, job_id: e.job_id, recorded_at: e.recorded_at }
    }
}

impl From<pb::FailedFile> for ErrorRecord {
    fn from(e: pb::FailedFile) -> Self {
        ErrorRecord { job_id: e.job_id, uri: e.uri, kind: e.kind, reason: e.reason, recorded_at: e.recorded_at }
    }
}

impl From<TableDescription> for pb::TableDescription {
    fn from(t: TableDescription) -> Self {
        pb::TableDescription {
            table_uri: t.table_uri,
            name: t.name,
            version: t.version,
            rows: t.rows,
            columns: t.columns.into_iter().map(Into::into).collect(),
            rows_per_kind: t.rows_per_kind,
            failed_files: t.failed_files,
            errors: t.errors.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::TableDescription> for TableDescription {
    fn from(t: pb::TableDescription) -> Self {
        TableDescription {
            table_uri: t.table_uri,
            name: t.name,
            version: t.version,
            rows: t.rows,
            columns: t.columns.into_iter().map(Into::into).collect(),
            rows_per_kind: t.rows_per_kind,
            failed_files: t.failed_files,
            errors: t.errors.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<TableVersion> for pb::TableVersion {
    fn from(v: TableVersion) -> Self {
        pb::TableVersion {
            version: v.version,
            timestamp: v.timestamp,
            operation: v.operation,
            job_id: v.job_id,
            rows: v.rows,
            files: v.files,
            failed: v.failed,
            commit_id: v.commit_id,
            idempotency_key: v.idempotency_key,
        }
    }
}

impl From<pb::TableVersion> for TableVersion {
    fn from(v: pb::TableVersion) -> Self {
        TableVersion {
            version: v.version,
            timestamp: v.timestamp,
            operation: v.operation,
            job_id: v.job_id,
            rows: v.rows,
            files: v.files,
            failed: v.failed,
            commit_id: v.commit_id,
            idempotency_key: v.idempotency_key,
        }
    }
}

impl From<TableInfo> for pb::TableInfo {
    fn from(t: TableInfo) -> Self {
        pb::TableInfo { name: t.name, table_uri: t.table_uri, version: t.version, rows: t.rows }
    }
}

impl From<pb::TableInfo> for TableInfo {
    fn from(t: pb::TableInfo) -> Self {
        TableInfo { name: t.name, table_uri: t.table_uri, version: t.version, rows: t.rows }
    }
}
