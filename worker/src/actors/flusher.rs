//! Flusher: buffers rows and writes them into the worker's open Lance
//! fragment when `flush_every` rows or `flush_bytes` bytes are buffered. A
//! fragment gathers flushes until it holds `commit_every` rows or one
//! flush's worth of bytes (`flush_bytes`, at most a third of the row
//! budget: large rows such as video segments and big files keep a fragment
//! per flush, and two fragment writes in flight keep an object store as
//! busy as before), until `flush_every` files failed (so the coordinator
//! can stop a job at `--max-errors` early), until it has been open [`FRAGMENT_SECONDS`] (or
//! `flush_interval_secs`, if shorter: slow files, a trickle), until every
//! file of the assigned shards is accounted for (so the coordinator learns
//! a shard finished without waiting for rows that may never come), or on
//! drain. Then it is closed: Lance finishes its file and the fragment goes
//! to the checkpoint publisher, tagged with a sequence number so checkpoints
//! stay in order. Each checkpoint carries the reasons of the flushes it
//! holds into the job's figures and metrics.
//!
//! A fragment per flush would make the table's manifest, which every commit
//! rewrites whole, grow by a fragment every `flush_every` rows: at 100
//! million one-row files, 500,000 fragments and a manifest of ~60 MB
//! written at each commit. Gathering flushes keeps `flush_every` what
//! users know it as (rows held in memory before they are written) at a
//! tenth of the fragments with default knobs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lance::Dataset;
use lance_table::format::Fragment;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_common::protocol::{FileCompleted, FileFailed, FlushReason};
use sluice_common::schema::{build_batches_for, FileRows};
use sluice_common::settings::Settings;
use sluice_common::table::TableHandle;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::budget::{Grant, RowBudget};
use super::publisher::{CheckpointDraft, PublisherMsg};
use crate::PipelineError;

/// Fragment writes in flight at once; bounds memory to this many buffers.
/// Four keep an object store busier (a write waits on the store for one
/// step after another), but each write in flight costs Lance's writer tens
/// of MB beyond its rows: measured against moto with 4 MB files, 0.72x a
/// bare multipart upload instead of 0.61-0.64x, at 50-110 MB more peak RSS.
pub const MAX_UPLOADS: usize = 2;

/// A fragment is closed at most this many seconds after its first rows, so
/// the job's progress and what a crash costs follow the clock on slow files.
pub const FRAGMENT_SECONDS: u32 = 5;

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
    /// The fragment opened after checkpoint `epoch` has been open long
    /// enough ([`FRAGMENT_SECONDS`], `flush_interval_secs`).
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
    /// Sequence number of the last checkpoint (closed fragment).
    seq: u64,
    uploads: Option<Arc<Semaphore>>,
    /// An interval close is scheduled for the fragment now gathering rows.
    timer_set: bool,
    /// The fragment flushes go into, once the first rows came.
    open: Option<OpenFragment>,
    /// Since the last checkpoint: rows and row bytes flushed, source bytes
    /// of the files finished, and the flushes by reason.
    fragment_rows: u64,
    fragment_bytes: u64,
    source_bytes: u64,
    flushes: HashMap<FlushReason, u32>,
}

/// Rows for the open fragment, with the budget they hold until the writer
/// asks for the next ones; or why the fragment must be abandoned.
type Feed = Result<(Vec<FileRows>, Vec<Grant>), PipelineError>;

/// The fragment being written: its file stays open across flushes.
struct OpenFragment {
    feed: mpsc::Sender<Feed>,
    /// What the fragment's checkpoint says, sent when it is closed.
    draft: oneshot::Sender<CheckpointDraft>,
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
        self.rows > 0
            || self.open.is_some()
            || !self.failed.is_empty()
            || !self.finished.is_empty()
            || !self.completed.is_empty()
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
            // The first rows since the last checkpoint are closed into one
            // within the interval.
            st.timer_set = true;
            let epoch = st.seq;
            let after = Duration::from_secs(u64::from(self.settings.flush_interval_secs.min(FRAGMENT_SECONDS)));
            myself.send_after(after, move || FlusherMsg::Interval { epoch });
        }
        match msg {
            FlusherMsg::Interval { epoch } => {
                // Stale if a fragment was closed since it was set.
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
                    // The open fragment is abandoned: Lance removes its files.
                    if let Some(open) = st.open.take() {
                        let _ = open.feed.send(Err(PipelineError::CutOff(cut.clone()))).await;
                    }
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

    /// Write the buffered rows into the open fragment, and close it when it
    /// is full or `reason` asks for it.
    async fn flush(&self, st: &mut FlusherState, reason: FlushReason) -> Result<(), ActorProcessingErr> {
        metrics::counter!("sluice_worker_flushes_total", "reason" => reason.as_str()).increment(1);
        tracing::debug!(seq = st.seq + 1, rows = st.rows, reason = reason.as_str(), "flush");
        *st.flushes.entry(reason).or_default() += 1;
        let files = std::mem::take(&mut st.buffer);
        let grants = std::mem::take(&mut st.grants);
        st.source_bytes += files.iter().filter(|f| f.last).map(|f| f.source.size).sum::<u64>();
        st.fragment_rows += st.rows as u64;
        st.fragment_bytes += st.bytes as u64;
        st.rows = 0;
        st.bytes = 0;
        let mut broken = false;
        if files.iter().any(|f| !f.rows.is_empty()) {
            let open = self.open_fragment(st).await?;
            // A writer that is gone has failed; its result comes at close.
            broken = open.feed.send(Ok((files, grants))).await.is_err();
        }
        // `flush_every` failures are published at once (as they were when
        // a fragment was a flush), so `--max-errors` stops a job early.
        let full = st.fragment_rows >= u64::from(self.settings.commit_every)
            || st.fragment_bytes >= self.budget.flush_bytes(self.settings.flush_bytes)
            || st.failed.len() >= self.settings.flush_every as usize;
        // Every assigned file accounted for: the coordinator learns it now.
        let idle = st.remaining.is_empty() && st.open_files.is_empty();
        if broken || full || idle || !matches!(reason, FlushReason::Rows | FlushReason::Bytes) {
            self.close(st, reason);
        }
        Ok(())
    }

    /// The open fragment, started if there is none: a writer task that
    /// takes batches until the fragment is closed, then hands the fragment
    /// and its checkpoint draft to the publisher.
    async fn open_fragment<'a>(&self, st: &'a mut FlusherState) -> Result<&'a mut OpenFragment, ActorProcessingErr> {
        if st.open.is_none() {
            let permit = st.uploads.clone().expect("set in pre_start").acquire_owned().await?;
            let (feed, batches) = mpsc::channel(1);
            let (draft_tx, draft_rx) = oneshot::channel::<CheckpointDraft>();
            let (table, dataset, job_id, publisher) =
                (self.table.clone(), self.dataset.clone(), self.job_id.clone(), self.publisher.clone());
            tokio::spawn(async move {
                // Supervised: even a panicking write yields a result, so the
                // publisher never waits for a sequence number that cannot come.
                use futures::FutureExt;
                let written = std::panic::AssertUnwindSafe(write(&table, dataset.clone(), &job_id, batches)).catch_unwind().await;
                let result = written.unwrap_or_else(|_| Err(PipelineError::Write("the fragment write panicked".into())));
                match draft_rx.await {
                    Ok(draft) => {
                        if let Err(e) = &result {
                            tracing::error!(seq = draft.seq, error = %e, "fragment write failed");
                        }
                        // Sent before the permit is released, so a drain that
                        // waited for every permit is queued behind this result.
                        let _ = publisher.send_message(PublisherMsg::Written { draft: Box::new(draft), result });
                    }
                    // Abandoned (the flusher stopped): nothing will commit it.
                    Err(_) => {
                        if let Ok(fragments) = &result {
                            sluice_common::table::discard_fragments(&dataset, fragments).await;
                        }
                    }
                }
                drop(permit);
            });
            st.open = Some(OpenFragment { feed, draft: draft_tx });
        }
        Ok(st.open.as_mut().expect("opened above"))
    }

    /// End the open fragment (if any) with the checkpoint of everything
    /// since the last one.
    fn close(&self, st: &mut FlusherState, reason: FlushReason) {
        st.seq += 1;
        st.timer_set = false;
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
            rows: std::mem::take(&mut st.fragment_rows),
            bytes: std::mem::take(&mut st.source_bytes),
            completed,
            failed,
            clean: st.open_files.is_empty(),
            shards_finished,
            shard_generations,
            reason,
            flushes: std::mem::take(&mut st.flushes),
        };
        st.fragment_bytes = 0;
        match st.open.take() {
            // Dropping the feed ends the fragment's batches: Lance finishes
            // its file and the writer task publishes.
            Some(open) => {
                let _ = open.draft.send(draft);
            }
            None => {
                let _ = self.publisher.send_message(PublisherMsg::Written { draft: Box::new(draft), result: Ok(Vec::new()) });
            }
        }
    }
}

/// Write the rows that come on `feed` into one fragment, in the batches of
/// each flush. They are built when Lance asks for them, so rows waiting for
/// the writer are held once (not also as batches); their budget is
/// released when Lance asks for the batch after them, having written them.
async fn write(table: &TableHandle, dataset: Arc<Dataset>, job_id: &str, feed: mpsc::Receiver<Feed>) -> Result<Vec<Fragment>, PipelineError> {
    if sluice_common::failpoint::fails("fragment_write") {
        return Err(PipelineError::Write("injected fragment write failure (failpoint fragment_write)".into()));
    }
    let schema = sluice_common::insert::insert_schema(&dataset);
    let (table_schema, job) = (schema.clone(), job_id.to_string());
    let flushes = futures::stream::unfold((feed, Vec::<Grant>::new()), move |(mut feed, written)| {
        let (schema, job) = (table_schema.clone(), job.clone());
        async move {
            drop(written);
            let (files, grants) = match feed.recv().await? {
                Ok(next) => next,
                Err(e) => {
                    let failed = vec![Err(sluice_common::Error::InvalidInput(e.to_string()))];
                    return Some((futures::stream::iter(failed), (feed, Vec::new())));
                }
            };
            let rows: usize = files.iter().map(|f| f.rows.len()).sum();
            let now = chrono::Utc::now().timestamp_micros();
            let built = tokio::task::spawn_blocking(move || build_batches_for(&schema, &files, &job, now))
                .await
                .unwrap_or_else(|e| Err(sluice_common::Error::InvalidInput(format!("building the batch: {e}"))));
            let batches: Vec<sluice_common::Result<arrow_array::RecordBatch>> = match built {
                Ok(batches) => {
                    metrics::counter!("sluice_worker_rows_written_total").increment(rows as u64);
                    let bytes: usize = batches.iter().map(arrow_array::RecordBatch::get_array_memory_size).sum();
                    metrics::counter!("sluice_worker_bytes_written_total").increment(bytes as u64);
                    batches.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err(e)],
            };
            Some((futures::stream::iter(batches), (feed, grants)))
        }
    });
    // A flush's grants go when Lance asks for the batch after its last.
    let stream = futures::StreamExt::flatten(flushes);
    let fragments =
        table.write_uncommitted_stream(dataset, schema, stream).await.map_err(|e| PipelineError::Write(e.to_string()))?;
    metrics::counter!("sluice_worker_fragments_written_total").increment(fragments.len() as u64);
    Ok(fragments)
}
