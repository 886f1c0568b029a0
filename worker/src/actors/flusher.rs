//! Flusher: buffers rows and writes them as uncommitted Lance fragments when
//! `flush_every` rows or `flush_bytes` bytes are buffered, when rows have
//! waited `flush_interval_secs` (slow files, a trickle), when every file
//! of the assigned shards is accounted for (so the coordinator learns a shard
//! finished without waiting for rows that may never come), or on drain. Each
//! flush carries its [`FlushReason`] into the checkpoint and metrics. Writes
//! run concurrently, at most [`MAX_UPLOADS`] at once, and their results go to
//! the checkpoint publisher tagged with a sequence number so checkpoints stay
//! in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lance::Dataset;
use lance_table::format::Fragment;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_common::protocol::{FileCompleted, FileFailed, FlushReason};
use sluice_common::schema::{build_batch_for, FileRows};
use sluice_common::settings::Settings;
use sluice_common::table::TableHandle;
use tokio::sync::Semaphore;

use super::budget::{Grant, RowBudget};
use super::publisher::{CheckpointDraft, PublisherMsg};
use crate::PipelineError;

/// Fragment writes in flight at once; bounds memory to this many buffers.
/// Four keep an object store busier (a write waits on the store for one
/// step after another), but each write in flight costs Lance's writer tens
/// of MB beyond its rows: measured against moto with 4 MB files, 0.72x a
/// bare multipart upload instead of 0.61-0.64x, at 50-110 MB more peak RSS.
pub const MAX_UPLOADS: usize = 2;

pub enum FlusherMsg {
    /// A shard's files are about to arrive.
    ShardStarted { shard_id: String, generation: u64, files: usize },
    /// Rows of one file (or part of one), held against the row budget
    /// until the write that carries them has finished.
    Append(FileRows, Grant, RpcReplyPort<()>),
    /// A file that produced no rows.
    Fail(FileFailed, RpcReplyPort<()>),
    /// Write everything buffered and wait until every write is published.
    Drain(RpcReplyPort<Result<(), PipelineError>>),
    /// `flush_interval_secs` after the first rows since flush `epoch`.
    Interval { epoch: u64 },
}

pub struct Flusher {
    pub budget: RowBudget,
    pub settings: Arc<Settings>,
    pub table: TableHandle,
    pub dataset: Arc<Dataset>,
    pub job_id: String,
    pub publisher: ActorRef<PublisherMsg>,
}

#[derive(Default)]
pub struct FlusherState {
    buffer: Vec<FileRows>,
    /// The row budget the buffered rows hold.
    grants: Vec<Grant>,
    rows: usize,
    bytes: usize,
    open_files: HashSet<String>,
    completed: Vec<FileCompleted>,
    failed: Vec<FileFailed>,
    remaining: HashMap<String, usize>,
    generations: HashMap<String, u64>,
    finished: Vec<String>,
    per_file_rows: HashMap<String, (u64, u64)>,
    seq: u64,
    uploads: Option<Arc<Semaphore>>,
    /// An interval flush is scheduled for the rows since the last flush.
    timer_set: bool,
}

impl FlusherState {
    fn file_accounted(&mut self, shard_id: &str) {
        if let Some(left) = self.remaining.get_mut(shard_id) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.remaining.remove(shard_id);
                self.finished.push(shard_id.to_string());
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.rows > 0 || !self.failed.is_empty() || !self.finished.is_empty() || !self.completed.is_empty()
    }
}

impl Actor for Flusher {
    type Msg = FlusherMsg;
    type State = FlusherState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<FlusherState, ActorProcessingErr> {
        Ok(FlusherState { uploads: Some(Arc::new(Semaphore::new(MAX_UPLOADS))), ..Default::default() })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, st: &mut FlusherState) -> Result<(), ActorProcessingErr> {
        if matches!(msg, FlusherMsg::Append(..) | FlusherMsg::Fail(..)) && !st.timer_set {
            // The first rows since the last flush wait at most the interval.
            st.timer_set = true;
            let epoch = st.seq;
            let after = std::time::Duration::from_secs(u64::from(self.settings.flush_interval_secs));
            myself.send_after(after, move || FlusherMsg::Interval { epoch });
        }
        match msg {
            FlusherMsg::Interval { epoch } => {
                // Stale if a flush happened since it was set.
                if epoch == st.seq && st.has_pending() {
                    self.flush(st, FlushReason::Interval).await?;
                } else if epoch == st.seq {
                    st.timer_set = false;
                }
            }
            FlusherMsg::ShardStarted { shard_id, generation, files } => {
                st.generations.insert(shard_id.clone(), generation);
                if files == 0 {
                    st.finished.push(shard_id);
                    self.flush_if_idle(st).await?;
                } else {
                    st.remaining.insert(shard_id, files);
                }
            }
            FlusherMsg::Append(file, grant, reply) => {
                st.grants.push(grant);
                let uri = file.source.uri.clone();
                let entry = st.per_file_rows.entry(uri.clone()).or_default();
                entry.0 += file.rows.len() as u64;
                entry.1 = file.source.size;
                st.rows += file.rows.len();
                st.bytes += file.rows.iter().map(|r| r.approx_bytes()).sum::<usize>();
                if file.last {
                    st.open_files.remove(&uri);
                    let (rows, bytes) = st.per_file_rows.remove(&uri).unwrap_or_default();
                    st.completed.push(FileCompleted {
                        uri,
                        shard_id: file.shard_id.clone(),
                        kind: file.kind,
                        rows,
                        bytes,
                    });
                    st.file_accounted(&file.shard_id);
                } else {
                    st.open_files.insert(uri);
                }
                st.buffer.push(file);
                if st.rows >= self.settings.flush_every as usize {
                    self.flush(st, FlushReason::Rows).await?;
                } else if st.bytes as u64 >= self.budget.flush_bytes(self.settings.flush_bytes) {
                    self.flush(st, FlushReason::Bytes).await?;
                } else {
                    self.flush_if_idle(st).await?;
                }
                let _ = reply.send(());
            }
            FlusherMsg::Fail(failed, reply) => {
                st.file_accounted(&failed.shard_id);
                st.failed.push(failed);
                if st.failed.len() >= self.settings.flush_every as usize {
                    self.flush(st, FlushReason::Rows).await?;
                } else {
                    self.flush_if_idle(st).await?;
                }
                let _ = reply.send(());
            }
            FlusherMsg::Drain(reply) => {
                // The queue is closed and every normalizer has ended: a file
                // whose last rows never came was cut off by a failure. Its
                // rows must not be committed, so nothing more is flushed and
                // the drain fails (the job commits up to the last clean
                // checkpoint; a rerun redoes the rest).
                if !st.open_files.is_empty() {
                    let mut cut: Vec<String> = st.open_files.iter().cloned().collect();
                    cut.sort_unstable();
                    let result = Err(PipelineError::CutOff(cut));
                    let uploads = st.uploads.clone().expect("set in pre_start");
                    drop(uploads.acquire_many(MAX_UPLOADS as u32).await?);
                    let _ = reply.send(result);
                    return Ok(());
                }
                if st.has_pending() {
                    self.flush(st, FlushReason::Drain).await?;
                }
                // Wait for every write to finish; their results reach the
                // publisher before this drain request does.
                let uploads = st.uploads.clone().expect("set in pre_start");
                let all = uploads.acquire_many(MAX_UPLOADS as u32).await?;
                drop(all);
                let result = self
                    .publisher
                    .call(PublisherMsg::Drain, None)
                    .await?
                    .success_or(ractor::MessagingErr::<()>::ChannelClosed)
                    .map_err(|e| PipelineError::Gone(format!("the checkpoint publisher: {e}")))
                    .and_then(|r| r);
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

impl Flusher {
    async fn flush_if_idle(&self, st: &mut FlusherState) -> Result<(), ActorProcessingErr> {
        if st.remaining.is_empty() && st.open_files.is_empty() && st.has_pending() {
            self.flush(st, FlushReason::ShardsDone).await?;
        }
        Ok(())
    }

    async fn flush(&self, st: &mut FlusherState, reason: FlushReason) -> Result<(), ActorProcessingErr> {
        st.seq += 1;
        st.timer_set = false;
        metrics::counter!("sluice_worker_flushes_total", "reason" => reason.as_str()).increment(1);
        tracing::debug!(seq = st.seq, rows = st.rows, reason = reason.as_str(), "flush");
        let files = std::mem::take(&mut st.buffer);
        let grants = std::mem::take(&mut st.grants);
        let completed = std::mem::take(&mut st.completed);
        let failed = std::mem::take(&mut st.failed);
        let shards_finished = std::mem::take(&mut st.finished);
        // Only the shards this checkpoint speaks of; finished ones are forgotten.
        let mentioned = completed.iter().map(|c| &c.shard_id).chain(failed.iter().map(|f| &f.shard_id)).chain(&shards_finished);
        let shard_generations =
            mentioned.filter_map(|id| st.generations.get(id).map(|g| (id.clone(), *g))).collect();
        for id in &shards_finished {
            st.generations.remove(id);
        }
        let draft = CheckpointDraft {
            seq: st.seq,
            rows: st.rows as u64,
            bytes: files.iter().filter(|f| f.last).map(|f| f.source.size).sum(),
            completed,
            failed,
            clean: st.open_files.is_empty(),
            shards_finished,
            shard_generations,
            reason,
        };
        st.rows = 0;
        st.bytes = 0;
        let permit = st.uploads.clone().expect("set in pre_start").acquire_owned().await?;
        let (table, dataset, job_id, publisher) =
            (self.table.clone(), self.dataset.clone(), self.job_id.clone(), self.publisher.clone());
        tokio::spawn(async move {
            // Supervised: even a panicking write yields a result, so the
            // publisher never waits for a sequence number that cannot come.
            use futures::FutureExt;
            let written = std::panic::AssertUnwindSafe(write(&table, dataset, &job_id, files)).catch_unwind().await;
            let result = written.unwrap_or_else(|_| Err(PipelineError::Write("the fragment write panicked".into())));
            if let Err(e) = &result {
                tracing::error!(seq = draft.seq, error = %e, "fragment write failed");
            }
            // Sent before the permit is released, so a drain that waited for
            // every permit is queued behind this result.
            let _ = publisher.send_message(PublisherMsg::Written { draft, result });
            // The rows are written (or lost with the job): their budget is free.
            drop(grants);
            drop(permit);
        });
        Ok(())
    }
}

async fn write(table: &TableHandle, dataset: Arc<Dataset>, job_id: &str, files: Vec<FileRows>) -> Result<Vec<Fragment>, PipelineError> {
    if files.iter().all(|f| f.rows.is_empty()) {
        return Ok(Vec::new());
    }
    if sluice_common::failpoint::fails("fragment_write") {
        return Err(PipelineError::Write("injected fragment write failure (failpoint fragment_write)".into()));
    }
    let job = job_id.to_string();
    let now = chrono::Utc::now().timestamp_micros();
    let rows: usize = files.iter().map(|f| f.rows.len()).sum();
    let schema = sluice_common::insert::insert_schema(&dataset);
    let batch = tokio::task::spawn_blocking(move || build_batch_for(&schema, &files, &job, now))
        .await
        .map_err(|e| PipelineError::Write(format!("building the batch: {e}")))?
        .map_err(|e| PipelineError::Write(e.to_string()))?;
    let bytes = batch.get_array_memory_size();
    let fragments = table.write_uncommitted(dataset, batch).await.map_err(|e| PipelineError::Write(e.to_string()))?;
    metrics::counter!("sluice_worker_fragments_written_total").increment(fragments.len() as u64);
    metrics::counter!("sluice_worker_rows_written_total").increment(rows as u64);
    metrics::counter!("sluice_worker_bytes_written_total").increment(bytes as u64);
    Ok(fragments)
}
