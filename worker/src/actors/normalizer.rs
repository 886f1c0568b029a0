//! The normalizer pool: takes files from the pipeline's bounded work queue
//! and normalizes up to `normalization_workers` at once, each on a blocking
//! thread or in a child process (with a per-file timeout and panic capture),
//! handing the rows, or the failure, to the flusher. A file that breaks after
//! some of its rows were handed on fails the pool, and so the pipeline. The
//! pool is a task the pipeline awaits when it drains: its result says how
//! the normalizers ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use sluice_common::protocol::{FileFailed, FileRef};
use sluice_common::schema::{FileRows, Kind, Row, SourceInfo};
use sluice_common::settings::{OcrMode, Settings};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::flusher::FlusherMsg;
use crate::isolation::{ChildProc, Normalizers, Part, Request};
use crate::normalize::{self, Piece};
use crate::PipelineError;

/// One file to normalize.
#[derive(Debug, Clone)]
pub struct FileTask {
    pub file: FileRef,
}

pub struct NormalizerPool {
    pub settings: Arc<Settings>,
    /// The programs that serve normalization in child processes; `None`
    /// runs it in this process.
    pub isolation: Option<Normalizers>,
    pub sink: Sink,
    pub busy: Arc<BusyGauge>,
    /// Files being cut in processes with FFmpeg (one each) right now.
    pub media_busy: Arc<BusyGauge>,
    /// PDF processes at work right now (a big PDF's helpers too).
    pub pdf_busy: Arc<BusyGauge>,
}

/// Where normalized rows go: the flusher, once the row budget has room.
#[derive(Clone)]
pub struct Sink {
    pub flusher: ActorRef<FlusherMsg>,
    pub budget: super::budget::RowBudget,
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

/// A place to normalize one file at a time: a child process (if started)
/// kept across files while it stays healthy.
type Slot = Option<ChildProc>;

impl NormalizerPool {
    /// Normalize files until the queue closes (then wait for the files in
    /// flight) or `abandon` is cancelled (then drop them). A failure that
    /// ends the pool is also sent to `failed` at once.
    pub async fn run(
        self,
        mut queue: mpsc::Receiver<FileTask>,
        abandon: CancellationToken,
        failed: mpsc::UnboundedSender<PipelineError>,
    ) -> Result<(), PipelineError> {
        let result = tokio::select! {
            r = self.serve(&mut queue) => r,
            _ = abandon.cancelled() => Err(PipelineError::Gone("the job was abandoned".into())),
        };
        if let Err(e) = &result {
            if !abandon.is_cancelled() {
                tracing::error!(error = %e, "normalizer pool failed");
                let _ = failed.send(e.clone());
            }
        }
        result
    }

    async fn serve(&self, queue: &mut mpsc::Receiver<FileTask>) -> Result<(), PipelineError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limits = (self.settings.process_limit(cores), self.settings.media_process_limit(cores));
        let one_program = self.isolation.as_ref().is_some_and(|exes| exes.lean == exes.media);
        let procs = SharedProcs::new(limits, one_program, self.media_busy.clone(), self.pdf_busy.clone());
        let result = self.serve_with(queue, &procs).await;
        // Child processes end with the pool, reaped rather than orphaned
        // (when this future is dropped instead, they are killed).
        procs.end_idle(true).await;
        result
    }

    async fn serve_with(&self, queue: &mut mpsc::Receiver<FileTask>, procs: &Arc<SharedProcs>) -> Result<(), PipelineError> {
        let workers = self.settings.normalization_workers.max(1) as usize;
        if let Some(served) = crate::normalizers_served().filter(|&n| (n as usize) < workers) {
            tracing::warn!(
                normalization_workers = workers,
                served,
                "the job asks for more normalization workers than this process's blocking pool serves at once \
                 (sized at start: sluice ingest --normalization-workers, or the worker's cores): \
                 file reads and in-process normalizing wait for a thread"
            );
        }
        let mut running: JoinSet<Result<(), String>> = JoinSet::new();
        loop {
            // A file is taken only when a normalizer is free: the queue's
            // bound then holds back the worker's intake.
            if running.len() >= workers {
                let Some(done) = running.join_next().await else { unreachable!("none free, none running") };
                settle(done)?;
                continue;
            }
            tokio::select! {
                task = queue.recv() => match task {
                    Some(task) => {
                        running.spawn(self.normalize_one(task, procs.clone()));
                    }
                    None => break,
                },
                Some(done) = running.join_next(), if !running.is_empty() => settle(done)?,
            }
        }
        while let Some(done) = running.join_next().await {
            settle(done)?;
        }
        Ok(())
    }
}

/// The pool's normalizer processes, lent to one file (or one range of a
/// big PDF's pages) at a time. Decoding is CPU work, and each process
/// costs its program's libraries and buffers before it decodes a byte
/// (~35 MB of FFmpeg's libraries; a PDF's page buffers), so at most
/// `limit` of them live at once ([`Settings::process_limit`]: one per core
/// by default), and of those at most [`Settings::media_process_limit`]
/// with FFmpeg, while the other normalizers go on with other files in this
/// process. Two programs serve them: with FFmpeg (video, audio, images;
/// PDFs too) and without (PDFs). An idle process ends after
/// [`crate::isolation::IDLE_KEPT`] (with FFmpeg) or
/// [`crate::isolation::LEAN_IDLE_KEPT`] (without), or at once when a file
/// needs the other program and the pool is full; idle ones without FFmpeg
/// also end when one with FFmpeg starts.
struct SharedProcs {
    limit: usize,
    /// Turns for files that need FFmpeg.
    media_permits: Arc<Semaphore>,
    /// The program with FFmpeg serves every file (no program without it
    /// is installed).
    one_program: bool,
    permits: Arc<Semaphore>,
    idle: parking_lot::Mutex<Vec<Idle>>,
    /// Files at work in processes, by program they need.
    media_busy: Arc<BusyGauge>,
    pdf_busy: Arc<BusyGauge>,
}

/// A process between files.
struct Idle {
    proc: ChildProc,
    since: std::time::Instant,
    /// When it last served a file only a process with FFmpeg can.
    last_media: Option<std::time::Instant>,
}

/// A process (started on first use) lent to one file.
struct Lease {
    slot: Slot,
    media: bool,
    last_media: Option<std::time::Instant>,
    procs: Arc<SharedProcs>,
    _permit: OwnedSemaphorePermit,
    _media_permit: Option<OwnedSemaphorePermit>,
}

impl SharedProcs {
    /// A pool with a task that ends its idle processes, until the pool is
    /// dropped.
    fn new((limit, media_limit): (usize, usize), one_program: bool, media_busy: Arc<BusyGauge>, pdf_busy: Arc<BusyGauge>) -> Arc<Self> {
        let limit = limit.max(1);
        let procs = Arc::new(Self {
            limit,
            media_permits: Arc::new(Semaphore::new(media_limit.clamp(1, limit))),
            one_program,
            permits: Arc::new(Semaphore::new(limit)),
            idle: parking_lot::Mutex::new(Vec::new()),
            media_busy,
            pdf_busy,
        });
        let pool = Arc::downgrade(&procs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::isolation::LEAN_IDLE_KEPT / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                pool.end_idle(false).await;
            }
        });
        procs
    }

    /// Wait for a turn for a request that needs FFmpeg (`media`) or not.
    async fn lease(self: &Arc<Self>, media: bool) -> Result<Lease, String> {
        let media_permit = match media {
            true => Some(self.media_permits.clone().acquire_owned().await.map_err(|e| e.to_string())?),
            false => None,
        };
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        Ok(self.lent(media, permit, media_permit))
    }

    /// A turn for a PDF's page range, if one is free now (none while files
    /// wait for one).
    fn try_lease_pdf(self: &Arc<Self>) -> Option<Lease> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.lent(false, permit, None))
    }

    /// The turn's process: an idle one that serves the request (a PDF
    /// takes one with FFmpeg only while video is still coming its way),
    /// else none yet (started on first use), an idle one of the other
    /// program then ending (in the background) if the pool is full, and
    /// every idle one without FFmpeg if one with FFmpeg is to start.
    fn lent(self: &Arc<Self>, media: bool, permit: OwnedSemaphorePermit, media_permit: Option<OwnedSemaphorePermit>) -> Lease {
        let (taken, ending) = {
            let mut idle = self.idle.lock();
            let fits = |i: &Idle| match (media, i.proc.has_ffmpeg()) {
                (true, has) => has,
                (false, false) => true,
                (false, true) => self.one_program || i.last_media.is_some_and(|t| t.elapsed() < crate::isolation::IDLE_KEPT),
            };
            let pick = idle.iter().position(|i| !media && !i.proc.has_ffmpeg()).or_else(|| idle.iter().position(fits));
            let taken = pick.map(|at| idle.swap_remove(at));
            let mut ending = Vec::new();
            if taken.is_none() && media {
                // A process with FFmpeg is about to start: idle ones
                // without it end now rather than sit beside it until their
                // time is up (they restart in ~2 ms).
                let (lean, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut *idle).into_iter().partition(|i| !i.proc.has_ffmpeg());
                *idle = kept;
                ending.extend(lean.into_iter().map(|i| i.proc));
            }
            if taken.is_none() {
                let in_use = self.limit - self.permits.available_permits();
                while idle.len() + in_use > self.limit {
                    let oldest = (0..idle.len()).min_by_key(|&at| idle[at].since).unwrap_or_default();
                    ending.push(idle.swap_remove(oldest).proc);
                }
            }
            (taken, ending)
        };
        if !ending.is_empty() {
            tokio::spawn(futures::future::join_all(ending.into_iter().map(ChildProc::finish)));
        }
        self.gauge(media).enter();
        let last_media = taken.as_ref().and_then(|i| i.last_media);
        Lease { slot: taken.map(|i| i.proc), media, last_media, procs: self.clone(), _permit: permit, _media_permit: media_permit }
    }

    fn gauge(&self, media: bool) -> &BusyGauge {
        if media {
            &self.media_busy
        } else {
            &self.pdf_busy
        }
    }

    /// End the idle processes (`all`, or those idle for longer than their
    /// program is kept).
    async fn end_idle(&self, all: bool) {
        let kept_for = |i: &Idle| match i.proc.has_ffmpeg() {
            true => crate::isolation::IDLE_KEPT,
            false => crate::isolation::LEAN_IDLE_KEPT,
        };
        let ending: Vec<ChildProc> = {
            let mut idle = self.idle.lock();
            let (ending, kept) = std::mem::take(&mut *idle).into_iter().partition(|i| all || i.since.elapsed() >= kept_for(i));
            *idle = kept;
            ending.into_iter().map(|i: Idle| i.proc).collect()
        };
        futures::future::join_all(ending.into_iter().map(ChildProc::finish)).await;
    }
}

impl Drop for Lease {
    /// A process done with its file goes back before the turn is given up;
    /// one left mid-file (its file given up on) is killed.
    fn drop(&mut self) {
        if let Some(proc) = self.slot.take().filter(ChildProc::is_ready) {
            let now = std::time::Instant::now();
            let last_media = if self.media { Some(now) } else { self.last_media };
            self.procs.idle.lock().push(Idle { proc, since: now, last_media });
        }
        self.procs.gauge(self.media).exit();
    }
}

/// A finished file's outcome, or the failure that ends the pool.
fn settle(done: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), PipelineError> {
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(fatal)) => Err(PipelineError::Actor(fatal)),
        Err(join) => Err(PipelineError::Actor(describe_join(join))),
    }
}

impl NormalizerPool {
    /// Normalize one file; a failed file is handed to the flusher.
    fn normalize_one(&self, task: FileTask, procs: Arc<SharedProcs>) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (settings, flusher, isolation, busy) = (self.settings.clone(), self.sink.clone(), self.isolation.clone(), self.busy.clone());
        async move {
            busy.enter();
            test_hooks(&task.file.uri).await;
            let children = isolation.as_ref().map(|exes| Children { exes, procs: &procs });
            let outcome = process(&task.file, &settings, &flusher, children).await;
            busy.exit();
            let label = match &outcome {
                Ok(()) => "ingested",
                Err(Outcome::Failed(..)) => "failed",
                Err(Outcome::Fatal(_)) => "fatal",
            };
            metrics::counter!("sluice_worker_files_total", "outcome" => label).increment(1);
            match outcome {
                Ok(()) => Ok(()),
                Err(Outcome::Failed(kind, reason)) => {
                    tracing::info!(file = %task.file.uri, %reason, "file failed");
                    let failed = FileFailed {
                        uri: task.file.uri.clone(),
                        shard_id: task.file.shard_id.clone(),
                        kind,
                        reason: reason.trim().to_string(),
                    };
                    flusher.flusher.call(|reply| FlusherMsg::Fail(failed, reply), None).await.map(|_| ()).map_err(|e| e.to_string())
                }
                // Rows of this file were already handed on: only a pipeline
                // restart (and the resume that follows) keeps them out.
                Err(Outcome::Fatal(e)) => Err(e),
            }
        }
    }
}

/// Test hooks: `SLUICE_TEST_FILE_DELAY_MS` makes every file take at least
/// that long, so tests can act while a job is surely still running;
/// `SLUICE_TEST_ABORT_ON` aborts the whole worker process on files whose
/// URI contains it, standing in for a poison file that kills workers.
/// Only with the `testing` feature.
#[cfg(not(feature = "testing"))]
async fn test_hooks(_uri: &str) {}

#[cfg(feature = "testing")]
async fn test_hooks(uri: &str) {
    if std::env::var("SLUICE_TEST_ABORT_ON").is_ok_and(|s| !s.is_empty() && uri.contains(&s)) {
        std::process::abort();
    }
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("SLUICE_TEST_FILE_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis)
    });
    if let Some(d) = delay {
        tokio::time::sleep(*d).await;
    }
}

/// How processing a file can end badly.
enum Outcome {
    /// The file is refused: no rows of it were handed on.
    Failed(Option<Kind>, String),
    /// Something broke after rows were handed on.
    Fatal(String),
}

fn failed(kind: Option<Kind>, reason: impl Into<String>) -> Outcome {
    Outcome::Failed(kind, reason.into())
}

fn describe_join(join: tokio::task::JoinError) -> String {
    if join.is_panic() {
        let panic = join.into_panic();
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("normalizer crashed: {msg}")
    } else {
        format!("normalizer was cancelled: {join}")
    }
}

async fn append(sink: &Sink, rows: FileRows) -> Result<(), Outcome> {
    let bytes = rows.rows.iter().map(|r| r.approx_bytes() as u64).sum();
    let grant = sink.budget.reserve(bytes).await;
    sink.flusher.call(|reply| FlusherMsg::Append(rows, grant, reply), None).await.map(|_| ()).map_err(|e| Outcome::Fatal(e.to_string()))
}

/// Media is normalized in child processes of `exes`, lent by `procs`; a
/// big PDF may take the free turns to spread its pages over more of them.
#[derive(Clone, Copy)]
struct Children<'a> {
    exes: &'a Normalizers,
    procs: &'a Arc<SharedProcs>,
}

/// Fetch and normalize one file, handing its rows to the flusher.
async fn process(
    file: &FileRef,
    settings: &Arc<Settings>,
    flusher: &Sink,
    children: Option<Children<'_>>,
) -> Result<(), Outcome> {
    let (probe, _download) = if sluice_common::sources::is_remote(&file.uri) {
        let limit = settings.max_file_bytes.max(settings.max_video_bytes);
        let (probe, tmp) = crate::fetch::probe_remote(&file.uri, limit).await.map_err(|e| failed(None, e))?;
        (probe, Some(tmp))
    } else {
        (crate::fetch::probe(&file.uri).await.map_err(|e| failed(None, e))?, None)
    };
    let name = file.uri.clone();
    let (kind, mime) = detect(&name, &probe, settings, children).await?;
    let timeout = Duration::from_secs(u64::from(settings.file_timeout_secs));
    let timed_out = || format!("normalizer timed out after {}s", timeout.as_secs());
    // With in-process normalizers, only what needs FFmpeg goes to a process.
    let own = children.filter(|c| !c.exes.in_process);
    if matches!(kind, Kind::Video | Kind::Audio) {
        return process_streamed(kind, file, probe, settings, flusher, children).await;
    }
    // Images read with OCR go where Tesseract runs: a normalizer process.
    let ocr_image = kind == Kind::Image && settings.ocr == OcrMode::Always && own.is_some();
    if kind == Kind::Pdf || ocr_image {
        return process_streamed(kind, file, probe, settings, flusher, own).await;
    }
    let bytes = crate::fetch::read_all(&probe, settings.max_file_bytes).await.map_err(|e| failed(Some(kind), e))?;
    let source = SourceInfo {
        uri: file.uri.clone(),
        size: bytes.len() as u64,
        modified_ms: probe.modified_ms,
        content_hash: sluice_common::ids::content_hash(&bytes),
        attributes: file_attributes(file),
    };
    let s = settings.clone();
    let another_decoder = kind == Kind::Image && normalize::worth_another_decoder(&bytes);
    let work = tokio::task::spawn_blocking(move || normalize::normalize_detected(kind, &mime, bytes, &s));
    let normalized = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err(failed(Some(kind), timed_out())),
        Ok(Err(join)) => return Err(failed(Some(kind), describe_join(join))),
        // FFmpeg's image decoders have a go, from the file, in a normalizer
        // process (which tells both reasons if they fail too).
        Ok(Ok(Err((Kind::Image, _)))) if another_decoder => {
            return process_streamed(Kind::Image, file, probe, settings, flusher, children).await;
        }
        Ok(Ok(Err((kind, e)))) => return Err(failed(Some(kind), e.0)),
        Ok(Ok(Ok(n))) => n,
    };
    let rows = FileRows { source, shard_id: file.shard_id.clone(), kind: normalized.kind, rows: normalized.rows, last: true };
    append(flusher, rows).await
}

/// What the file is, from its name and first bytes. `sluice` has no
/// FFmpeg: files only FFmpeg's probe tells apart (containers and raw
/// streams without magic bytes, images only FFmpeg reads) are probed by a
/// normalizer process with FFmpeg. A probe that fails fails the file.
async fn detect(name: &str, probe: &crate::fetch::Probe, settings: &Settings, children: Option<Children<'_>>) -> Result<(Kind, String), Outcome> {
    let mut unanswered = false;
    let (kind, mime) = normalize::detect_kind_with(name, &probe.head, &mut |head| match normalize::ffmpeg() {
        Some(ff) => Some(ff.probe(head)),
        None => {
            unanswered = true;
            None
        }
    });
    let Some(children) = children.filter(|_| unanswered) else { return Ok((kind, mime)) };
    let mut lease = children.procs.lease(true).await.map_err(Outcome::Fatal)?;
    let request = Request { path: probe.path.clone(), kind, settings: settings.clone(), part: Part::Probe };
    let timeout = Duration::from_secs(u64::from(settings.file_timeout_secs));
    let probed = match tokio::time::timeout(timeout, ask(&mut lease.slot, children.exes, &request)).await {
        Err(_) => {
            if let Some(proc) = lease.slot.take() {
                proc.end().await;
            }
            return Err(failed(Some(kind), format!("FFmpeg's probe timed out after {}s", timeout.as_secs())));
        }
        Ok(Err(e)) => return Err(failed(Some(kind), format!("FFmpeg's probe failed: {e}"))),
        Ok(Ok(pieces)) => pieces.into_iter().find_map(|p| match p {
            Piece::Probed(probed) => Some(probed),
            _ => None,
        }),
    };
    let probed = probed.unwrap_or_default();
    Ok(normalize::detect_kind_with(name, &probe.head, &mut |_| Some(probed.clone())))
}

/// A file's per-file values, shared by all its rows.
fn file_attributes(file: &FileRef) -> Option<Arc<str>> {
    (!file.attributes.is_empty()).then(|| Arc::from(file.attributes.as_str()))
}

/// A streamed file's progress: its hash, and one batch held back so the
/// final batch can be sent marked `last`.
#[derive(Default)]
struct Streamed {
    hash: String,
    /// What a media file turned out to be, once opened.
    kind: Option<Kind>,
    held: Option<Vec<Row>>,
    sent_any: bool,
}

impl Streamed {
    /// Take a piece; returns the batch that is now ready to go on (not last).
    fn accept(&mut self, piece: Piece) -> Option<Vec<Row>> {
        match piece {
            Piece::Hash(h) => {
                self.hash = h;
                None
            }
            Piece::Rows(rows) | Piece::Sealed(rows, _) => {
                let ready = self.held.replace(rows);
                self.sent_any |= ready.is_some();
                ready
            }
            Piece::PageCount(_) | Piece::Probed(_) => None,
            Piece::Kind(kind) => {
                self.kind = Some(kind);
                None
            }
        }
    }
}

/// Videos and PDFs stream: rows (segments, pages) arrive a few at a time from
/// the blocking thread and go on to the flusher as they come; the final
/// batch is marked `last`. The normalizers validate a file before emitting
/// its first rows, so a failure before the first batch costs the file, and a
/// failure after it is fatal.
async fn process_streamed(
    kind: Kind,
    file: &FileRef,
    probe: crate::fetch::Probe,
    settings: &Arc<Settings>,
    flusher: &Sink,
    children: Option<Children<'_>>,
) -> Result<(), Outcome> {
    let isolation = children.map(|c| c.exes);
    let timeout = Duration::from_secs(u64::from(settings.file_timeout_secs));
    let (limit, limit_name) = match kind {
        Kind::Video | Kind::Audio => (settings.max_video_bytes, "max_video_bytes"),
        _ => (settings.max_file_bytes, "max_file_bytes"),
    };
    let file_kind = kind;
    let kind = Some(kind);
    let attributes = file_attributes(file);
    if probe.size > limit {
        return Err(failed(kind, format!("file is {} bytes, above the limit of {limit} ({limit_name})", probe.size)));
    }
    // The file is normalized in a process the pool lends, once one of its
    // turns is free; waiting does not count against the file's timeout.
    let mut lease = match children {
        Some(c) => Some(c.procs.lease(crate::isolation::needs_ffmpeg(file_kind)).await.map_err(Outcome::Fatal)?),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    if let (Kind::Pdf, Some(children), Some(own)) = (file_kind, children, lease.as_mut()) {
        if let Some(count) = pages_to_split(&probe, settings, children.exes, &mut own.slot, deadline).await? {
            let Some(own) = lease.take() else { unreachable!("leased above") };
            let target = Target { file, probe: &probe, flusher, attributes };
            return split_pdf(target, settings, children, own, count, deadline).await;
        }
    }
    let mut unshared = None;
    let child = match lease.as_mut() {
        Some(lease) => &mut lease.slot,
        None => &mut unshared,
    };
    // In this process, one PDF at a time (pdfium is single-threaded);
    // child processes each have their own pdfium. Waiting for the slot does
    // not count against the file's timeout.
    static PDF_SLOT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _slot = match (file_kind, isolation) {
        (Kind::Pdf, None) => Some(PDF_SLOT.acquire().await.map_err(|e| Outcome::Fatal(e.to_string()))?),
        _ => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(1);
    let (s, path) = (settings.clone(), probe.path.clone());
    let work: tokio::task::JoinHandle<crate::isolation::Work> = match isolation {
        None => tokio::task::spawn_blocking(move || {
            let run = || -> Result<(), String> {
                normalize::normalize_streamed(file_kind, &path, &s, &mut |piece| {
                    tx.blocking_send(piece).map_err(|_| normalize::NormalizeError::new("pipeline stopped"))
                })
                .map_err(|e| e.0)
            };
            (run(), None)
        }),
        Some(exes) => {
            let request = Request { path: path.clone(), kind: file_kind, settings: (*s).clone(), part: Part::Whole };
            ChildProc::start(child, exes, &request, tx).await.map_err(|e| failed(kind, e))?
        }
    };
    tokio::pin!(work);
    let mut stream = Streamed::default();
    let part = |hash: &str, found: Option<Kind>, rows: Vec<Row>, last: bool| FileRows {
        source: SourceInfo {
            uri: file.uri.clone(),
            size: probe.size,
            modified_ms: probe.modified_ms,
            content_hash: hash.to_string(),
            attributes: attributes.clone(),
        },
        shard_id: file.shard_id.clone(),
        kind: found.unwrap_or(file_kind),
        rows,
        last,
    };
    let result = loop {
        tokio::select! {
            Some(piece) = rx.recv() => {
                if let Some(ready) = stream.accept(piece) {
                    append(flusher, part(&stream.hash, stream.kind, ready, false)).await?;
                }
            }
            r = &mut work => {
                let (result, stdout) = r.map_err(|j| (Err(describe_join(j)), None)).unwrap_or_else(|e| e);
                if isolation.is_some() {
                    match stdout {
                        Some(out) => {
                            if let Some(proc) = child.as_mut() {
                                proc.give_back(out);
                            }
                        }
                        None => {
                            // Crashed, aborted, or spoke nonsense: never reuse it.
                            let status = match child.take() {
                                Some(proc) => proc.end().await,
                                None => "gone".into(),
                            };
                            break Err(format!("normalizer process crashed ({status})"));
                        }
                    }
                }
                break result;
            }
            _ = tokio::time::sleep_until(deadline) => {
                work.abort();
                if let Some(proc) = child.take() {
                    proc.end().await;
                }
                break Err(format!("normalizer timed out after {}s", timeout.as_secs()));
            }
        }
    };
    // Whatever the thread sent before it ended.
    while let Ok(piece) = rx.try_recv() {
        if let Some(ready) = stream.accept(piece) {
            append(flusher, part(&stream.hash, stream.kind, ready, false)).await?;
        }
    }
    let sent_any = stream.sent_any;
    // A failed file is recorded as what it turned out to be, if known.
    let kind = stream.kind.or(kind);
    match (result, stream.held) {
        // Test hook: a decoder that breaks after handing on a file's first rows.
        (Ok(()), Some(_)) if sent_any && sluice_common::failpoint::fails("streamed_file_end") => {
            Err(Outcome::Fatal(format!("{}: injected failure after its first rows (failpoint streamed_file_end)", file.uri)))
        }
        (Ok(()), Some(rows)) => append(flusher, part(&stream.hash, stream.kind, rows, true)).await,
        (Ok(()), None) => Err(failed(kind, "the file produced no rows")),
        (Err(e), _) if !sent_any => Err(failed(kind, e)),
        (Err(e), _) => Err(Outcome::Fatal(format!("{}: failed after its first segments: {e}", file.uri))),
    }
}

/// PDFs of at least this many pages are split into page ranges, spread
/// over the pool's idle normalizer processes.
const SPLIT_MIN_PAGES: usize = 64;
/// Pages per range of a split PDF: what one process renders in one go
/// (and what is held while an earlier range is still being rendered).
const RANGE_PAGES: usize = 32;
/// Smaller PDFs are not asked for their page count first (a 64-page
/// document is seldom this small).
const SPLIT_MIN_BYTES: u64 = 64 << 10;

/// A PDF big enough to split: its page count, asked of the process in
/// `slot` (a failure there is the file's).
async fn pages_to_split(
    probe: &crate::fetch::Probe,
    settings: &Settings,
    exes: &Normalizers,
    slot: &mut Slot,
    deadline: tokio::time::Instant,
) -> Result<Option<usize>, Outcome> {
    if probe.size < SPLIT_MIN_BYTES {
        return Ok(None);
    }
    let request = Request { path: probe.path.clone(), kind: Kind::Pdf, settings: settings.clone(), part: Part::PageCount };
    let count = match tokio::time::timeout_at(deadline, ask(slot, exes, &request)).await {
        Err(_) => {
            if let Some(proc) = slot.take() {
                proc.end().await;
            }
            return Err(failed(Some(Kind::Pdf), format!("normalizer timed out after {}s", settings.file_timeout_secs)));
        }
        // The file fails as the whole of it would have.
        Ok(Err(e)) => return Err(failed(Some(Kind::Pdf), e)),
        Ok(Ok(pieces)) => pieces.iter().find_map(|p| match p {
            Piece::PageCount(n) => Some(*n),
            _ => None,
        }),
    };
    Ok(count.filter(|n| *n >= SPLIT_MIN_PAGES))
}

/// Run one request on the child in `slot` (started first if there is none)
/// and collect what it answers. Err: the request failed; a child that
/// crashed or spoke nonsense is ended and the slot emptied.
async fn ask(slot: &mut Option<ChildProc>, exes: &Normalizers, request: &Request) -> Result<Vec<Piece>, String> {
    let (tx, mut rx) = mpsc::channel::<Piece>(4);
    let work = ChildProc::start(slot, exes, request, tx).await?;
    let collect = async {
        let mut pieces = Vec::new();
        while let Some(piece) = rx.recv().await {
            pieces.push(piece);
        }
        pieces
    };
    let (pieces, worked) = tokio::join!(collect, work);
    let (result, stdout) = worked.unwrap_or_else(|join| (Err(describe_join(join)), None));
    match stdout {
        Some(out) => {
            if let Some(proc) = slot.as_mut() {
                proc.give_back(out);
            }
        }
        None => {
            let status = match slot.take() {
                Some(proc) => proc.end().await,
                None => "gone".into(),
            };
            return Err(format!("normalizer process crashed ({status}): {}", result.err().unwrap_or_default()));
        }
    }
    result.map(|()| pieces)
}

/// Where a split file's rows go.
struct Target<'a> {
    file: &'a FileRef,
    probe: &'a crate::fetch::Probe,
    flusher: &'a Sink,
    attributes: Option<Arc<str>>,
}

/// One range of a split PDF: its place in the file and its outcome.
type RangeDone = (usize, Result<Vec<Row>, String>);
/// Ranges not yet taken: (place, (first page, end page)).
type RangeQueue = Arc<parking_lot::Mutex<std::collections::VecDeque<(usize, (usize, usize))>>>;

/// A big PDF: its pages in ranges of [`RANGE_PAGES`], taken in turn by
/// this file's own process and by helpers on the PDF processes' free turns
/// (more join as turns free up). Ranges come back in any
/// order and go on to the flusher in page order, the last marked `last`,
/// so the file still commits whole or not at all.
async fn split_pdf(
    target: Target<'_>,
    settings: &Arc<Settings>,
    children: Children<'_>,
    own: Lease,
    count: usize,
    deadline: tokio::time::Instant,
) -> Result<(), Outcome> {
    let Target { file, probe, flusher, attributes } = target;
    let kind = Some(Kind::Pdf);
    let ranges: std::collections::VecDeque<(usize, (usize, usize))> =
        (0..count).step_by(RANGE_PAGES).map(|start| (start, (start + RANGE_PAGES).min(count))).enumerate().collect();
    let n = ranges.len();
    let queue: RangeQueue = Arc::new(parking_lot::Mutex::new(ranges));
    let path = probe.path.clone();
    let mut hashing = Some(tokio::task::spawn_blocking(move || crate::fetch::hash_file(&path)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RangeDone>();
    let runner = |lease: Lease| {
        let request = Request { path: probe.path.clone(), kind: Kind::Pdf, settings: (**settings).clone(), part: Part::Whole };
        run_ranges(lease, children.exes.clone(), request, queue.clone(), done_tx.clone())
    };
    let mut runners: JoinSet<()> = JoinSet::new();
    runners.spawn(runner(own));
    let mut helpers = 0;
    let recruit = |runners: &mut JoinSet<()>, helpers: &mut usize| {
        // Another process is worth having while ranges wait for one.
        while queue.lock().len() > 1 {
            let Some(lease) = children.procs.try_lease_pdf() else { break };
            *helpers += 1;
            runners.spawn(runner(lease));
        }
    };
    recruit(&mut runners, &mut helpers);
    metrics::counter!("sluice_worker_pdfs_split_total").increment(1);

    let mut hash: Option<String> = None;
    let mut ready = std::collections::BTreeMap::new();
    let (mut next, mut sent_any) = (0, false);
    let result: Result<(), String> = loop {
        if next == n {
            break Ok(());
        }
        tokio::select! {
            Some((i, rows)) = done_rx.recv() => {
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => break Err(e),
                };
                ready.insert(i, rows);
                while let Some(rows) = ready.remove(&next) {
                    if let Some(hashing) = hashing.take() {
                        let hashed = hashing.await.map_err(|j| Outcome::Fatal(describe_join(j)))?;
                        hash = Some(hashed.map_err(|e| failed(kind, e))?);
                    }
                    let content_hash = hash.clone().unwrap_or_default();
                    let rows = FileRows {
                        source: SourceInfo {
                            uri: file.uri.clone(),
                            size: probe.size,
                            modified_ms: probe.modified_ms,
                            content_hash,
                            attributes: attributes.clone(),
                        },
                        shard_id: file.shard_id.clone(),
                        kind: Kind::Pdf,
                        rows,
                        last: next + 1 == n,
                    };
                    append(flusher, rows).await?;
                    sent_any = true;
                    next += 1;
                }
                recruit(&mut runners, &mut helpers);
            }
            Some(joined) = runners.join_next(), if !runners.is_empty() => {
                if let Err(join) = joined {
                    break Err(describe_join(join));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                break Err(format!("normalizer timed out after {}s", settings.file_timeout_secs));
            }
        }
    };
    tracing::debug!(file = %file.uri, pages = count, ranges = n, helpers, ok = result.is_ok(), "PDF split over processes");
    match result {
        Ok(()) => {
            runners.join_all().await;
            Ok(())
        }
        Err(e) => {
            // Dropping the runners kills their processes mid-range.
            runners.shutdown().await;
            match sent_any {
                false => Err(failed(kind, e)),
                true => Err(Outcome::Fatal(format!("{}: failed after its first pages: {e}", file.uri))),
            }
        }
    }
}

/// Take ranges off `queue` and render them on the leased process until
/// none is left or one fails; the process then goes back to the pool.
async fn run_ranges(mut lease: Lease, exes: Normalizers, mut request: Request, queue: RangeQueue, done: mpsc::UnboundedSender<RangeDone>) {
    loop {
        let Some((i, (start, end))) = queue.lock().pop_front() else { break };
        request.part = Part::Pages { start, end };
        let rows = ask(&mut lease.slot, &exes, &request).await.map(|pieces| {
            pieces
                .into_iter()
                .flat_map(|p| match p {
                    Piece::Rows(rows) | Piece::Sealed(rows, _) => rows,
                    _ => Vec::new(),
                })
                .collect()
        });
        let failed = rows.is_err();
        if done.send((i, rows)).is_err() || failed {
            break;
        }
    }
}
