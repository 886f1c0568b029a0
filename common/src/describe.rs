//! What a table holds: columns, rows per kind, versions with the job or
//! insert that wrote each, and the error ledger. Shared by `sluice inspect`
//! / `sluice tables` and the coordinator's `TableService`.

use std::collections::HashMap;

use arrow_array::{Array, StringArray};
use futures::{StreamExt, TryStreamExt};
use lance::Dataset;

use crate::insert::{type_name, IDEMPOTENCY_KEY};
use crate::ledger::ErrorLedger;
use crate::schema::col;
use crate::storage::TableLocation;
use crate::table::{prop, TableHandle};
use crate::{pb, Error, Result};

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
pub fn columns(ds: &Dataset) -> Vec<pb::ColumnInfo> {
    let schema: arrow_schema::Schema = ds.schema().into();
    schema
        .fields()
        .iter()
        .map(|f| pb::ColumnInfo { name: f.name().clone(), r#type: type_name(f), nullable: f.is_nullable() })
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
) -> Result<pb::TableDescription> {
    let columns = columns(ds);
    let mut rows_per_kind = HashMap::new();
    if columns.iter().any(|c| c.name == col::KIND && c.r#type == "string") {
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
    Ok(pb::TableDescription {
        table_uri: handle.location.uri.clone(),
        name: crate::query::table_name(&handle.location.uri),
        version: ds.version().version,
        rows: ds.count_rows(None).await? as u64,
        columns,
        rows_per_kind,
        failed_files: errors.len() as u64,
        errors: errors
            .into_iter()
            .take(max_errors)
            .map(|e| pb::FailedFile { uri: e.uri, kind: e.kind, reason: e.reason, job_id: e.job_id, recorded_at: e.recorded_at })
            .collect(),
    })
}

/// The newest `limit` versions, newest first, with what wrote each.
pub async fn versions(ds: &Dataset, limit: usize) -> Result<Vec<pb::TableVersion>> {
    let mut all = ds.versions().await?;
    all.sort_by_key(|v| std::cmp::Reverse(v.version));
    all.truncate(limit);
    let described = futures::stream::iter(all.into_iter().map(|v| async move {
        let txn = ds.read_transaction_by_version(v.version).await?;
        let props = txn.as_ref().and_then(|t| t.transaction_properties.clone()).unwrap_or_default();
        let get = |k: &str| props.get(k).cloned().unwrap_or_default();
        let num = |k: &str| props.get(k).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok::<_, Error>(pb::TableVersion {
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
pub async fn list_tables(root: Option<&TableLocation>, others: &[String]) -> Result<Vec<pb::TableInfo>> {
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
        Some(pb::TableInfo { name, table_uri, version: ds.version().version, rows })
    }))
    .buffered(8)
    .filter_map(|t| async move { t })
    .collect::<Vec<_>>()
    .await;
    Ok(infos)
}
