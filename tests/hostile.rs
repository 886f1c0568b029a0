//! A malformed corpus, generated here: truncated, garbled and zero-byte
//! media of every format, corrupt and encrypted PDFs, page-count and image bombs,
//! binary "text", symlink loops and dangling links, a FIFO, files over the
//! size limit, missing and directory manifest entries — beside good files
//! with unicode and very long names, legacy encodings and wrong extensions.
//! Every bad file must end in the error ledger with a reason, every good
//! file must be ingested, memory must stay bounded, nothing may panic.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use support::*;

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).status().expect("ffmpeg CLI");
    assert!(ok.success(), "ffmpeg {args:?}");
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Deterministic junk.
fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn uri(p: &Path) -> String {
    format!("file://{}", std::path::absolute(p).unwrap().display())
}

#[test]
fn a_hostile_corpus_fails_file_by_file_and_the_good_files_land() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    let bad = root.join("bad");
    let good = root.join("good");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::create_dir_all(&good).unwrap();
    let put_bad = |name: &str, bytes: &[u8]| {
        std::fs::write(bad.join(name), bytes).unwrap();
    };

    // Media to break: made by ffmpeg, the image encoder and the PDF writer.
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let src = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4"];
    let mp4 = media.join("v.mp4");
    let webm = media.join("v.webm");
    let mkv = media.join("v.mkv");
    let avi = media.join("v.avi");
    ffmpeg(&[&src[..], &["-c:v", "libx264", "-c:a", "aac", "-movflags", "+faststart", mp4.to_str().unwrap()]].concat());
    ffmpeg(&[&src[..], &["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", webm.to_str().unwrap()]].concat());
    ffmpeg(&[&src[..], &["-c:v", "libx264", "-c:a", "aac", mkv.to_str().unwrap()]].concat());
    ffmpeg(&[&src[..], &["-c:v", "mpeg4", "-c:a", "mp3", avi.to_str().unwrap()]].concat());
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    let pdf = make_pdf(&["page one", "page two", "page three"], (612.0, 792.0), "doc");

    let mut formats: Vec<(&str, Vec<u8>)> = vec![
        ("mp4", std::fs::read(&mp4).unwrap()),
        ("webm", std::fs::read(&webm).unwrap()),
        ("mkv", std::fs::read(&mkv).unwrap()),
        ("avi", std::fs::read(&avi).unwrap()),
        ("pdf", pdf.clone()),
    ];
    for (ext, f) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
        ("gif", image::ImageFormat::Gif),
        ("webp", image::ImageFormat::WebP),
        ("tiff", image::ImageFormat::Tiff),
        ("bmp", image::ImageFormat::Bmp),
    ] {
        formats.push((ext, encode(&img, f)));
    }
    // Each format: empty, cut in half, and garbled past its header.
    for (i, (ext, bytes)) in formats.iter().enumerate() {
        put_bad(&format!("empty.{ext}"), b"");
        put_bad(&format!("truncated.{ext}"), &bytes[..bytes.len() / 2]);
        let mut garbled = bytes[..bytes.len().min(16)].to_vec();
        garbled.extend(garbage(bytes.len().max(4096), i as u64));
        put_bad(&format!("garbled.{ext}"), &garbled);
    }
    // PDFs: encrypted, too many pages; a file that only claims to be one.
    let plain = media.join("plain.pdf");
    std::fs::write(&plain, &pdf).unwrap();
    let encrypted = bad.join("encrypted.pdf");
    let ok = Command::new("qpdf").args(["--encrypt", "user-pw", "owner-pw", "256", "--"]).arg(&plain).arg(&encrypted).status();
    assert!(ok.expect("qpdf").success());
    let many: Vec<String> = (0..60).map(|i| format!("page {i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    put_bad("too-many-pages.pdf", &make_pdf(&many, (612.0, 792.0), "bomb"));
    // An image bomb: a PNG header claiming 60000 x 60000 pixels.
    let mut bomb = encode(&image::RgbImage::new(1, 1), image::ImageFormat::Png);
    bomb[16..20].copy_from_slice(&60000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    put_bad("bomb.png", &bomb);
    // Binary "text", a video that is really a PNG with no video stream, a file over the size limit.
    put_bad("binary.txt", &[b'a', b'b', 0, 0, 0xff, 0xfe, 0, 1, 2, 3]);
    put_bad("nul-heavy.md", &[0u8; 2048]);
    // An H.264 start code and sequence header, then noise: no frame decodes.
    put_bad("noise.h264", &[&[0u8, 0, 0, 1, 0x67, 0x42, 0, 0x1e][..], &garbage(20_000, 5)].concat());
    put_bad("too-big.bin", &garbage(3 << 20, 99));
    // Links and special files.
    std::os::unix::fs::symlink(bad.join("does-not-exist"), bad.join("dangling.txt")).unwrap();
    std::fs::create_dir(bad.join("loop")).unwrap();
    std::os::unix::fs::symlink(&bad, bad.join("loop/back")).unwrap();
    let fifo = bad.join("fifo.txt");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Manifest entries that cannot be files.
    let manifest = dir.path().join("manifest.txt");
    let missing = dir.path().join("missing.txt");
    let a_dir = dir.path().join("a-directory");
    std::fs::create_dir(&a_dir).unwrap();
    std::fs::write(&manifest, format!("{}\n{}\n", missing.display(), a_dir.display())).unwrap();

    // Good files beside them.
    let long_name = format!("{}.txt", "l".repeat(240));
    let goods: Vec<(String, Vec<u8>)> = vec![
        ("ünïcødé-名前-🎬.txt".into(), "unicode names are fine".as_bytes().to_vec()),
        (long_name, b"a very long name".to_vec()),
        ("latin1.txt".into(), b"caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade".to_vec()),
        ("utf16.txt".into(), [&[0xff, 0xfe][..], &"hello".encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>()].concat()),
        // Without a byte-order mark: told by where the NULs fall, name or not.
        ("utf16le-no-bom.txt".into(), "Grüße, no byte-order mark here".encode_utf16().flat_map(u16::to_le_bytes).collect()),
        ("UTF16BE-NOTES".into(), "big-endian notes without a mark".encode_utf16().flat_map(u16::to_be_bytes).collect()),
        ("utf32.txt".into(), [&[0xff, 0xfe, 0, 0][..], &"wide 🦀".chars().flat_map(|c| (c as u32).to_le_bytes()).collect::<Vec<u8>>()].concat()),
        ("really-a-png.txt".into(), encode(&img, image::ImageFormat::Png)),
        ("really-html.pdf".into(), b"<html><body>not a pdf, but fine text</body></html>".to_vec()),
        ("photo.jpg".into(), encode(&img, image::ImageFormat::Jpeg)),
        ("doc.pdf".into(), pdf.clone()),
        ("clip.mp4".into(), std::fs::read(&mp4).unwrap()),
        ("empty.txt".into(), Vec::new()),
        ("blob.bin".into(), garbage(5000, 7)),
    ];
    for (name, bytes) in &goods {
        std::fs::write(good.join(name), bytes).unwrap();
    }

    let table = dir.path().join("table");
    let mut cmd = sluice();
    cmd.args(["ingest", "--json", "--no-progress", "--table"])
        .arg(&table)
        .arg(&root)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--max-file-size", &(2u64 << 20).to_string(), "--max-pdf-pages", "50", "--file-timeout", "60"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "bad files fail; the job completes (no panic, no abort)");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peak = summary["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak < 1 << 30, "memory stays bounded: peak RSS {peak}");

    // The ledger, through `inspect --errors`: one reason per failed file.
    let out = run(sluice().args(["inspect", "--json", "--errors"]).arg(&table));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: BTreeMap<String, String> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["uri"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect();
    // Every file in bad/ (the loop is reported by its path), plus the manifest's.
    let mut expected_bad: Vec<String> = std::fs::read_dir(&bad)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "loop")
        .map(|e| uri(&e.path()))
        .collect();
    expected_bad.push(uri(&missing));
    expected_bad.push(uri(&a_dir));
    assert!(expected_bad.len() >= 40, "{} malformed cases", expected_bad.len());
    let mut unrecorded = Vec::new();
    for b in &expected_bad {
        match errors.get(b) {
            Some(reason) => assert!(reason.len() > 5, "{b}: a clear reason, got {reason:?}"),
            None => unrecorded.push(b.clone()),
        }
    }
    assert!(unrecorded.is_empty(), "bad files not in the ledger: {unrecorded:#?}\nledger: {errors:#?}");
    assert!(errors.keys().any(|u| u.contains("/loop")), "the symlink loop is reported: {errors:#?}");

    // Every good file is in the table, none of the bad ones.
    let rows = read_rows(&table);
    let per_file: HashMap<&str, usize> = rows.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.uri.as_str()).or_default() += 1;
        m
    });
    for (name, _) in &goods {
        assert!(per_file.contains_key(uri(&good.join(name)).as_str()), "good file {name} missing");
    }
    for b in &expected_bad {
        assert!(!per_file.contains_key(b.as_str()), "bad file {b} has rows");
    }
    eprintln!("hostile corpus: {} bad cases recorded, {} good files ingested", expected_bad.len(), goods.len());
}
