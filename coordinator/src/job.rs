//! One job from start to summary: open the table, start the commit
//! reconciler, plan the inputs into shards and queue them in the job's shard
//! book (workers pull them from there), wait for the workers, commit the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sluice_common::ledger::ErrorLedger;
use sluice_common::settings::Settings;
use sluice_common::storage::{StorageLimiter, TableLocation};
use sluice_common::table::{committed_files, CommittedFile, TableHandle};
use sluice_common::protocol::{Checkpoint, FileFailed, FileRef};
use sluice_common::{ids, Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterJob;
use crate::manifest::{self, Inputs, Planned};
use crate::planner::ShardPlanner;
use crate::progress::{peak_rss_bytes, JobProgress, JobStatus, JobSummary};
use crate::reconciler::{CommitGuard, CommitObserver, CommitReconciler, ReconcilerMsg};

/// What a job is: its table, inputs and settings.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub job_id: Option<String>,
    pub table: TableLocation,
    pub inputs: Inputs,
    pub settings: Settings,
    pub max_errors: Option<u64>,
    pub shard_files: usize,
    pub shard_bytes: u64,
    /// Columns of per-file values; empty: inferred from the inputs.
    pub columns: Vec<sluice_common::insert::ColumnDef>,
    /// Share this limiter with the process's workers, so that
    /// `storage_concurrency` bounds every request of one process.
    pub limiter: Option<StorageLimiter>,
}

impl JobPlan {
    pub fn new(table: TableLocation, inputs: Inputs, settings: Settings) -> Self {
        Self { job_id: None, table, inputs, settings, max_errors: None, shard_files: 256, shard_bytes: 1 << 30, columns: Vec::new(), limiter: None }
    }
}

/// Failed files listed in a summary; all of them are in the error ledger.
pub const MAX_SUMMARY_ERRORS: usize = 100;

/// Run `job`, queueing its shards in `book`, until every shard is committed
/// (or the job stops). `guard` is asked before every write to the table: a
/// coordinator that no longer leads must not write.
pub async fn run_job(job: &JobPlan, book: Arc<ClusterJob>, guard: CommitGuard) -> Result<JobSummary> {
    let progress = book.progress.clone();
    let started = Instant::now();
    job.settings.validate()?;
    manifest::validate(&job.inputs)?;
    let job_id = job.job_id.clone().unwrap_or_else(ids::new_job_id);
    let columns = match job.columns.is_empty() {
        true => manifest::attribute_columns(&job.inputs).await?,
        false => job.columns.clone(),
    };
    let attributes = sluice_common::attributes::fields(&columns)?;
    let table = match &job.limiter {
        Some(limiter) => TableHandle::with_limiter(job.table.clone(), limiter.clone()),
        None => TableHandle::new(job.table.clone(), job.settings.storage_concurrency),
    }
    .for_writing();
    let dataset = table.open_or_create_with(&attributes).await?;
    let committed = committed_files(&dataset).await?;
    tracing::info!(%job_id, table = %job.table.uri, already = committed.len(), "job starting");

    let ledger = ErrorLedger::new(&job.table)?;
    let (tx, rx) = mpsc::channel(16);
    let mut reconciler = CommitReconciler::new(
        table.clone(),
        dataset.clone(),
        job_id.clone(),
        job.settings.commit_every,
        job.max_errors,
        ledger.clone(),
        progress.clone(),
    );
    // Commits tell the shard book which files and shards are done.
    let observer = {
        let book = book.clone();
        Arc::new(move |cps: &[Checkpoint]| book.committed(cps)) as CommitObserver
    };
    reconciler = reconciler.with_observer(observer).with_guard(guard.clone());
    let reconciling = tokio::spawn(reconciler.run(rx));
    book.attach(tx.clone());

    let target = Target { table: &table, committed: &committed, attributes: &attributes, guard };
    let planned = plan_and_assign(job, &job_id, &target, &book, &tx, &progress).await;
    if let Err(e) = &planned {
        // Workers stop and flush what they have.
        progress.abort(format!("planning failed: {e}"));
    }
    let drained = book.drain().await;
    let storage = table.limiter.stats();

    let (reply, done) = oneshot::channel();
    let complete = planned.is_ok() && drained.is_ok() && progress.abort_reason().is_none();
    let finished = match tx.send(ReconcilerMsg::Finish { complete, reply }).await {
        Ok(()) => done.await.unwrap_or_else(|_| Err(Error::Internal("reconciler stopped".into()))),
        Err(_) => Err(Error::Internal("reconciler stopped".into())),
    };
    let reconciled = reconciling.await.map_err(|e| Error::Internal(e.to_string()))?;
    planned?;
    drained?;
    reconciled?;
    finished?;

    let p = &progress;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mut errors = ledger.list(Some(&job_id)).await?;
    errors.truncate(MAX_SUMMARY_ERRORS);
    let failed = JobProgress::get(&p.files_failed);
    let abort_reason = p.abort_reason();
    let status = match (&abort_reason, failed) {
        (Some(_), _) => JobStatus::Aborted,
        (None, 0) => JobStatus::Succeeded,
        (None, _) => JobStatus::CompletedWithErrors,
    };
    let done = JobProgress::get(&p.files_done);
    let rows = JobProgress::get(&p.rows_committed);
    let bytes = JobProgress::get(&p.bytes);
    Ok(JobSummary {
        job_id,
        table: job.table.uri.clone(),
        status,
        abort_reason,
        files_planned: JobProgress::get(&p.files_planned),
        files_skipped: JobProgress::get(&p.files_skipped),
        files_ingested: done,
        files_failed: failed,
        rows,
        bytes,
        seconds: secs,
        files_per_sec: done as f64 / secs,
        rows_per_sec: rows as f64 / secs,
        mb_per_sec: bytes as f64 / 1e6 / secs,
        table_version: p.version.load(std::sync::atomic::Ordering::Relaxed),
        commits: JobProgress::get(&p.commits),
        fragments: JobProgress::get(&p.fragments),
        flushes: p.flushes(),
        errors,
        peak_rss_bytes: peak_rss_bytes(),
        peak_concurrent_normalizations: 0,
        peak_media_normalizations: 0,
        peak_pdf_normalizations: 0,
        peak_rows_in_flight_bytes: 0,
        storage_requests: storage.requests(),
        storage_peak_in_flight: storage.peak_in_flight() as u64,
    })
}

/// The table a job plans against: what it holds, its per-file value
/// columns, and the check every write of the job passes first.
pub(crate) struct Target<'a> {
    pub table: &'a TableHandle,
    /// Files already in the table (by URI key).
    pub committed: &'a HashMap<u64, CommittedFile>,
    pub attributes: &'a [arrow_schema::Field],
    /// Asked before rows of changed files are removed, as before each
    /// commit: a coordinator that no longer leads must not write.
    pub guard: CommitGuard,
}

/// Walk the inputs, skip files the table already has unchanged, and hand
/// shards to the worker.
pub(crate) async fn plan_and_assign(
    job: &JobPlan,
    job_id: &str,
    target: &Target<'_>,
    book: &ClusterJob,
    reconciler: &mpsc::Sender<ReconcilerMsg>,
    progress: &Arc<JobProgress>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel(1024);
    let inputs = job.inputs.clone();
    let exclude = job.table.is_local().then(|| PathBuf::from(job.table.uri.trim_start_matches("file://")));
    let walking = tokio::spawn(async move {
        let local = inputs.clone();
        let local_tx = tx.clone();
        tokio::task::spawn_blocking(move || manifest::walk(&local, exclude, local_tx))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        manifest::walk_remote(&inputs, tx).await
    });

    let mut planner = ShardPlanner::new(job_id, job.shard_files, job.shard_bytes);
    let mut bad = Vec::new();
    let mut shards = Vec::new();
    while let Some(item) = rx.recv().await {
        if progress.abort_reason().is_some() {
            break;
        }
        let item = match item {
            Planned::File(file) if !file.attributes.is_empty() => checked_attributes(file, target.attributes),
            other => other,
        };
        match item {
            Planned::Bad { uri, reason } => {
                JobProgress::add(&progress.files_rejected, 1);
                bad.push(FileFailed { uri, shard_id: String::new(), kind: None, reason });
                if bad.len() >= 256 {
                    send_failures(reconciler, std::mem::take(&mut bad)).await?;
                }
            }
            Planned::File(mut file) => {
                JobProgress::add(&progress.files_planned, 1);
                match target.committed.get(&ids::uri_key(&file.uri)) {
                    Some(c) if c.size == file.size && c.modified_ms == Some(file.modified_ms) => {
                        JobProgress::add(&progress.files_skipped, 1);
                        continue;
                    }
                    Some(_) => file.replaces_previous = true,
                    None => {}
                }
                if let Some(shard) = planner.push(file) {
                    shards.push(shard);
                }
            }
        }
        for (id, files) in shards.drain(..) {
            dispatch(target, book, id, files).await?;
        }
    }
    drop(rx);
    walking.await.map_err(|e| Error::Internal(e.to_string()))??;
    if !bad.is_empty() {
        send_failures(reconciler, bad).await?;
    }
    for (id, files) in planner.finish() {
        if progress.abort_reason().is_some() {
            break;
        }
        dispatch(target, book, id, files).await?;
    }
    progress.planning_done.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// A file whose per-file values fit the job's columns, with the values
/// normalized; otherwise a failed file saying why.
fn checked_attributes(mut file: FileRef, columns: &[arrow_schema::Field]) -> Planned {
    let normalized = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&file.attributes)
        .map_err(|e| format!("per-file values are not a JSON object: {e}"))
        .and_then(|values| sluice_common::attributes::normalize(columns, &values));
    match normalized {
        Ok(text) => {
            file.attributes = if text == "{}" { String::new() } else { text };
            Planned::File(file)
        }
        Err(reason) => Planned::Bad { uri: file.uri, reason },
    }
}

/// Delete the rows of `files` marked as replacing an earlier version.
async fn remove_replaced(target: &Target<'_>, files: &[FileRef]) -> Result<()> {
    let replaced: Vec<&str> = files.iter().filter(|f| f.replaces_previous).map(|f| f.uri.as_str()).collect();
    if replaced.is_empty() {
        return Ok(());
    }
    (target.guard)().await?;
    let list = replaced.iter().map(|u| format!("'{}'", u.replace('\'', "''"))).collect::<Vec<_>>().join(", ");
    let mut ds = target.table.open().await?;
    ds.delete(&format!("{} IN ({list})", sluice_common::schema::col::SOURCE_URI)).await?;
    tracing::info!(files = replaced.len(), "removed rows of changed files");
    Ok(())
}

async fn send_failures(reconciler: &mpsc::Sender<ReconcilerMsg>, failed: Vec<FileFailed>) -> Result<()> {
    reconciler
        .send(ReconcilerMsg::PlanningFailed(failed))
        .await
        .map_err(|_| Error::Internal("reconciler stopped".into()))
}

/// Remove rows of files that changed since they were ingested, then assign.
/// If the process dies between the two, the file is simply absent and the
/// next run ingests it. The removal passes the job's guard first: a
/// coordinator that lost the lead could otherwise delete rows its successor
/// has since written again.
async fn dispatch(target: &Target<'_>, book: &ClusterJob, shard_id: String, files: Vec<FileRef>) -> Result<()> {
    remove_replaced(target, &files).await?;
    if !book.queue_shard(shard_id, files).await {
        tracing::debug!("job stopping: shard not queued");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::schema::{build_batch, FileRows, Kind, Row, SourceInfo};
    use sluice_common::storage::TableLocation;

    /// A local table holding one row of `uri`.
    async fn table_with(dir: &std::path::Path, uri: &str) -> TableHandle {
        let table = TableHandle::new(TableLocation::new(dir.to_str().unwrap(), HashMap::new()).unwrap(), 4);
        let mut ds = table.open_or_create().await.unwrap();
        let rows = FileRows {
            source: SourceInfo { uri: uri.into(), size: 1, modified_ms: Some(1), content_hash: "h".into(), attributes: None },
            shard_id: "s".into(),
            kind: Kind::Text,
            rows: vec![Row { mime_type: "text/plain".into(), ..Default::default() }],
            last: true,
        };
        let batch = build_batch(&[rows], "job", 0).unwrap();
        let schema = batch.schema();
        ds.append(arrow_array::RecordBatchIterator::new(vec![Ok(batch)], schema), None).await.unwrap();
        table
    }

    #[tokio::test]
    async fn rows_of_changed_files_are_removed_only_past_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let uri = "file:///data/it's.txt";
        let table = table_with(dir.path(), uri).await;
        let committed = HashMap::new();
        let changed = [FileRef { uri: uri.into(), replaces_previous: true, ..Default::default() }];
        let count = || async { table.open().await.unwrap().count_rows(None).await.unwrap() };

        // A coordinator that no longer leads removes nothing.
        let refuse: CommitGuard = Arc::new(|| Box::pin(async { Err(Error::Unavailable("no longer leads".into())) }));
        let target = Target { table: &table, committed: &committed, attributes: &[], guard: refuse };
        let err = remove_replaced(&target, &changed).await.unwrap_err();
        assert!(err.to_string().contains("no longer leads"), "{err}");
        assert_eq!(count().await, 1);

        // Files not marked as replacing anything are never touched.
        let allow: CommitGuard = Arc::new(|| Box::pin(async { Ok(()) }));
        let target = Target { guard: allow, ..target };
        let unchanged = [FileRef { uri: uri.into(), ..Default::default() }];
        remove_replaced(&target, &unchanged).await.unwrap();
        assert_eq!(count().await, 1);

        remove_replaced(&target, &changed).await.unwrap();
        assert_eq!(count().await, 0);
    }
}
