//! Video ingestion against fixtures made by the ffmpeg CLI. Every segment is
//! exported through pylance and must decode on its own with the ffmpeg CLI;
//! segment times must tile the source duration.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).status().expect("ffmpeg CLI must be installed");
    assert!(ok.success(), "ffmpeg {args:?}");
}

fn lavfi_video(seconds: &str) -> [&str; 6] {
    ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", seconds]
}

/// An H.264 clip of `seconds` with a keyframe every second, no audio.
fn h264_clip(path: &Path, seconds: &str) {
    let mut a: Vec<&str> = lavfi_video(seconds).to_vec();
    a.extend(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", path.to_str().unwrap()]);
    ffmpeg(&a);
}

/// `n` such clips (`clip0.mp4`, ...) in a folder `videos` of a new
/// temporary directory.
fn h264_clips(n: usize, seconds: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("videos");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..n {
        h264_clip(&corpus.join(format!("clip{i}.mp4")), seconds);
    }
    (dir, corpus)
}

fn make_fixtures(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"];
    let mut a: Vec<&str> = lavfi_video("25").to_vec();
    let h264 = p("h264_aac.mp4");
    a.extend(sine);
    a.extend(["-t", "25", "-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", &h264]);
    ffmpeg(&a);
    let vp9 = p("vp9_opus.webm");
    let mut a: Vec<&str> = lavfi_video("12").to_vec();
    a.extend(sine);
    a.extend(["-t", "12", "-c:v", "libvpx-vp9", "-g", "50", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-c:a", "libopus", &vp9]);
    ffmpeg(&a);
    let noaudio = p("no_audio.mp4");
    h264_clip(Path::new(&noaudio), "8");
    let longgop = p("long_gop.mp4");
    let mut a: Vec<&str> = lavfi_video("30").to_vec();
    a.extend(["-c:v", "libx264", "-g", "250", "-keyint_min", "250", "-sc_threshold", "0", "-pix_fmt", "yuv420p", &longgop]);
    ffmpeg(&a);
    ffmpeg(&["-i", &noaudio, "-c", "copy", "-metadata:s:v:0", "rotate=90", &p("rotated.mp4")]);
    let bytes = std::fs::read(&h264).unwrap();
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("truncated.mp4"), &bytes[..bytes.len() * 3 / 4]).unwrap();
    // ASF gives no duration once cut: its header's file size tells.
    let wmv = dir.join("whole.wmv");
    let mut a: Vec<&str> = lavfi_video("3").to_vec();
    a.extend(["-c:v", "wmv2", "-f", "asf", wmv.to_str().unwrap()]);
    ffmpeg(&a);
    let bytes = std::fs::read(&wmv).unwrap();
    std::fs::write(bad.join("truncated.wmv"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::remove_file(&wmv).unwrap();
    std::fs::write(bad.join("garbage.mp4"), (0..50_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(bad.join("empty.webm"), b"").unwrap();
}

fn probe_duration(path: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0.0)
}

/// The first frame of a picture or video, as 64x48 gray pixels.
fn gray_64x48(path: &str) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", path, "-frames:v", "1", "-vf", "scale=64:48,format=gray", "-f", "rawvideo", "-"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.len() == 64 * 48, "{path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn videos_become_playable_segments_that_tile_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("videos");
    make_fixtures(&corpus);
    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &["--segment-seconds", "10"]);
    assert_eq!(code, 2, "the bad videos fail, the rest land");
    assert_eq!(s["files_failed"], 4);
    let reason = |name: &str| failure_reason(&s, name).unwrap();
    assert!(reason("truncated.mp4").contains("truncated video"), "{}", reason("truncated.mp4"));
    assert!(reason("truncated.wmv").contains("truncated video: the ASF header says"), "{}", reason("truncated.wmv"));
    assert!(reason("garbage.mp4").contains("cannot open video"));
    assert!(reason("empty.webm").contains("cannot open video"));

    let export = dir.path().join("export");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
    let out = run(Command::new(python()).arg(script).arg(&table).arg(&export));
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();

    for (name, source_seconds, segments, mime) in [
        ("h264_aac.mp4", 25.0, 3, "video/mp4"),
        ("vp9_opus.webm", 12.0, 2, "video/webm"),
        ("no_audio.mp4", 8.0, 1, "video/mp4"),
        ("long_gop.mp4", 30.0, 3, "video/mp4"),
        ("rotated.mp4", 8.0, 1, "video/mp4"),
    ] {
        let mut segs: Vec<_> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with(name)).collect();
        segs.sort_by_key(|r| r["chunk_index"].as_u64());
        assert_eq!(segs.len(), segments, "{name}: segments");
        let mut expected_start = 0.0;
        for seg in &segs {
            assert_eq!(seg["kind"], "video");
            assert_eq!(seg["mime_type"], mime, "{name}: container fits the codecs");
            let (start, end) = (seg["start_seconds"].as_f64().unwrap(), seg["end_seconds"].as_f64().unwrap());
            assert!((start - expected_start).abs() < 1e-6, "{name}: segments are contiguous ({start} vs {expected_start})");
            assert!(end > start);
            expected_start = end;
            assert!(seg["thumbnail_bytes"].as_u64().unwrap() > 0, "{name}: thumbnail");
            // Each segment decodes on its own, cleanly, and lasts as long as it says.
            let path = seg["path"].as_str().unwrap();
            let decode = Command::new("ffmpeg").args(["-v", "error", "-i", path, "-f", "null", "-"]).output().unwrap();
            assert!(decode.status.success() && decode.stderr.is_empty(), "{name} segment {}: {}", seg["chunk_index"], String::from_utf8_lossy(&decode.stderr));
            let d = probe_duration(path);
            assert!((d - (end - start)).abs() < 0.25, "{name} segment {}: plays {d}s, row says {}s", seg["chunk_index"], end - start);
        }
        assert!((expected_start - source_seconds).abs() < 0.2, "{name}: segments cover the source ({expected_start} of {source_seconds})");
        let meta = &segs[0]["metadata"];
        assert!((meta["duration"].as_f64().unwrap() - source_seconds).abs() < 0.2);
        assert_eq!(meta["has_audio"], !name.starts_with("no_audio") && !name.starts_with("long_gop") && !name.starts_with("rotated"));
    }
    // Each segment's thumbnail is its own first frame (thumbnails are
    // decoded beside the muxing and matched back to their segments).
    let mut segs: Vec<_> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with("h264_aac.mp4")).collect();
    segs.sort_by_key(|r| r["chunk_index"].as_u64());
    let firsts: Vec<Vec<u8>> = segs.iter().map(|r| gray_64x48(r["path"].as_str().unwrap())).collect();
    for (i, seg) in segs.iter().enumerate() {
        let thumb = gray_64x48(seg["thumbnail_path"].as_str().unwrap());
        let diffs: Vec<f64> = firsts.iter().map(|f| f.iter().zip(&thumb).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / f.len() as f64).collect();
        let nearest = diffs.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(nearest, i, "segment {i}'s thumbnail is its first frame: mean differences {diffs:?}");
    }
    let long: Vec<f64> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with("long_gop.mp4")).map(|r| r["start_seconds"].as_f64().unwrap()).collect();
    assert!(long.iter().all(|t| (t / 10.0 - (t / 10.0).round()).abs() < 1e-6), "long GOP: cuts only at its keyframes {long:?}");

    // Frames above the pixel limit are refused from the header (FFmpeg's
    // stream probing and the thumbnail decoder are held to it too).
    let (code, s) = ingest_json(&dir.path().join("small"), &[&corpus.join("no_audio.mp4")], &["--max-image-pixels", "10000"]);
    assert_eq!(code, 2);
    let why = s["errors"][0]["reason"].as_str().unwrap();
    assert!(why.contains("video frames are 320x240 = 76800 pixels, above the limit of 10000"), "{why}");
    let rotated = rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with("rotated.mp4")).unwrap();
    assert_eq!((rotated["width"].as_u64(), rotated["height"].as_u64()), (Some(240), Some(320)), "rotated: display size");
    assert_eq!(rotated["metadata"]["rotation"], 270);
    assert_eq!(rotated["metadata"]["video_codec"], "h264");
}

#[test]
fn a_crash_never_commits_part_of_a_video() {
    let (dir, corpus) = h264_clips(6, "9");
    // 3-second segments, and a 1 KiB flush budget: every segment is its own
    // flush, so videos span several checkpoints and most cuts are unclean.
    let args = ["--segment-seconds", "3", "--flush-bytes", "1024", "--commit-every", "1", "--normalization-workers", "2"];
    let table = dir.path().join("t");
    let mut cmd = sluice();
    cmd.env("SLUICE_FAILPOINTS", "after_commit=2").arg("ingest").arg("--table").arg(&table).arg(&corpus).args(args);
    assert_eq!(run(&mut cmd).status.code(), None, "killed by the failpoint");

    // Whatever landed before the crash is whole videos only.
    let rows = read_rows(&table);
    let mut per_file: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in &rows {
        *per_file.entry(&r.uri).or_default() += 1;
    }
    assert!(!per_file.is_empty(), "something was committed before the crash");
    for (uri, n) in &per_file {
        assert_eq!(*n, 3, "{uri}: a committed video has all its segments");
    }

    let (code, s) = ingest_json(&table, &[&corpus], &args);
    assert_eq!(code, 0);
    assert!(s["files_skipped"].as_u64().unwrap() >= 1);
    let expected = walk(&corpus).iter().map(|p| (format!("file://{}", p.display()), 3)).collect();
    assert_exactly_once(&table, &expected);
}

#[test]
fn a_crashing_or_hanging_decoder_costs_its_file_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    for name in ["a.mp4", "crash-me.mp4", "b.mp4", "hang-me.mp4", "c.mp4"] {
        h264_clip(&corpus.join(name), "4");
    }
    std::fs::write(corpus.join("doc.pdf"), make_pdf(&["after the crash"], (612.0, 792.0), "t")).unwrap();
    // Bytes without magic, named for nothing: FFmpeg's probe (in a
    // normalizer process) has the last word, and may crash on them too.
    let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
    std::fs::write(corpus.join("blob"), &noise).unwrap();
    std::fs::write(corpus.join("crash-me-blob"), &noise).unwrap();
    let table = dir.path().join("t");
    let mut cmd = sluice();
    // The normalizer process aborts on one file and hangs on another, the
    // way a decoder would on a hostile input.
    cmd.env("SLUICE_TEST_CRASH_ON", "crash-me").env("SLUICE_TEST_HANG_ON", "hang-me");
    cmd.arg("ingest").arg("--table").arg(&table).arg(&corpus).args(["--json", "--file-timeout", "5", "--normalization-workers", "2"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "the job completes, with failures");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["files_ingested"], 5);
    let reason = |name: &str| failure_reason(&s, name).unwrap();
    assert!(reason("crash-me.mp4").contains("normalizer process crashed"), "{}", reason("crash-me.mp4"));
    assert!(reason("hang-me.mp4").contains("timed out after 5s"), "{}", reason("hang-me.mp4"));
    let blob = reason("crash-me-blob");
    assert!(blob.contains("FFmpeg's probe failed") && blob.contains("crashed"), "{blob}");
    let rows = read_rows(&table);
    assert_eq!(rows.iter().filter(|r| r.kind == "video").count(), 3, "a, b, c: one 4 s segment each");
    assert_eq!(rows.iter().filter(|r| r.kind == "pdf").count(), 1);
    assert_eq!(rows.iter().filter(|r| r.kind == "other").count(), 1, "the blob FFmpeg's probe took for nothing");
}

/// Video is cut in at most `--media-processes` processes with FFmpeg at
/// once, however many normalizers there are; by default one per two cores
/// (at least one), never more than one per core.
#[test]
fn media_processes_bound_the_videos_cut_at_once() {
    let (dir, corpus) = h264_clips(8, "9");
    let cores = std::thread::available_parallelism().unwrap().get();
    for media in ["1", "4", "0"] {
        let table = dir.path().join(format!("t{media}"));
        let (code, s) = ingest_json(&table, &[&corpus], &["--normalization-workers", "4", "--media-processes", media]);
        assert_eq!(code, 0, "{s}");
        assert_eq!(s["files_ingested"], 8, "{s}");
        assert_eq!(read_rows(&table).len(), 8, "one 9 s segment each");
        let peak = s["peak_media_normalizations"].as_u64().unwrap();
        match media {
            "1" => assert_eq!(peak, 1, "one process cuts every video"),
            "4" => assert!((2..=4).contains(&peak), "4 processes cut {peak} videos at once"),
            _ => assert!((1..=(cores / 2).clamp(1, 4) as u64).contains(&peak), "{peak} at once on {cores} cores"),
        }
    }
}

/// Segments wait in memory while their file is validated, up to half of one
/// normalizer's share of the row budget; past that they wait in a temporary
/// file. Both ways give the same bytes.
#[test]
fn a_long_video_waits_on_disk_not_in_memory_with_the_same_segments() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("videos");
    std::fs::create_dir_all(&corpus).unwrap();
    let clip = corpus.join("clip.mp4");
    let mut a: Vec<&str> = lavfi_video("20").to_vec();
    let path = clip.to_str().unwrap().to_string();
    a.extend(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-b:v", "400k", &path]);
    ffmpeg(&a);
    // A 1 MiB budget over 4 normalizers holds 128 KiB of segments per file.
    let size = std::fs::metadata(&clip).unwrap().len();
    assert!(size > 3 * 128 * 1024, "the clip ({size} bytes) must not fit the small budget");

    let export = |table: &Path, extra: &[&str]| {
        let (code, s) = ingest_json(table, &[&corpus], &[&["--segment-seconds", "4", "--normalization-workers", "4"], extra].concat());
        assert_eq!(code, 0, "{s}");
        let out_dir = table.with_extension("export");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
        let out = run(Command::new(python()).arg(script).arg(table).arg(&out_dir));
        assert!(out.status.success());
        let mut rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.sort_by_key(|r| r["chunk_index"].as_u64());
        rows.iter().map(|r| std::fs::read(r["path"].as_str().unwrap()).unwrap()).collect::<Vec<_>>()
    };
    let in_memory = export(&dir.path().join("roomy"), &[]);
    let spilled = export(&dir.path().join("tight"), &["--memory-budget", "1048576"]);
    // In-process normalizers still send video to `sluice-normalizer-media`
    // (`sluice` has no FFmpeg).
    let here = export(&dir.path().join("here"), &["--in-process-normalizers"]);
    assert_eq!(in_memory.len(), 5, "20 s in 4 s segments");
    assert!(in_memory == spilled, "segments differ between the memory and the disk path");
    assert!(in_memory == here, "segments differ with in-process normalizers");
    assert!(in_memory.iter().all(|s| s.len() > 1000));
}

/// Workers start `sluice-normalizer`, installed beside `sluice`, for their
/// normalizer processes: it answers a request on stdin with the file's hash,
/// its rows and DONE, serves the next request on the same pipe, exits
/// cleanly when its input closes, and refuses to run with other arguments.
#[test]
fn the_normalizer_binary_serves_requests_and_refuses_other_arguments() {
    use std::io::{Read, Write};
    use sluice_worker::isolation::{Part, Request, DONE, ERROR, HASH, ROWS, SUBCOMMAND};

    let exe = Path::new(env!("CARGO_BIN_EXE_sluice-normalizer"));
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("note.pdf");
    let pages = [vec!["a short note for the normalizer process".to_string()], vec!["page two".to_string()]];
    std::fs::write(&pdf, sluice_common::samples::text_pdf(&pages, (612.0, 792.0), "Note")).unwrap();
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let request = Request {
        path: pdf.clone(),
        kind: sluice_common::schema::Kind::Pdf,
        settings: sluice_common::settings::Settings { pdf_dpi: 36, ..sluice_common::settings::Settings::DEFAULT },
        part: Part::Whole,
    };
    let mut frames = |n: usize| -> Vec<(u8, Vec<u8>)> {
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        stdin.write_all(&line).unwrap();
        stdin.flush().unwrap();
        let mut got = Vec::new();
        while got.last().is_none_or(|(k, _)| *k != DONE && *k != ERROR) && got.len() < n {
            let mut head = [0u8; 5];
            stdout.read_exact(&mut head).unwrap();
            let mut payload = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
            stdout.read_exact(&mut payload).unwrap();
            got.push((head[0], payload));
        }
        got
    };
    for _ in 0..2 {
        let got = frames(16);
        let kinds: Vec<u8> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds.first(), Some(&HASH), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&DONE), "{kinds:?}: {}", String::from_utf8_lossy(&got.last().unwrap().1));
        assert!(kinds.contains(&ROWS), "{kinds:?}");
        let rows: Vec<u8> = got.iter().filter(|(k, _)| *k == ROWS).flat_map(|(_, p)| p.clone()).collect();
        for text in [&b"short note"[..], b"page two", b"\xff\xd8\xff"] {
            assert!(rows.windows(text.len()).any(|w| w == text), "{text:?} crosses the pipe: text and JPEG of both pages");
        }
    }
    // This one has no FFmpeg: a video request is refused, saying where video goes.
    let video = Request { kind: sluice_common::schema::Kind::Video, ..request };
    let mut line = serde_json::to_vec(&video).unwrap();
    line.push(b'\n');
    stdin.write_all(&line).unwrap();
    stdin.flush().unwrap();
    let mut head = [0u8; 5];
    stdout.read_exact(&mut head).unwrap();
    let mut payload = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
    stdout.read_exact(&mut payload).unwrap();
    let reason = String::from_utf8_lossy(&payload);
    assert_eq!(head[0], ERROR, "{reason}");
    assert!(reason.contains("no FFmpeg") && reason.contains("sluice-normalizer-media"), "{reason}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
    assert!(maps.contains("libturbojpeg") && !maps.contains("libavcodec"), "maps FFmpeg:\n{maps}");
    drop(stdin);
    assert!(child.wait().unwrap().success(), "exits 0 once its input closes");

    let out = Command::new(exe).arg("ingest").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by sluice workers"));
}

/// One request on the normalizer process in `slot` (started or replaced
/// as the request needs): its rows, or why it failed.
async fn ask_child(
    slot: &mut Option<sluice_worker::isolation::ChildProc>,
    exes: &sluice_worker::isolation::Normalizers,
    kind: sluice_common::schema::Kind,
    path: &Path,
) -> Result<usize, String> {
    use sluice_worker::isolation::{ChildProc, Part, Request};
    use sluice_worker::normalize::Piece;
    let settings = sluice_common::settings::Settings { pdf_dpi: 36, ..sluice_common::settings::Settings::DEFAULT };
    let request = Request { path: path.to_path_buf(), kind, settings, part: Part::Whole };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let work = ChildProc::start(slot, exes, &request, tx).await?;
    let mut rows = 0;
    while let Some(piece) = rx.recv().await {
        if let Piece::Rows(r) = piece {
            rows += r.len();
        }
    }
    let (result, stdout) = work.await.unwrap();
    slot.as_mut().unwrap().give_back(stdout.expect("the child stays healthy"));
    result.map(|()| rows)
}

/// Whether the process maps FFmpeg's libraries.
fn maps_ffmpeg(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().contains("libavcodec")
}

/// Normalizer processes come from two programs: PDFs get
/// `sluice-normalizer`, which maps no FFmpeg; video replaces it by
/// `sluice-normalizer-media`, which serves PDFs too.
#[tokio::test]
async fn pdfs_run_without_ffmpeg_and_video_brings_the_process_that_has_it() {
    use sluice_common::schema::Kind;
    let exes = sluice_worker::isolation::Normalizers {
        lean: Path::new(env!("CARGO_BIN_EXE_sluice-normalizer")).to_path_buf(),
        media: Path::new(env!("CARGO_BIN_EXE_sluice-normalizer-media")).to_path_buf(),
        in_process: false,
    };
    // Nor does `sluice` itself link FFmpeg: what needs it goes to these.
    let ldd = Command::new("ldd").arg(env!("CARGO_BIN_EXE_sluice")).output().unwrap();
    let needed = String::from_utf8_lossy(&ldd.stdout);
    assert!(ldd.status.success() && needed.contains("libc.so") && !needed.contains("libavcodec"), "{needed}");
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("note.pdf");
    std::fs::write(&pdf, sluice_common::samples::text_pdf(&[vec!["a note".to_string()]], (612.0, 792.0), "Note")).unwrap();
    let video = dir.path().join("clip.mp4");
    let mut args = lavfi_video("2").to_vec();
    args.extend(["-c:v", "libx264", "-g", "12", video.to_str().unwrap()]);
    ffmpeg(&args);

    let mut slot = None;
    let pid = |slot: &Option<sluice_worker::isolation::ChildProc>| slot.as_ref().and_then(|c| c.id()).unwrap();
    assert_eq!(ask_child(&mut slot, &exes, Kind::Pdf, &pdf).await, Ok(1));
    let lean = pid(&slot);
    assert!(!slot.as_ref().unwrap().has_ffmpeg() && !maps_ffmpeg(lean), "a PDF starts the program without FFmpeg");

    let rows = ask_child(&mut slot, &exes, Kind::Video, &video).await.unwrap();
    assert!(rows >= 1, "{rows} segments");
    let media = pid(&slot);
    assert!(media != lean && slot.as_ref().unwrap().has_ffmpeg() && maps_ffmpeg(media), "video replaced the process");

    assert_eq!(ask_child(&mut slot, &exes, Kind::Pdf, &pdf).await, Ok(1));
    assert_eq!(pid(&slot), media, "a PDF after video stays on the process with FFmpeg");
    slot.take().unwrap().finish().await;
}

/// Every whitelisted container and raw stream, named by its extension and
/// again without one (told by its content): each lands as video whose
/// stored bytes decode on their own and last as long as the source.
#[test]
fn every_whitelisted_container_and_raw_stream_lands_by_content_or_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("containers");
    std::fs::create_dir_all(&corpus).unwrap();
    let sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"];
    // (file, ffmpeg output arguments, codec the row reports, stored whole)
    let cases: &[(&str, &[&str], &str, bool)] = &[
        ("clip.wmv", &["-c:v", "wmv2", "-c:a", "wmav2", "-f", "asf"], "wmv2", false),
        ("clip.mpg", &["-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpeg"], "mpeg2video", false),
        ("clip.m2v", &["-an", "-c:v", "mpeg2video", "-f", "mpeg2video"], "mpeg2video", false),
        ("clip.m4v", &["-an", "-c:v", "mpeg4", "-f", "m4v"], "mpeg4", false),
        ("clip.3gp", &["-c:v", "libx264", "-c:a", "aac", "-f", "3gp"], "h264", false),
        ("clip.flv", &["-c:v", "flv", "-c:a", "libmp3lame", "-f", "flv"], "flv1", false),
        ("clip.nut", &["-c:v", "mpeg4", "-c:a", "pcm_s16le", "-f", "nut"], "mpeg4", false),
        ("clip.mxf", &["-c:v", "mpeg2video", "-c:a", "pcm_s16le", "-f", "mxf"], "mpeg2video", false),
        ("clip.dv", &["-an", "-c:v", "dvvideo", "-s", "720x576", "-pix_fmt", "yuv420p", "-f", "dv"], "dvvideo", false),
        ("clip.ts", &["-c:v", "libx264", "-c:a", "aac", "-f", "mpegts"], "h264", false),
        ("clip.h264", &["-an", "-c:v", "libx264", "-f", "h264"], "h264", true),
        ("clip.hevc", &["-an", "-c:v", "libx265", "-x265-params", "log-level=error", "-f", "hevc"], "hevc", true),
    ];
    for (name, args, _, _) in cases {
        let mut a: Vec<&str> = lavfi_video("3").to_vec();
        a.extend(sine);
        a.extend(["-t", "3"]);
        a.extend(*args);
        let out = corpus.join(name);
        a.push(out.to_str().unwrap());
        ffmpeg(&a);
        // The same bytes under a name that says nothing.
        std::fs::copy(&out, corpus.join(format!("unnamed-{}", name.replace('.', "-")))).unwrap();
    }
    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 0, "every container lands: {}", s["errors"]);
    let export = dir.path().join("export");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
    let out = run(Command::new(python()).arg(script).arg(&table).arg(&export));
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (name, _, codec, whole) in cases {
        for file in [name.to_string(), format!("unnamed-{}", name.replace('.', "-"))] {
            let mine: Vec<_> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with(&format!("/{file}"))).collect();
            assert_eq!(mine.len(), 1, "{file}: one segment of 3 s");
            let row = mine[0];
            assert_eq!(row["kind"], "video", "{file}");
            assert_eq!(row["metadata"]["video_codec"], *codec, "{file}");
            assert_eq!(row["metadata"]["stored_whole"].as_bool().unwrap_or(false), *whole, "{file}");
            assert!(row["thumbnail_bytes"].as_u64().unwrap() > 0, "{file}: thumbnail");
            let end = row["end_seconds"].as_f64().unwrap();
            assert!((end - 3.0).abs() < 0.15, "{file}: row says {end}s of 3");
            let path = row["path"].as_str().unwrap();
            let decode = Command::new("ffmpeg").args(["-v", "error", "-i", path, "-f", "null", "-"]).output().unwrap();
            assert!(decode.status.success() && decode.stderr.is_empty(), "{file}: {}", String::from_utf8_lossy(&decode.stderr));
            let frames = Command::new("ffprobe")
                .args(["-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", path])
                .output()
                .unwrap();
            let frames = String::from_utf8_lossy(&frames.stdout).to_string();
            let frames: u64 = frames.trim().trim_end_matches(',').parse().unwrap_or_else(|_| panic!("{file}: ffprobe said {frames:?}"));
            assert_eq!(frames, 75, "{file}: every frame of 3 s at 25 fps is stored");
        }
    }
}

/// Audio of every whitelisted family (and audio-only MP4, and Ogg that is
/// really video) is cut into segments by stream copy that decode on their
/// own and tile the source; tags and cover art come along; the cut and
/// garbage files fail with their reasons.
#[test]
fn audio_files_become_segments_with_their_tags() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("audio");
    std::fs::create_dir_all(&corpus).unwrap();
    let sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=25"];
    let tags = ["-metadata", "title=Test Tone", "-metadata", "artist=Sluice Band"];
    // (file, ffmpeg output arguments, codec, segment MIME type, copy the bytes under a bare name)
    let cases: &[(&str, &[&str], &str, &str, bool)] = &[
        ("tone.mp3", &["-c:a", "libmp3lame"], "mp3", "audio/mpeg", true),
        ("tone.aac", &["-c:a", "aac", "-f", "adts"], "aac", "audio/mp4", true),
        ("tone.m4a", &["-c:a", "aac"], "aac", "audio/mp4", true),
        ("tone.mp4", &["-c:a", "aac"], "aac", "audio/mp4", false),
        ("tone.flac", &["-c:a", "flac"], "flac", "audio/flac", true),
        ("tone.wav", &["-c:a", "pcm_s16le"], "pcm_s16le", "audio/wav", true),
        // Big-endian PCM: WAVE refuses it, Matroska takes it.
        ("tone.aiff", &["-c:a", "pcm_s16be"], "pcm_s16be", "audio/x-matroska", true),
        ("tone.ac3", &["-c:a", "ac3"], "ac3", "audio/ac3", true),
        ("tone.opus", &["-c:a", "libopus"], "opus", "audio/ogg", true),
        ("tone.ogg", &["-c:a", "libvorbis"], "vorbis", "audio/ogg", true),
        ("tone.mka", &["-c:a", "flac"], "flac", "audio/flac", false),
        ("tone.wma", &["-c:a", "wmav2"], "wmav2", "audio/x-matroska", true),
    ];
    for (name, args, _, _, _) in cases {
        let mut a: Vec<&str> = sine.to_vec();
        a.extend(*args);
        a.extend(tags);
        let out = corpus.join(name);
        a.push(out.to_str().unwrap());
        ffmpeg(&a);
    }
    for (name, _, _, _, bare) in cases {
        if *bare {
            std::fs::copy(corpus.join(name), corpus.join(format!("unnamed-{}", name.replace('.', "-")))).unwrap();
        }
    }
    // An MP3 with cover art (an attached picture, not a video).
    let cover = dir.path().join("cover.png");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc=size=96x96:rate=1", "-frames:v", "1", cover.to_str().unwrap()]);
    let art = corpus.join("art.mp3");
    let mut a: Vec<&str> = sine.to_vec();
    a.extend(["-i", cover.to_str().unwrap(), "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "png", "-disposition:v", "attached_pic"]);
    a.push(art.to_str().unwrap());
    ffmpeg(&a);
    // Ogg that holds video is video.
    let theora = corpus.join("film.ogg");
    let mut a: Vec<&str> = lavfi_video("12").to_vec();
    a.extend(["-c:v", "libtheora", theora.to_str().unwrap()]);
    ffmpeg(&a);
    let bad = corpus.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let mp3 = std::fs::read(corpus.join("tone.mp3")).unwrap();
    std::fs::write(bad.join("cut.mp3"), &mp3[..mp3.len() / 2]).unwrap();
    let wav = std::fs::read(corpus.join("tone.wav")).unwrap();
    std::fs::write(bad.join("cut.wav"), &wav[..wav.len() / 2]).unwrap();
    std::fs::write(bad.join("noise.flac"), (0..40_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect::<Vec<_>>()).unwrap();

    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &["--segment-seconds", "10"]);
    assert_eq!(code, 2, "the bad files fail, the rest land: {}", s["errors"]);
    assert_eq!(s["files_failed"], 3, "{}", s["errors"]);
    let reason = |name: &str| failure_reason(&s, name).unwrap();
    assert!(reason("cut.mp3").contains("truncated audio"), "{}", reason("cut.mp3"));
    assert!(reason("cut.wav").contains("truncated audio: the WAVE header says"), "{}", reason("cut.wav"));
    let noise = reason("noise.flac");
    assert!(noise.contains("cannot open audio") || noise.contains("no audio or video stream"), "{noise}");

    let export = dir.path().join("export");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
    let out = run(Command::new(python()).arg(script).arg(&table).arg(&export));
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |file: &str| {
        let mut segs: Vec<&serde_json::Value> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with(&format!("/{file}"))).collect();
        segs.sort_by_key(|r| r["chunk_index"].as_u64());
        segs
    };
    for (name, _, codec, mime, bare) in cases {
        let names = [Some(name.to_string()), bare.then(|| format!("unnamed-{}", name.replace('.', "-")))];
        for file in names.into_iter().flatten() {
            let segs = of(&file);
            assert_eq!(segs.len(), 3, "{file}: 25 s in segments of 10 s");
            let mut expected_start = 0.0;
            for seg in &segs {
                assert_eq!(seg["kind"], "audio", "{file}");
                assert_eq!(seg["mime_type"], *mime, "{file}");
                let meta = &seg["metadata"];
                assert_eq!(meta["audio_codec"], *codec, "{file}");
                assert_eq!(meta["sample_rate"], if *codec == "opus" { 48_000 } else { 44_100 }, "{file}");
                assert_eq!(meta["channels"], 1, "{file}");
                assert!(seg["width"].is_null() && meta.get("video_codec").is_none(), "{file}: no picture fields");
                let (start, end) = (seg["start_seconds"].as_f64().unwrap(), seg["end_seconds"].as_f64().unwrap());
                assert!((start - expected_start).abs() < 1e-6, "{file}: segments are contiguous ({start} vs {expected_start})");
                expected_start = end;
                let path = seg["path"].as_str().unwrap();
                let decode = Command::new("ffmpeg").args(["-v", "error", "-i", path, "-f", "null", "-"]).output().unwrap();
                assert!(decode.status.success() && decode.stderr.is_empty(), "{file} segment {}: {}", seg["chunk_index"], String::from_utf8_lossy(&decode.stderr));
                let d = probe_duration(path);
                assert!((d - (end - start)).abs() < 0.1, "{file} segment {}: plays {d}s, row says {}s", seg["chunk_index"], end - start);
            }
            assert!((expected_start - 25.0).abs() < 0.1, "{file}: segments cover the source ({expected_start} of 25)");
            let meta = &segs[0]["metadata"];
            assert!((meta["duration"].as_f64().unwrap() - 25.0).abs() < 0.1, "{file}: {meta}");
            // Raw AC-3 and ADTS streams have no tags; RIFF INFO in WAVE is
            // not written by ffmpeg; AIFF has a title but no artist.
            if !matches!(*name, "tone.wav" | "tone.ac3" | "tone.aac") {
                assert_eq!(meta["tags"]["title"], "Test Tone", "{file}: {meta}");
            }
            if !matches!(*name, "tone.wav" | "tone.ac3" | "tone.aac" | "tone.aiff") {
                assert_eq!(meta["tags"]["artist"], "Sluice Band", "{file}: {meta}");
            }
        }
    }
    assert!(of("tone.aiff")[0]["metadata"]["remuxed"].as_str().unwrap().starts_with("wav refused"), "AIFF: said why it is in Matroska");
    let art = of("art.mp3");
    assert!(art.iter().all(|r| r["kind"] == "audio" && r["thumbnail_bytes"].as_u64().unwrap() > 0), "cover art is the thumbnail, not a video");
    let film = of("film.ogg");
    assert_eq!(film.len(), 2);
    assert!(film.iter().all(|r| r["kind"] == "video" && r["metadata"]["video_codec"] == "theora"), "Ogg with video is video");
}

/// A Photoshop file of raw RGB planes (no layers), as the simplest PSD
/// writers make it.
fn psd(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"8BPS".to_vec();
    out.extend(1u16.to_be_bytes());
    out.extend([0; 6]);
    out.extend(3u16.to_be_bytes()); // channels
    out.extend(height.to_be_bytes());
    out.extend(width.to_be_bytes());
    out.extend(8u16.to_be_bytes()); // bits a channel
    out.extend(3u16.to_be_bytes()); // RGB
    out.extend([0; 12]); // no color mode data, image resources, layers
    out.extend(0u16.to_be_bytes()); // raw image data
    for channel in 0..3u32 {
        for y in 0..height {
            for x in 0..width {
                out.push(((x * 255 / width) * u32::from(channel != 2) + (y * 255 / height) * u32::from(channel == 2)) as u8);
            }
        }
    }
    out
}

/// Images the `image` crate does not read land through FFmpeg's image
/// decoders (in the normalizer processes), named or not; CIELab and
/// BigTIFF TIFFs through the TIFF decoder; each with its size and a
/// thumbnail of the right colors. A file no decoder takes fails with both
/// reasons, and FFmpeg's path keeps the pixel limit.
#[test]
fn images_of_every_common_format_land_with_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("images");
    std::fs::create_dir_all(&corpus).unwrap();
    let src = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=1", "-frames:v", "1"];
    // (file, ffmpeg arguments, format the row reports, copy the bytes under a bare name)
    let cases: &[(&str, &[&str], &str, bool)] = &[
        ("pic.exr", &["-c:v", "exr", "-pix_fmt", "gbrpf32le"], "exr", true),
        ("pic.jp2", &["-c:v", "jpeg2000"], "j2k", true),
        ("pic.j2k", &["-c:v", "jpeg2000", "-f", "image2"], "j2k", false),
        ("pic.dpx", &[], "dpx", true),
        ("pic.sgi", &[], "sgi", false),
        ("pic.ras", &["-c:v", "sunrast"], "sunrast", true),
        ("pic.xwd", &[], "xwd", true),
        ("pic.pcx", &[], "pcx", false),
        ("pic.qoi", &[], "qoi", true),
        // YCbCr with subsampled chroma: a TIFF the pure-Rust decoder refuses.
        ("pic.tif", &["-pix_fmt", "yuv420p"], "tiff", false),
    ];
    for (name, args, _, bare) in cases {
        let out = corpus.join(name);
        let mut a: Vec<&str> = src.to_vec();
        a.extend(*args);
        a.push(out.to_str().unwrap());
        ffmpeg(&a);
        if *bare {
            std::fs::copy(&out, corpus.join(format!("unnamed-{}", name.replace('.', "-")))).unwrap();
        }
    }
    std::fs::write(corpus.join("pic.psd"), psd(96, 64)).unwrap();
    std::fs::write(corpus.join("unnamed-psd"), psd(96, 64)).unwrap();
    // CIELab and BigTIFF, as Pillow writes them: a red square on white.
    let pillow = format!(
        "from PIL import Image, ImageDraw\n\
         img = Image.new('RGB', (320, 200), 'white')\n\
         ImageDraw.Draw(img).rectangle([0, 0, 159, 199], fill=(200, 30, 30))\n\
         img.convert('LAB').save('{d}/lab.tif')\n\
         img.save('{d}/big.tif', big_tiff=True, compression='tiff_lzw')\n\
         img.save('{d}/ppm.ppm')\n",
        d = corpus.display()
    );
    let out = run(Command::new(python()).arg("-c").arg(&pillow));
    assert!(out.status.success(), "Pillow: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(corpus.join("big.tif"), corpus.join("unnamed-big")).unwrap();
    let bad = corpus.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("noise.exr"), (0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect::<Vec<_>>()).unwrap();
    let mut cut_psd = psd(96, 64);
    cut_psd.truncate(200);
    std::fs::write(bad.join("cut.psd"), cut_psd).unwrap();
    // A header that claims 16000 x 16000 (256 Mpx, 768 MB decoded) over 4 KB
    // of data: refused before FFmpeg allocates the picture.
    let mut bomb = psd(16, 16);
    bomb[14..18].copy_from_slice(&16_000u32.to_be_bytes());
    bomb[18..22].copy_from_slice(&16_000u32.to_be_bytes());
    std::fs::write(bad.join("bomb.psd"), bomb).unwrap();

    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 2, "{}", s["errors"]);
    assert_eq!(s["files_failed"], 3, "{}", s["errors"]);
    let reason = |name: &str| failure_reason(&s, name).unwrap();
    assert!(reason("bomb.psd").contains("above the limit of 100000000 pixels"), "{}", reason("bomb.psd"));
    assert!(reason("cut.psd").contains("corrupt psd image"), "{}", reason("cut.psd"));
    for name in ["noise.exr", "cut.psd"] {
        let r = reason(name);
        assert!(r.contains("image") && r.contains("; FFmpeg's image decoders:"), "{name}: both reasons: {r}");
    }

    let rows = {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
        let out = run(Command::new(python()).arg(script).arg(&table).arg(dir.path().join("export")));
        assert!(out.status.success());
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let row = |file: &str| rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with(&format!("/{file}"))).unwrap_or_else(|| panic!("{file}: no row"));
    let expect = cases.iter().flat_map(|(name, _, format, bare)| {
        let unnamed = bare.then(|| format!("unnamed-{}", name.replace('.', "-")));
        std::iter::once(name.to_string()).chain(unnamed).map(move |f| (f, *format, 160, 120))
    });
    let expect: Vec<_> = expect.chain([("pic.psd".to_string(), "psd", 96, 64), ("unnamed-psd".to_string(), "psd", 96, 64)]).collect();
    for (file, format, w, h) in &expect {
        let r = row(file);
        assert_eq!(r["kind"], "image", "{file}");
        assert_eq!(r["metadata"]["decoder"], "ffmpeg", "{file}");
        assert_eq!(r["metadata"]["format"], *format, "{file}");
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(*w), Some(*h)), "{file}");
        assert!(r["thumbnail_bytes"].as_u64().unwrap() > 500, "{file}: thumbnail");
        assert_eq!(std::fs::metadata(r["path"].as_str().unwrap()).unwrap().len(), std::fs::metadata(corpus.join(file)).unwrap().len(), "{file}: original bytes");
    }
    for file in ["lab.tif", "big.tif", "unnamed-big", "ppm.ppm"] {
        let r = row(file);
        assert_eq!((r["kind"].as_str(), r["width"].as_u64(), r["height"].as_u64()), (Some("image"), Some(320), Some(200)), "{file}");
    }
    assert_eq!(row("lab.tif")["metadata"]["color"], "CIELab");
    // The thumbnails show the red half and the white half.
    let check = format!(
        "import io, lance, json\n\
         from PIL import Image\n\
         out = {{}}\n\
         for r in lance.dataset('{t}').to_table(columns=['source_uri', 'thumbnail']).to_pylist():\n\
         \x20   im = Image.open(io.BytesIO(r['thumbnail'])).convert('RGB')\n\
         \x20   out[r['source_uri'].rsplit('/', 1)[1]] = [im.getpixel((im.width // 4, im.height // 2)), im.getpixel((3 * im.width // 4, im.height // 2))]\n\
         print(json.dumps(out))\n",
        t = table.display()
    );
    let out = run(Command::new(python()).arg("-c").arg(&check));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let colors: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for file in ["lab.tif", "big.tif"] {
        let near = |i: usize, want: [i64; 3]| colors[file][i].as_array().unwrap().iter().zip(want).all(|(v, w)| (v.as_i64().unwrap() - w).abs() < 16);
        assert!(near(0, [200, 30, 30]) && near(1, [255, 255, 255]), "{file}: thumbnail colors {}", colors[file]);
    }

    // The pixel limit holds on FFmpeg's path too, from the header.
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::copy(corpus.join("pic.exr"), small.join("pic.exr")).unwrap();
    let (code, s) = ingest_json(&dir.path().join("lake2"), &[&small], &["--max-image-pixels", "10000"]);
    assert_eq!(code, 2);
    assert!(s["errors"][0]["reason"].as_str().unwrap().contains("above the limit of 10000 pixels"), "{}", s["errors"]);
}
