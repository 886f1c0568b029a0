//! Normalizer: pulls files from the pipeline's bounded work queue, fetches and
//! normalizes each on a blocking thread (with a per-file timeout and panic
//! capture), and hands the rows, or the failure, to the flusher.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sluice_common::schema::{FileRows, Kind, Row, SourceInfo};
use sluice_common::settings::Settings;
use sluice_common::pb;
use tokio::sync::{mpsc, Mutex};

use super::flusher::FlusherMsg;
use crate::normalize::{self, Piece};

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
    /// Executable that serves media normalization in a child process
    /// (`sluice normalize-server`); `None` runs it in this process.
    pub isolation: Option<std::path::PathBuf>,
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

/// A normalizer's child process, kept across files while it stays healthy.
pub struct ChildProc {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: Option<tokio::process::ChildStdout>,
}

impl ChildProc {
    fn spawn(exe: &std::path::Path) -> Result<Self, String> {
        let mut child = tokio::process::Command::new(exe)
            .arg("normalize-server")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start normalizer process {}: {e}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take();
        if let Some(out) = &stdout {
            widen_pipe(out);
        }
        Ok(Self { child, stdin, stdout })
    }

    /// Kill the child and say how it ended.
    async fn end(mut self) -> String {
        let _ = self.child.start_kill();
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    }
}

/// Segments and renders are megabytes each: a 1 MiB pipe (Linux's default
/// is 64 KiB) moves them in far fewer wakeups. Best effort.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; failure leaves the default size.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

#[cfg(not(target_os = "linux"))]
fn widen_pipe<T>(_: &T) {}

impl Actor for Normalizer {
    type Msg = NormalizerMsg;
    type State = Option<ChildProc>;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, _: ()) -> Result<Option<ChildProc>, ActorProcessingErr> {
        myself.send_message(NormalizerMsg::Pull)?;
        Ok(None)
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, child: &mut Option<ChildProc>) -> Result<(), ActorProcessingErr> {
        let NormalizerMsg::Pull = msg;
        // Holding the lock while waiting hands files out one at a time, to
        // whichever normalizer is free first.
        let task = self.queue.lock().await.recv().await;
        let Some(task) = task else {
            myself.stop(Some("queue closed".into()));
            return Ok(());
        };
        self.busy.enter();
        test_hooks(&task.file.uri).await;
        let outcome = process(&task.file, &self.settings, &self.flusher, self.isolation.as_deref(), child).await;
        self.busy.exit();
        let label = match &outcome {
            Ok(()) => "ingested",
            Err(Outcome::Failed(..)) => "failed",
            Err(Outcome::Fatal(_)) => "fatal",
        };
        metrics::counter!("sluice_worker_files_total", "outcome" => label).increment(1);
        match outcome {
            Ok(()) => {}
            Err(Outcome::Failed(kind, reason)) => {
                tracing::info!(file = %task.file.uri, %reason, "file failed");
                let failed = pb::FileFailed {
                    uri: task.file.uri.clone(),
                    shard_id: task.file.shard_id.clone(),
                    kind: kind.map(|k| k.to_string()).unwrap_or_default(),
                    reason: reason.trim().to_string(),
                };
                self.flusher.call(|reply| FlusherMsg::Fail(failed, reply), None).await?;
            }
            // Rows of this file were already handed on: only a pipeline
            // restart (and the resume that follows) keeps them out.
            Err(Outcome::Fatal(e)) => return Err(e.into()),
        }
        myself.send_message(NormalizerMsg::Pull)?;
        Ok(())
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

async fn append(flusher: &ActorRef<FlusherMsg>, rows: FileRows) -> Result<(), Outcome> {
    flusher.call(|reply| FlusherMsg::Append(rows, reply), None).await.map(|_| ()).map_err(|e| Outcome::Fatal(e.to_string()))
}

/// Fetch and normalize one file, handing its rows to the flusher.
async fn process(
    file: &pb::FileRef,
    settings: &Arc<Settings>,
    flusher: &ActorRef<FlusherMsg>,
    isolation: Option<&std::path::Path>,
    child: &mut Option<ChildProc>,
) -> Result<(), Outcome> {
    let (probe, _download) = if sluice_common::sources::is_remote(&file.uri) {
        let limit = settings.max_file_bytes.max(settings.max_video_bytes);
        let (probe, tmp) = crate::fetch::probe_remote(&file.uri, limit).await.map_err(|e| failed(None, e))?;
        (probe, Some(tmp))
    } else {
        (crate::fetch::probe(&file.uri).await.map_err(|e| failed(None, e))?, None)
    };
    let name = file.uri.clone();
    let (kind, _) = normalize::detect_kind(&name, &probe.head);
    let timeout = Duration::from_secs(u64::from(settings.file_timeout_secs));
    let timed_out = || format!("normalizer timed out after {}s", timeout.as_secs());
    if matches!(kind, Kind::Video | Kind::Pdf) {
        return process_streamed(kind, file, probe, settings, flusher, timeout, isolation, child).await;
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
    let work = tokio::task::spawn_blocking(move || normalize::normalize(&name, bytes, &s));
    let normalized = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err(failed(Some(kind), timed_out())),
        Ok(Err(join)) => return Err(failed(Some(kind), describe_join(join))),
        Ok(Ok(Err((kind, e)))) => return Err(failed(Some(kind), e.0)),
        Ok(Ok(Ok(n))) => n,
    };
    let rows = FileRows { source, shard_id: file.shard_id.clone(), kind: normalized.kind, rows: normalized.rows, last: true };
    append(flusher, rows).await
}

/// A file's per-file values, shared by all its rows.
fn file_attributes(file: &pb::FileRef) -> Option<Arc<str>> {
    (!file.attributes.is_empty()).then(|| Arc::from(file.attributes.as_str()))
}

/// A streamed file's progress: its hash, and one batch held back so the
/// final batch can be sent marked `last`.
#[derive(Default)]
struct Streamed {
    hash: String,
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
            Piece::Rows(rows) => {
                let ready = self.held.replace(rows);
                self.sent_any |= ready.is_some();
                ready
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
    file: &pb::FileRef,
    probe: crate::fetch::Probe,
    settings: &Arc<Settings>,
    flusher: &ActorRef<FlusherMsg>,
    timeout: Duration,
    isolation: Option<&std::path::Path>,
    child: &mut Option<ChildProc>,
) -> Result<(), Outcome> {
    let (limit, limit_name) = match kind {
        Kind::Video => (settings.max_video_bytes, "max_video_bytes"),
        _ => (settings.max_file_bytes, "max_file_bytes"),
    };
    let file_kind = kind;
    let kind = Some(kind);
    let attributes = file_attributes(file);
    if probe.size > limit {
        return Err(failed(kind, format!("file is {} bytes, above the limit of {limit} ({limit_name})", probe.size)));
    }
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
    // The work yields its outcome and, for a child process that is still
    // healthy, its stdout back; `None` means the child must not be reused.
    type Work = (Result<(), String>, Option<tokio::process::ChildStdout>);
    let work: tokio::task::JoinHandle<Work> = match isolation {
        None => tokio::task::spawn_blocking(move || {
            let run = || -> Result<(), String> {
                normalize::normalize_streamed(file_kind, &path, &s, &mut |piece| {
                    tx.blocking_send(piece).map_err(|_| normalize::NormalizeError::new("pipeline stopped"))
                })
                .map_err(|e| e.0)
            };
            (run(), None)
        }),
        Some(exe) => {
            use tokio::io::AsyncWriteExt;
            if child.is_none() {
                *child = Some(ChildProc::spawn(exe).map_err(|e| failed(kind, e))?);
            }
            let proc = child.as_mut().expect("just set");
            let request = crate::isolation::Request { path: path.clone(), kind: file_kind, settings: (*s).clone() };
            let mut line = serde_json::to_vec(&request).map_err(|e| Outcome::Fatal(e.to_string()))?;
            line.push(b'\n');
            let mut stdout = proc.stdout.take();
            if proc.stdin.write_all(&line).await.is_err() || stdout.is_none() {
                let status = child.take().expect("present").end().await;
                return Err(failed(kind, format!("normalizer process is gone ({status})")));
            }
            tokio::spawn(async move {
                use crate::isolation::{read_frame, rows_from_frame, DONE, ERROR, HASH, ROWS};
                let out = stdout.as_mut().expect("checked");
                let result = loop {
                    let frame = match read_frame(out).await {
                        Ok(Some(frame)) => frame,
                        _ => return (Err("died".to_string()), None),
                    };
                    let sent = match frame {
                        (HASH, p) => tx.send(Piece::Hash(String::from_utf8_lossy(&p).into_owned())).await,
                        (ROWS, p) => match rows_from_frame(p) {
                            Ok(rows) => tx.send(Piece::Rows(rows)).await,
                            Err(e) => return (Err(e), None),
                        },
                        (DONE, _) => break Ok(()),
                        (ERROR, p) => break Err(String::from_utf8_lossy(&p).into_owned()),
                        (other, _) => return (Err(format!("unknown frame {other} from normalizer process")), None),
                    };
                    if sent.is_err() {
                        return (Err("pipeline stopped".to_string()), None);
                    }
                };
                (result, stdout)
            })
        }
    };
    tokio::pin!(work);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = Streamed::default();
    let part = |hash: &str, rows: Vec<Row>, last: bool| FileRows {
        source: SourceInfo {
            uri: file.uri.clone(),
            size: probe.size,
            modified_ms: probe.modified_ms,
            content_hash: hash.to_string(),
            attributes: attributes.clone(),
        },
        shard_id: file.shard_id.clone(),
        kind: file_kind,
        rows,
        last,
    };
    let result = loop {
        tokio::select! {
            Some(piece) = rx.recv() => {
                if let Some(ready) = stream.accept(piece) {
                    append(flusher, part(&stream.hash, ready, false)).await?;
                }
            }
            r = &mut work => {
                let (result, stdout) = r.map_err(|j| (Err(describe_join(j)), None)).unwrap_or_else(|e| e);
                if isolation.is_some() {
                    match stdout {
                        Some(out) => child.as_mut().expect("in use").stdout = Some(out),
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
            append(flusher, part(&stream.hash, ready, false)).await?;
        }
    }
    let sent_any = stream.sent_any;
    match (result, stream.held) {
        // Test hook: a decoder that breaks after handing on a file's first rows.
        (Ok(()), Some(_)) if sent_any && sluice_common::failpoint::fails("streamed_file_end") => {
            Err(Outcome::Fatal(format!("{}: injected failure after its first rows (failpoint streamed_file_end)", file.uri)))
        }
        (Ok(()), Some(rows)) => append(flusher, part(&stream.hash, rows, true)).await,
        (Ok(()), None) => Err(failed(kind, "the file produced no rows")),
        (Err(e), _) if !sent_any => Err(failed(kind, e)),
        (Err(e), _) => Err(Outcome::Fatal(format!("{}: failed after its first segments: {e}", file.uri))),
    }
}
