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
    let mut a: Vec<&str> = lavfi_video("8").to_vec();
    a.extend(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", &noaudio]);
    ffmpeg(&a);
    let longgop = p("long_gop.mp4");
    let mut a: Vec<&str> = lavfi_video("30").to_vec();
    a.extend(["-c:v", "libx264", "-g", "250", "-keyint_min", "250", "-sc_threshold", "0", "-pix_fmt", "yuv420p", &longgop]);
    ffmpeg(&a);
    ffmpeg(&["-i", &noaudio, "-c", "copy", "-metadata:s:v:0", "rotate=90", &p("rotated.mp4")]);
    let bytes = std::fs::read(&h264).unwrap();
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("truncated.mp4"), &bytes[..bytes.len() * 3 / 4]).unwrap();
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

#[test]
fn videos_become_playable_segments_that_tile_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("videos");
    make_fixtures(&corpus);
    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &["--segment-seconds", "10"]);
    assert_eq!(code, 2, "the bad videos fail, the rest land");
    assert_eq!(s["files_failed"], 3);
    let reason = |name: &str| {
        s["errors"].as_array().unwrap().iter().find(|e| e["uri"].as_str().unwrap().ends_with(name)).map(|e| e["reason"].as_str().unwrap().to_string()).unwrap()
    };
    assert!(reason("truncated.mp4").contains("truncated video"), "{}", reason("truncated.mp4"));
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
    let long: Vec<f64> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with("long_gop.mp4")).map(|r| r["start_seconds"].as_f64().unwrap()).collect();
    assert!(long.iter().all(|t| (t / 10.0 - (t / 10.0).round()).abs() < 1e-6), "long GOP: cuts only at its keyframes {long:?}");
    let rotated = rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with("rotated.mp4")).unwrap();
    assert_eq!((rotated["width"].as_u64(), rotated["height"].as_u64()), (Some(240), Some(320)), "rotated: display size");
    assert_eq!(rotated["metadata"]["rotation"], 270);
    assert_eq!(rotated["metadata"]["video_codec"], "h264");
}

#[test]
fn a_crash_never_commits_part_of_a_video() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("videos");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..6 {
        let path = corpus.join(format!("clip{i}.mp4"));
        let mut a: Vec<&str> = lavfi_video("9").to_vec();
        let path = path.to_str().unwrap().to_string();
        a.extend(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", &path]);
        ffmpeg(&a);
    }
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
        let path = corpus.join(name).to_str().unwrap().to_string();
        let mut a: Vec<&str> = lavfi_video("4").to_vec();
        a.extend(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", &path]);
        ffmpeg(&a);
    }
    std::fs::write(corpus.join("doc.pdf"), make_pdf(&["after the crash"], (612.0, 792.0), "t")).unwrap();
    let table = dir.path().join("t");
    let mut cmd = sluice();
    // The normalizer process aborts on one file and hangs on another, the
    // way a decoder would on a hostile input.
    cmd.env("SLUICE_TEST_CRASH_ON", "crash-me").env("SLUICE_TEST_HANG_ON", "hang-me");
    cmd.arg("ingest").arg("--table").arg(&table).arg(&corpus).args(["--json", "--file-timeout", "5", "--normalization-workers", "2"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "the job completes, with failures");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["files_ingested"], 4);
    let reason = |name: &str| {
        s["errors"].as_array().unwrap().iter().find(|e| e["uri"].as_str().unwrap().ends_with(name)).map(|e| e["reason"].as_str().unwrap().to_string()).unwrap()
    };
    assert!(reason("crash-me.mp4").contains("normalizer process crashed"), "{}", reason("crash-me.mp4"));
    assert!(reason("hang-me.mp4").contains("timed out after 5s"), "{}", reason("hang-me.mp4"));
    let rows = read_rows(&table);
    assert_eq!(rows.iter().filter(|r| r.kind == "video").count(), 3, "a, b, c: one 4 s segment each");
    assert_eq!(rows.iter().filter(|r| r.kind == "pdf").count(), 1);
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
    assert_eq!(in_memory.len(), 5, "20 s in 4 s segments");
    assert!(in_memory == spilled, "segments differ between the memory and the disk path");
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
    drop(stdin);
    assert!(child.wait().unwrap().success(), "exits 0 once its input closes");

    let out = Command::new(exe).arg("ingest").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by sluice workers"));
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
