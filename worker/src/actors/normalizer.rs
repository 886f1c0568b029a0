//! Normalizer: pulls files from the pipeline's bounded work queue, fetches and
//! normalizes each on a blocking thread (with a per-file timeout and panic
//! capture), and hands the rows, or the failure, to the flusher.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sluice_common::schema::{FileRows, Kind};
use sluice_common::settings::Settings;
use sluice_common::pb;
use tokio::sync::{mpsc, Mutex};

use super::flusher::FlusherMsg;
use crate::normalize;

/// One file to normalize.
#[derive(Debug, Clone)]
pub struct FileTask {
    pub file: pb::FileRef,
}

pub enum NormalizerMsg {
    /// Take the next file from the queue.
    Pull,
}

pub struct Normalizer {
    pub settings: Arc<Settings>,
    pub queue: Arc<Mutex<mpsc::Receiver<FileTask>>>,
    pub flusher: ActorRef<FlusherMsg>,
    pub busy: Arc<BusyGauge>,
}

/// How many files are being normalized right now, and the most ever at once.
#[derive(Debug, Default)]
pub struct BusyGauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl BusyGauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn exit(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Actor for Normalizer {
    type Msg = NormalizerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        myself.send_message(NormalizerMsg::Pull)?;
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, _: &mut ()) -> Result<(), ActorProcessingErr> {
        let NormalizerMsg::Pull = msg;
        // Holding the lock while waiting hands files out one at a time, to
        // whichever normalizer is free first.
        let task = self.queue.lock().await.recv().await;
        let Some(task) = task else {
            myself.stop(Some("queue closed".into()));
            return Ok(());
        };
        self.busy.enter();
        let outcome = process(&task.file, &self.settings).await;
        self.busy.exit();
        match outcome {
            Ok(rows) => self.flusher.call(|reply| FlusherMsg::Append(rows, reply), None).await?,
            Err((kind, reason)) => {
                tracing::info!(file = %task.file.uri, %reason, "file failed");
                let failed = pb::FileFailed {
                    uri: task.file.uri.clone(),
                    shard_id: task.file.shard_id.clone(),
                    kind: kind.map(|k| k.to_string()).unwrap_or_default(),
                    reason: reason.trim().to_string(),
                };
                self.flusher.call(|reply| FlusherMsg::Fail(failed, reply), None).await?
            }
        };
        myself.send_message(NormalizerMsg::Pull)?;
        Ok(())
    }
}

/// Fetch and normalize one file. Errors carry the detected kind, if any.
async fn process(file: &pb::FileRef, settings: &Arc<Settings>) -> Result<FileRows, (Option<Kind>, String)> {
    let (source, bytes) = crate::fetch::fetch(&file.uri, settings.max_file_bytes).await.map_err(|e| (None, e))?;
    let name = crate::fetch::local_path(&file.uri).to_string();
    let s = settings.clone();
    let work = tokio::task::spawn_blocking(move || normalize::normalize(&name, bytes, &s));
    let timeout = Duration::from_secs(u64::from(settings.file_timeout_secs));
    let normalized = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err((None, format!("normalizer timed out after {}s", timeout.as_secs()))),
        Ok(Err(join)) if join.is_panic() => {
            let panic = join.into_panic();
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err((None, format!("normalizer crashed: {msg}")));
        }
        Ok(Err(join)) => return Err((None, format!("normalizer was cancelled: {join}"))),
        Ok(Ok(Err((kind, e)))) => return Err((Some(kind), e.0)),
        Ok(Ok(Ok(n))) => n,
    };
    Ok(FileRows { source, shard_id: file.shard_id.clone(), kind: normalized.kind, rows: normalized.rows, last: true })
}
