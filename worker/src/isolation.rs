//! Normalizer processes: media decoders (FFmpeg, pdfium) are C code fed
//! untrusted files, so they run in child processes. A decoder that crashes,
//! aborts or hangs then costs the file it was working on, not the job: the
//! parent records the file as failed and starts a fresh child.
//!
//! Protocol: the parent writes one JSON [`Request`] per line to the child's
//! stdin; the child answers with frames on stdout: `[kind: u8][len: u32 LE]
//! [payload]`, a `HASH` frame, any number of `ROWS` frames, then `DONE` or
//! `ERROR` (a media file's `KIND` comes before its rows). A request for part
//! of a file ([`Part`]) is answered without the hash: `ROWS` of a PDF's
//! pages, one `COUNT` frame (a u32 LE page count), or one `PROBED` frame
//! (FFmpeg's probe of the file's head, JSON).
//!
//! The parent makes the child's stdout a Unix socket: rows whose blobs are
//! big then come as `ROWS_FD` frames, the blobs in a sealed memfd passed
//! with the frame's first byte (see `handover`) and mapped by the parent,
//! not copied through the stream. On any other stdout (a pipe, a file) the
//! child sends every blob inline in `ROWS` frames.
//!
//! Both sides are here: [`serve`] is the child (`sluice-normalizer`,
//! `sluice-normalizer-media`), [`ChildProc`] the parent's handle on one.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_common::schema::{Kind, Row};
use sluice_common::settings::Settings;
use crate::handover;
use crate::normalize::{self, NormalizeError};

/// The argument a normalizer process is started with (`sluice
/// normalize-server`; the normalizer binaries accept it too).
pub const SUBCOMMAND: &str = "normalize-server";

/// The normalizer binary without FFmpeg (PDFs, images, OCR), installed
/// beside `sluice`.
const LEAN_BINARY: &str = "sluice-normalizer";
/// The normalizer binary with FFmpeg (video, audio and FFmpeg's image
/// decoders too), installed beside `sluice`.
const MEDIA_BINARY: &str = "sluice-normalizer-media";

/// The programs normalizer processes are started from. Two, because
/// linking Debian's FFmpeg loads ~130 shared libraries into a process
/// (~40 ms of CPU at every start, ~25-35 MB of resident pages): the
/// processes that only render PDFs or read images do without it, and so
/// does `sluice` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalizers {
    /// Serves PDFs and images the `image` crate reads (and OCR).
    pub lean: PathBuf,
    /// Serves every request, video and audio too.
    pub media: PathBuf,
    /// PDFs, images and OCR are normalized in the worker's own process
    /// (`--in-process-normalizers`); only what needs FFmpeg goes to `media`
    /// processes, since `sluice` does not link it.
    pub in_process: bool,
}

impl Normalizers {
    /// The program `request` needs.
    fn for_request(&self, request: &Request) -> &std::path::Path {
        if request.needs_ffmpeg() {
            &self.media
        } else {
            &self.lean
        }
    }
}

/// The normalizer binaries beside the running one, `sluice-normalizer`
/// and `sluice-normalizer-media` (each process then maps only the decoders
/// it needs, not the table engine and the rest of `sluice`). The running
/// binary (`sluice normalize-server`) stands in for a missing
/// `sluice-normalizer`; nothing stands in for `sluice-normalizer-media`,
/// the only one with FFmpeg: without it, files that need FFmpeg fail and
/// say so. `in_process`: see [`Normalizers::in_process`].
pub fn normalizer_exe(in_process: bool) -> std::io::Result<Normalizers> {
    let exe = std::env::current_exe()?;
    let lean = Some(exe.with_file_name(LEAN_BINARY)).filter(|p| p.is_file()).unwrap_or_else(|| exe.clone());
    Ok(Normalizers { lean, media: exe.with_file_name(MEDIA_BINARY), in_process })
}

/// Serve requests on stdin and stdout until stdin closes, then exit: the
/// whole of a normalizer process. No async runtime: a plain loop the parent
/// can kill at any moment.
pub fn serve_stdio() -> ! {
    let stdout = std::io::stdout();
    let socket = stdout
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    let handover = socket.then(|| stdout.as_fd());
    let out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    std::process::exit(match serve(std::io::stdin().lock(), out, handover) {
        Ok(()) => 0,
        Err(_) => 1,
    })
}

pub const HASH: u8 = 1;
pub const ROWS: u8 = 2;
pub const DONE: u8 = 3;
pub const ERROR: u8 = 4;
pub const COUNT: u8 = 5;
/// The kind a media file turned out to be (payload: its name).
pub const KIND: u8 = 6;
/// Rows whose blobs come in the memfd passed with the frame's first byte.
pub const ROWS_FD: u8 = 7;
/// FFmpeg's probe of a file's head (payload: [`normalize::Probed`] as JSON).
pub const PROBED: u8 = 8;

/// Rows frames with at least this many bytes of blobs hand them over in a
/// memfd (a few syscalls each side) rather than through the stream.
const HANDOVER_MIN_BYTES: usize = 128 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub path: PathBuf,
    pub kind: Kind,
    pub settings: Settings,
    #[serde(default)]
    pub part: Part,
}

impl Request {
    /// Whether only a process with FFmpeg can serve this: video, audio,
    /// images (which go to a process when the `image` crate could not
    /// read them, or for OCR), and probes.
    pub fn needs_ffmpeg(&self) -> bool {
        self.part == Part::Probe || needs_ffmpeg(self.kind)
    }
}

/// Whether files of `kind` go to a process with FFmpeg when normalized in
/// child processes (see [`Request::needs_ffmpeg`]).
pub fn needs_ffmpeg(kind: Kind) -> bool {
    matches!(kind, Kind::Video | Kind::Audio | Kind::Image)
}

/// What of the file a request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// Every row, after the file's hash.
    #[default]
    Whole,
    /// A PDF's page count, once it passed the checks.
    PageCount,
    /// Rows of a PDF's pages `start..end` (0-based), numbered as in the
    /// whole document.
    Pages { start: usize, end: usize },
    /// FFmpeg's probe of the file's first bytes, for a worker that cannot
    /// tell what the file is without it.
    Probe,
}

/// A row without its two binary fields, which follow the header raw.
#[derive(Debug, Serialize, Deserialize)]
struct RowHeader {
    chunk_index: u32,
    mime_type: String,
    start_seconds: Option<f64>,
    end_seconds: Option<f64>,
    page: Option<u32>,
    text: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    metadata: Option<serde_json::Value>,
    data_len: Option<u64>,
    thumbnail_len: Option<u64>,
}

/// Write a `ROWS` frame: `[header len: u32 LE][JSON headers][blobs]`; the
/// blobs (segment bytes, renders, thumbnails) go out straight from the rows.
/// With `handover` (the socket `out` writes to) and blobs of at least
/// [`HANDOVER_MIN_BYTES`], a `ROWS_FD` frame instead: `[header len][JSON
/// headers]`, the blobs in a sealed memfd passed with its first byte:
/// `sealed` as it is when the rows came in one ([`normalize::Piece::Sealed`]), else a
/// new one they are copied into.
fn write_rows(
    out: &mut impl Write,
    rows: Vec<Row>,
    sealed: Option<OwnedFd>,
    handover: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let mut blobs: Vec<(Option<Bytes>, Option<Vec<u8>>)> = Vec::with_capacity(rows.len());
    let headers: Vec<RowHeader> = rows
        .into_iter()
        .map(|r| {
            let header = RowHeader {
                chunk_index: r.chunk_index,
                mime_type: r.mime_type,
                start_seconds: r.start_seconds,
                end_seconds: r.end_seconds,
                page: r.page,
                text: r.text,
                width: r.width,
                height: r.height,
                metadata: r.metadata,
                data_len: r.data.as_ref().map(|d| d.len() as u64),
                thumbnail_len: r.thumbnail.as_ref().map(|t| t.len() as u64),
            };
            blobs.push((r.data, r.thumbnail));
            header
        })
        .collect();
    let header = serde_json::to_vec(&headers).map_err(std::io::Error::other)?;
    let parts: Vec<&[u8]> = blobs
        .iter()
        .flat_map(|(d, t)| [d.as_deref().unwrap_or_default(), t.as_deref().unwrap_or_default()])
        .collect();
    let blob_len: usize = parts.iter().map(|p| p.len()).sum();
    let inline = match handover.filter(|_| blob_len >= HANDOVER_MIN_BYTES) {
        Some(socket) => {
            let memfd = match sealed.map(std::fs::File::from) {
                Some(f) if f.metadata()?.len() == blob_len as u64 => f.into(),
                _ => handover::sealed_memfd(&parts)?,
            };
            // What is buffered goes first: the descriptor rides on this frame's first byte.
            out.flush()?;
            handover::send_with_fd(socket, ROWS_FD, memfd.as_fd())?;
            &[][..]
        }
        None => {
            out.write_all(&[ROWS])?;
            &parts[..]
        }
    };
    let inline_len: usize = inline.iter().map(|p| p.len()).sum();
    let len = u32::try_from(4 + header.len() + inline_len).map_err(|_| std::io::Error::other("rows frame above 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    for part in inline {
        out.write_all(part)?;
    }
    out.flush()
}

fn malformed() -> String {
    "malformed rows frame from normalizer process".to_string()
}

/// A rows frame's headers, and where its blobs start in the payload.
fn row_headers(payload: &[u8]) -> Result<(Vec<RowHeader>, usize), String> {
    let n = u32::from_le_bytes(payload.get(..4).ok_or_else(malformed)?.try_into().expect("4 bytes")) as usize;
    let headers = serde_json::from_slice(payload.get(4..4 + n).ok_or_else(malformed)?).map_err(|_| malformed())?;
    Ok((headers, 4 + n))
}

/// Bytes of blobs the rows of `headers` carry.
fn blob_len(headers: &[RowHeader]) -> u64 {
    headers.iter().map(|h| h.data_len.unwrap_or(0) + h.thumbnail_len.unwrap_or(0)).sum()
}

/// Decode a `ROWS` frame's payload.
fn decode_rows(payload: Vec<u8>) -> Result<Vec<Row>, String> {
    let (headers, at) = row_headers(&payload)?;
    rows_with_blobs(headers, Bytes::from(payload).slice(at..))
}

/// Decode a `ROWS_FD` frame's payload, its blobs in `memfd`.
fn decode_rows_fd(payload: &[u8], memfd: OwnedFd) -> Result<Vec<Row>, String> {
    let (headers, _) = row_headers(payload)?;
    let len = usize::try_from(blob_len(&headers)).map_err(|_| malformed())?;
    let blobs = handover::map_sealed(memfd, len).map_err(|e| e.to_string())?;
    rows_with_blobs(headers, blobs)
}

/// Rows of `headers`, their blobs sliced from `blobs` (no copy but the
/// thumbnails').
fn rows_with_blobs(headers: Vec<RowHeader>, blobs: Bytes) -> Result<Vec<Row>, String> {
    let mut at = 0usize;
    let mut take = |len: Option<u64>| -> Result<Option<Bytes>, String> {
        let Some(len) = len else { return Ok(None) };
        let end = at + len as usize;
        let b = blobs.get(at..end).ok_or_else(malformed)?;
        let out = blobs.slice_ref(b);
        at = end;
        Ok(Some(out))
    };
    headers
        .into_iter()
        .map(|h| {
            let data = take(h.data_len)?;
            let thumbnail = take(h.thumbnail_len)?.map(|b| b.to_vec());
            Ok(Row {
                chunk_index: h.chunk_index,
                mime_type: h.mime_type,
                start_seconds: h.start_seconds,
                end_seconds: h.end_seconds,
                page: h.page,
                text: h.text,
                data,
                thumbnail,
                width: h.width,
                height: h.height,
                metadata: h.metadata,
            })
        })
        .collect()
}

fn write_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(payload)?;
    out.flush()
}

/// The child's loop: serve requests until stdin closes. `handover`: the
/// socket `out` writes to, when it is one (big blobs then go by memfd).
pub fn serve(input: impl Read + AsFd, mut out: impl Write, handover: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    use std::io::BufRead;
    normalize::keep_page_buffers(true);
    let mut input = std::io::BufReader::new(input);
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                write_frame(&mut out, ERROR, format!("bad request: {e}").as_bytes())?;
                continue;
            }
        };
        crash_hooks(&req.path);
        let mut send = |piece| {
            match piece {
                normalize::Piece::Hash(hash) => write_frame(&mut out, HASH, hash.as_bytes()),
                normalize::Piece::Rows(rows) => write_rows(&mut out, rows, None, handover),
                normalize::Piece::Sealed(rows, memfd) => write_rows(&mut out, rows, Some(memfd), handover),
                normalize::Piece::PageCount(n) => write_frame(&mut out, COUNT, &(n as u32).to_le_bytes()),
                normalize::Piece::Kind(kind) => write_frame(&mut out, KIND, kind.as_str().as_bytes()),
                normalize::Piece::Probed(probed) => serde_json::to_vec(&probed)
                    .map_err(std::io::Error::other)
                    .and_then(|json| write_frame(&mut out, PROBED, &json)),
            }
            .map_err(|e| NormalizeError::new(e.to_string()))
        };
        let result = match req.part {
            Part::Whole => normalize::normalize_streamed(req.kind, &req.path, &req.settings, &mut send),
            Part::PageCount => {
                normalize::pdf_page_count(&req.path, &req.settings).and_then(|n| send(normalize::Piece::PageCount(n)))
            }
            Part::Pages { start, end } => normalize::normalize_pdf_pages(&req.path, &req.settings, Some(start..end), &mut |rows| {
                send(normalize::Piece::Rows(rows))
            }),
            Part::Probe => normalize::probe_file(&req.path).and_then(|probed| send(normalize::Piece::Probed(probed))),
        }
        .map_err(|e| e.0);
        match result {
            Ok(()) => write_frame(&mut out, DONE, b"")?,
            Err(e) => write_frame(&mut out, ERROR, e.as_bytes())?,
        }
        // While requests keep coming, the process keeps what the last file
        // freed (its page buffers, for the next PDF to render into, and
        // the heap): handed back after every file, it was faulted in anew
        // by the next, as huge pages glibc zeroes 2 MiB at a time. When no
        // request comes within `IDLE_AFTER`, it all goes back.
        if input.buffer().is_empty() && !readable_within(input.get_ref().as_fd(), IDLE_AFTER) {
            normalize::drop_page_buffers();
            crate::release_free_memory();
        }
    }
    Ok(())
}

/// How long a normalizer process waits for its next request before it
/// drops the page buffers it keeps between PDFs.
const IDLE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether `fd` has something to read (or is closed) within `wait`.
fn readable_within(fd: BorrowedFd<'_>, wait: std::time::Duration) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    #[allow(unsafe_code)]
    // SAFETY: one valid pollfd, borrowed for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, ms) };
    // An error (EINTR) counts as ready: the read that follows blocks anyway.
    ready != 0
}

/// Test hooks: `SLUICE_TEST_CRASH_ON` / `SLUICE_TEST_HANG_ON` make the child
/// abort / hang on files whose path contains the given text, standing in
/// for a decoder that crashes or loops on a hostile file. Only with the
/// `testing` feature.
#[cfg(not(feature = "testing"))]
fn crash_hooks(_path: &std::path::Path) {}

#[cfg(feature = "testing")]
fn crash_hooks(path: &std::path::Path) {
    let path = path.to_string_lossy();
    if std::env::var("SLUICE_TEST_CRASH_ON").is_ok_and(|s| !s.is_empty() && path.contains(&s)) {
        std::process::abort();
    }
    if std::env::var("SLUICE_TEST_HANG_ON").is_ok_and(|s| !s.is_empty() && path.contains(&s)) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// The parent's end of a normalizer process's stdout, a Unix socket:
/// frames, and the memfds handed over with them.
pub struct Frames {
    socket: tokio::net::UnixStream,
    /// Descriptors received, in the order their frames come.
    fds: VecDeque<OwnedFd>,
}

impl Frames {
    fn new(socket: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self { socket: tokio::net::UnixStream::from_std(socket)?, fds: VecDeque::new() })
    }

    /// Fill `buf`, keeping descriptors that come along.
    async fn read_exact(&mut self, mut buf: &mut [u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            self.socket.readable().await?;
            let (socket, fds) = (&self.socket, &mut self.fds);
            let got = socket.try_io(tokio::io::Interest::READABLE, || handover::recv_with_fds(socket.as_raw_fd(), buf, fds));
            match got {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut std::mem::take(&mut buf)[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One frame from the child; `None` at end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut head = [0u8; 5];
        match self.read_exact(&mut head).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload).await?;
        Ok(Some((head[0], payload)))
    }

    /// The rows of a `ROWS` or `ROWS_FD` frame.
    fn rows(&mut self, kind: u8, payload: Vec<u8>) -> Result<Vec<Row>, String> {
        if kind == ROWS {
            return decode_rows(payload);
        }
        let memfd = self.fds.pop_front().ok_or("a rows frame from the normalizer process came without its buffer")?;
        decode_rows_fd(&payload, memfd)
    }
}

/// A normalizer's child process, kept across files while it stays healthy.
pub struct ChildProc {
    child: tokio::process::Child,
    /// Started from `Normalizers::media`: it serves every request.
    media: bool,
    stdin: tokio::process::ChildStdin,
    /// Lent to the task reading a file's frames, given back when it ends
    /// cleanly; missing: the child must not be reused.
    stdout: Option<Frames>,
}

/// The `GLIBC_TUNABLES` a normalizer process starts with: the parent's,
/// plus `glibc.malloc.hugetlb=1` unless it says otherwise (`None`: leave
/// them as they are). glibc then asks for transparent huge pages for the
/// blocks it maps for large allocations: a PDF's page buffers (~8 MB at
/// 150 DPI), libjpeg-turbo's and pdfium's buffers, video segments. On the
/// Deeplake corpus the page faults of the whole run went from ~286,000 to
/// ~220,000, and the run took 4 % less CPU and wall time (medians of eight
/// alternating runs), its peak RSS within the noise of runs without. Where
/// the kernel gives no transparent huge pages, glibc goes on without them.
fn huge_page_tunables(parent: Option<&str>) -> Option<String> {
    const HUGE: &str = "glibc.malloc.hugetlb=1";
    match parent {
        Some(set) if set.split(':').any(|t| t.starts_with("glibc.malloc.hugetlb=")) => None,
        Some(set) if !set.is_empty() => Some(format!("{set}:{HUGE}")),
        _ => Some(HUGE.to_string()),
    }
}

/// What a file's normalization yields: its outcome and, from a child
/// process that is still healthy, its stdout back.
pub type Work = (Result<(), String>, Option<Frames>);

impl ChildProc {
    fn spawn(exe: &std::path::Path, media: bool) -> Result<Self, String> {
        let mut command = tokio::process::Command::new(exe);
        // OpenMP (Tesseract's threads, through a library FFmpeg already
        // loads) reads its thread limit once, at process start: one thread a
        // process, since the processes already share the cores. Left to
        // itself it spins a thread a core in every process, which made OCR
        // five times slower on two cores.
        if std::env::var_os("OMP_THREAD_LIMIT").is_none() {
            command.env("OMP_THREAD_LIMIT", "1");
        }
        if let Some(tunables) = huge_page_tunables(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
            command.env("GLIBC_TUNABLES", tunables);
        }
        // Its stdout is a socket, so it can hand big buffers over by memfd.
        // The child's end is closed here once started (it goes with
        // `command`): the child's exit then ends the stream.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let mut child = command
            .arg(SUBCOMMAND)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::from(OwnedFd::from(theirs)))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match media && !exe.is_file() {
                true => format!(
                    "video, audio, images only FFmpeg reads and files without magic bytes are read by {MEDIA_BINARY}, \
                     which is not installed beside sluice ({}): {e}",
                    exe.display()
                ),
                false => format!("cannot start normalizer process {}: {e}", exe.display()),
            })?;
        drop(command);
        let program = if media { "media" } else { "lean" };
        metrics::counter!("sluice_worker_normalizer_processes_started_total", "program" => program).increment(1);
        let stdin = child.stdin.take().ok_or("the normalizer process has no stdin")?;
        let stdout = Frames::new(ours).map_err(|e| format!("cannot read the normalizer process: {e}"))?;
        Ok(Self { child, media, stdin, stdout: Some(stdout) })
    }

    /// Kill the child and say how it ended.
    pub async fn end(mut self) -> String {
        let _ = self.child.start_kill();
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Let an idle child go: it exits when its input closes, and is reaped
    /// here (so no zombie stays behind, and its CPU time is counted as
    /// this process's children's). Killed if it does not exit in time.
    pub async fn finish(self) {
        let Self { mut child, stdin, stdout, .. } = self;
        drop((stdin, stdout));
        if tokio::time::timeout(std::time::Duration::from_secs(2), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the child was started from the program with FFmpeg.
    pub fn has_ffmpeg(&self) -> bool {
        self.media
    }

    /// Whether it is between files, ready for the next (its stdout is not
    /// lent to a file still being read).
    pub fn is_ready(&self) -> bool {
        self.stdout.is_some()
    }

    /// Take back the stdout a cleanly finished file lent out.
    pub fn give_back(&mut self, stdout: Frames) {
        self.stdout = Some(stdout);
    }

    /// Send `request` to the child in `slot` (started first if there is
    /// none, or replaced if it cannot serve the request) and
    /// stream its pieces into `tx`. Err: the file fails (the child could
    /// not be started or is gone).
    pub async fn start(
        slot: &mut Option<ChildProc>,
        exes: &Normalizers,
        request: &Request,
        tx: tokio::sync::mpsc::Sender<normalize::Piece>,
    ) -> Result<tokio::task::JoinHandle<Work>, String> {
        use tokio::io::AsyncWriteExt;
        // A process without FFmpeg cannot serve video; one with FFmpeg
        // serves every request.
        if let Some(proc) = slot.take_if(|proc| request.needs_ffmpeg() && !proc.media) {
            proc.finish().await;
        }
        if slot.is_none() {
            let exe = exes.for_request(request);
            *slot = Some(ChildProc::spawn(exe, exe == exes.media)?);
        }
        let Some(proc) = slot.as_mut() else { return Err("no normalizer process".into()) };
        let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let stdout = proc.stdout.take();
        let written = proc.stdin.write_all(&line).await;
        let (Ok(()), Some(mut out)) = (written, stdout) else {
            let status = match slot.take() {
                Some(proc) => proc.end().await,
                None => "gone".into(),
            };
            return Err(format!("normalizer process is gone ({status})"));
        };
        Ok(tokio::spawn(async move {
            use normalize::Piece;
            let result = loop {
                let frame = match out.next().await {
                    Ok(Some(frame)) => frame,
                    _ => return (Err("died".to_string()), None),
                };
                let sent = match frame {
                    (HASH, p) => tx.send(Piece::Hash(String::from_utf8_lossy(&p).into_owned())).await,
                    (kind @ (ROWS | ROWS_FD), p) => match out.rows(kind, p) {
                        Ok(rows) => tx.send(Piece::Rows(rows)).await,
                        Err(e) => return (Err(e), None),
                    },
                    (COUNT, p) => match <[u8; 4]>::try_from(p.as_slice()) {
                        Ok(n) => tx.send(Piece::PageCount(u32::from_le_bytes(n) as usize)).await,
                        Err(_) => return (Err("malformed count frame from normalizer process".into()), None),
                    },
                    (KIND, p) => match std::str::from_utf8(&p).ok().and_then(Kind::parse) {
                        Some(kind) => tx.send(Piece::Kind(kind)).await,
                        None => return (Err("malformed kind frame from normalizer process".into()), None),
                    },
                    (PROBED, p) => match serde_json::from_slice(&p) {
                        Ok(probed) => tx.send(Piece::Probed(probed)).await,
                        Err(_) => return (Err("malformed probe frame from normalizer process".into()), None),
                    },
                    (DONE, _) => break Ok(()),
                    (ERROR, p) => break Err(String::from_utf8_lossy(&p).into_owned()),
                    (other, _) => return (Err(format!("unknown frame {other} from normalizer process")), None),
                };
                if sent.is_err() {
                    return (Err("pipeline stopped".to_string()), None);
                }
            };
            (result, Some(out))
        }))
    }
}

/// How long a worker's idle normalizer process with FFmpeg is kept for the
/// next file of its kind before it ends (and gives its memory back): at
/// most one start a second per process however files of mixed kinds come.
pub const IDLE_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an idle process without FFmpeg is kept: it starts in ~2 ms of
/// CPU, against 28-48 ms for one with FFmpeg's libraries, so it need not
/// linger (~11 MB) beside a media process once the PDFs are done.
pub const LEAN_IDLE_KEPT: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizer_processes_ask_for_huge_pages_unless_told_otherwise() {
        assert_eq!(huge_page_tunables(None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(huge_page_tunables(Some("")).as_deref(), Some("glibc.malloc.hugetlb=1"));
        // The parent's own tunables are kept.
        assert_eq!(
            huge_page_tunables(Some("glibc.malloc.arena_max=1")).as_deref(),
            Some("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1")
        );
        // A user's choice of huge pages stands.
        assert_eq!(huge_page_tunables(Some("glibc.malloc.hugetlb=0")), None);
        assert_eq!(huge_page_tunables(Some("glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=2")), None);
    }

    #[test]
    fn rows_survive_the_wire() {
        let rows = vec![
            Row { chunk_index: 0, mime_type: "video/mp4".into(), data: Some(Bytes::from_static(b"abc")), thumbnail: Some(vec![1, 2]), start_seconds: Some(0.5), ..Default::default() },
            Row { chunk_index: 1, mime_type: "image/jpeg".into(), text: Some("page".into()), page: Some(2), ..Default::default() },
        ];
        let mut frame = Vec::new();
        write_rows(&mut frame, rows, None, None).unwrap();
        assert_eq!(frame[0], ROWS);
        assert_eq!(u32::from_le_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 5);
        let back = decode_rows(frame[5..].to_vec()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].data.as_deref(), Some(&b"abc"[..]));
        assert_eq!(back[0].thumbnail, Some(vec![1, 2]));
        assert_eq!(back[0].start_seconds, Some(0.5));
        assert_eq!(back[1].text.as_deref(), Some("page"));
        assert!(back[1].data.is_none());
        assert!(decode_rows(vec![9, 0, 0, 0, 1]).is_err());
    }

    /// Over a socket, big blobs come by memfd and small ones inline, in
    /// the order they were written.
    #[tokio::test]
    async fn big_blobs_cross_a_socket_by_memfd_and_small_ones_inline() {
        let (child, parent) = std::os::unix::net::UnixStream::pair().unwrap();
        let segment: Vec<u8> = (0..HANDOVER_MIN_BYTES + 1000).map(|i| (i % 251) as u8).collect();
        let big = vec![Row { chunk_index: 0, data: Some(Bytes::from(segment.clone())), thumbnail: Some(vec![7; 10]), ..Default::default() }];
        let small = vec![Row { chunk_index: 1, data: Some(Bytes::from_static(b"tail")), ..Default::default() }];
        let mut out = std::io::BufWriter::new(&child);
        write_rows(&mut out, big, None, Some(child.as_fd())).unwrap();
        write_rows(&mut out, small, None, Some(child.as_fd())).unwrap();
        drop(out);
        drop(child);
        let mut frames = Frames::new(parent).unwrap();
        let (kind, payload) = frames.next().await.unwrap().unwrap();
        assert_eq!(kind, ROWS_FD);
        assert!(payload.len() < 1000, "the blobs are not in the stream");
        let rows = frames.rows(kind, payload).unwrap();
        assert_eq!(rows[0].data.as_deref(), Some(&segment[..]));
        assert_eq!(rows[0].thumbnail, Some(vec![7; 10]));
        let (kind, payload) = frames.next().await.unwrap().unwrap();
        assert_eq!(kind, ROWS);
        assert_eq!(frames.rows(kind, payload).unwrap()[0].data.as_deref(), Some(&b"tail"[..]));
        assert!(frames.next().await.unwrap().is_none(), "the stream ends with the child's end");
        // A ROWS_FD frame without its descriptor fails the file, clearly.
        assert!(frames.rows(ROWS_FD, vec![2, 0, 0, 0, b'[', b']']).unwrap_err().contains("without its buffer"));
    }

    /// Rows that came in a sealed memfd (a muxed segment) hand that memfd
    /// over as it is; one whose size does not match its rows is not
    /// trusted, and the rows' own bytes go in a new one.
    #[tokio::test]
    async fn a_sealed_rows_memfd_is_handed_over_as_it_is() {
        use std::io::Write as _;
        let (child, parent) = std::os::unix::net::UnixStream::pair().unwrap();
        let segment: Vec<u8> = (0..HANDOVER_MIN_BYTES + 1000).map(|i| (i % 251) as u8).collect();
        let mut memfd = handover::memfd().unwrap();
        memfd.write_all(&segment).unwrap();
        let row = Row { chunk_index: 0, thumbnail: Some(vec![7; 10]), ..Default::default() };
        let normalize::Piece::Sealed(rows, fd) = normalize::Piece::sealed_row(memfd, segment.len() as u64, row).unwrap() else {
            panic!("a sealed row")
        };
        assert_eq!(rows[0].data.as_deref(), Some(&segment[..]), "the row's data map the memfd");
        // Rows that say other bytes than the memfd holds (never so outside
        // this test) show which of the two went over.
        let stand_in = |rows: &[Row]| vec![Row { data: Some(Bytes::from(vec![1u8; segment.len()])), ..rows[0].clone() }];
        let (other, other_fd) = (stand_in(&rows), fd.try_clone().unwrap());
        let mut out = std::io::BufWriter::new(&child);
        write_rows(&mut out, other, Some(other_fd), Some(child.as_fd())).unwrap();
        let short = handover::sealed_memfd(&[b"short"]).unwrap();
        write_rows(&mut out, stand_in(&rows), Some(short), Some(child.as_fd())).unwrap();
        drop(out);
        drop(child);
        let mut frames = Frames::new(parent).unwrap();
        let (kind, payload) = frames.next().await.unwrap().unwrap();
        assert_eq!(kind, ROWS_FD);
        let got = frames.rows(kind, payload).unwrap();
        assert_eq!(got[0].data.as_deref(), Some(&segment[..]), "the memfd itself went over");
        assert_eq!(got[0].thumbnail, Some(vec![7; 10]));
        let (kind, payload) = frames.next().await.unwrap().unwrap();
        assert_eq!(kind, ROWS_FD);
        assert_eq!(frames.rows(kind, payload).unwrap()[0].data.as_deref(), Some(&vec![1u8; segment.len()][..]));
        // Sealed: not even the process that made it can change it.
        let mut again = std::fs::File::from(fd);
        assert!(again.write_all(b"x").is_err());
    }
}
