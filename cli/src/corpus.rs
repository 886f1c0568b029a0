//! A generated corpus of mixed files: text (UTF-8 and Latin-1), PNG and JPEG
//! images, binary files, and optionally a few bad files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};

#[derive(clap::Args, Debug, Clone)]
pub struct CorpusArgs {
    /// Directory to create the files in
    pub dir: PathBuf,
    /// Number of files
    #[arg(long, default_value_t = 200)]
    pub files: usize,
    /// Also write a few corrupt and hostile files
    #[arg(long)]
    pub with_bad_files: bool,
    /// Size of each text file, in characters
    #[arg(long, default_value_t = 3000)]
    pub text_chars: usize,
    /// Side of each image, in pixels
    #[arg(long, default_value_t = 96)]
    pub image_side: u32,
    /// Also write PDFs (one per 50 files) and, if the ffmpeg CLI is
    /// installed, short videos (one per 100 files)
    #[arg(long)]
    pub with_media: bool,
    /// Also write this many text documents as PDFs (2 to 12 pages of about
    /// 60 lines each, letter size) under `pdfs/`
    #[arg(long, default_value_t = 0)]
    pub text_pdfs: usize,
}

const WORDS: &[&str] = &[
    "river", "sluice", "table", "lake", "frame", "video", "page", "chunk", "object", "store", "commit",
    "fragment", "worker", "shard", "index", "vector", "token", "stream", "buffer", "flush",
];

pub fn generate(args: &CorpusArgs) -> Result<usize> {
    std::fs::create_dir_all(&args.dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..args.files {
        let sub = args.dir.join(format!("part-{:03}", i / 1000));
        std::fs::create_dir_all(&sub)?;
        match i % 4 {
            0 | 1 => {
                let mut text = format!("document {i}\n");
                while text.len() < args.text_chars {
                    text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                    text.push(if rng.random_ratio(1, 12) { '\n' } else { ' ' });
                }
                std::fs::write(sub.join(format!("doc-{i:06}.txt")), text)?;
            }
            2 => {
                let side = args.image_side;
                let (a, b) = (rng.random::<u8>(), rng.random::<u8>());
                let img = RgbImage::from_fn(side, side, |x, y| Rgb([a ^ x as u8, b ^ y as u8, (x * y) as u8]));
                let (ext, fmt) = if i % 8 == 2 { ("png", ImageFormat::Png) } else { ("jpg", ImageFormat::Jpeg) };
                img.save_with_format(sub.join(format!("img-{i:06}.{ext}")), fmt)?;
            }
            _ => {
                let mut bytes = vec![0u8; 4096];
                rng.fill(&mut bytes[..]);
                bytes[0] = 0; // never mistaken for text
                std::fs::write(sub.join(format!("blob-{i:06}.bin")), bytes)?;
            }
        }
    }
    if args.with_media {
        write_media(&args.dir.join("media"), args.files)?;
    }
    if args.with_bad_files {
        write_bad_files(&args.dir.join("bad"))?;
    }
    if args.text_pdfs > 0 {
        write_text_pdfs(&args.dir.join("pdfs"), args.text_pdfs, &mut rng)?;
    }
    Ok(args.files + args.text_pdfs)
}

/// Text documents of 2 to 12 pages, each page about 60 lines of words.
fn write_text_pdfs(dir: &Path, n: usize, rng: &mut impl Rng) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        let pages: Vec<Vec<String>> = (0..rng.random_range(2..=12))
            .map(|_| {
                (0..60)
                    .map(|_| {
                        let mut line = String::new();
                        while line.len() < 90 {
                            line.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                            line.push(' ');
                        }
                        line
                    })
                    .collect()
            })
            .collect();
        let pdf = sluice_common::samples::text_pdf(&pages, (612.0, 792.0), &format!("Report {i}"));
        std::fs::write(dir.join(format!("report-{i:04}.pdf")), pdf)?;
    }
    Ok(())
}

/// PDFs from the built-in writer; videos from the ffmpeg CLI when present.
fn write_media(dir: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..files.div_ceil(50) {
        let pages: Vec<String> = (1..=3).map(|p| format!("Sample document {i}, page {p}")).collect();
        let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
        let pdf = sluice_common::samples::minimal_pdf(&pages, (612.0, 792.0), &format!("Sample {i}"));
        std::fs::write(dir.join(format!("doc-{i:04}.pdf")), pdf)?;
    }
    for i in 0..files.div_ceil(100) {
        let out = dir.join(format!("clip-{i:04}.mp4"));
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi"])
            .args(["-i", "sine=frequency=440", "-t", "24", "-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac", "-shortest"])
            .arg(&out)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("ffmpeg CLI not available: no sample videos");
            break;
        }
    }
    Ok(())
}

/// Files every ingest must refuse with a clear reason, without stopping.
pub fn write_bad_files(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("truncated.jpg"), b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01")?;
    std::fs::write(dir.join("not-really.png"), b"this is plain text pretending to be a PNG")?;
    std::fs::write(dir.join("binary.txt"), b"text\x00\x01\x02 with NUL bytes")?;
    // A PNG header claiming 100000 x 100000 pixels: a decompression bomb.
    let mut bomb = RgbImage::new(1, 1);
    bomb.put_pixel(0, 0, Rgb([1, 2, 3]));
    let mut png = std::io::Cursor::new(Vec::new());
    bomb.write_to(&mut png, ImageFormat::Png)?;
    let mut png = png.into_inner();
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(dir.join("bomb.png"), png)?;
    Ok(())
}

/// PNG chunk checksum (CRC-32/ISO-HDLC), so the forged header is well formed.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

pub fn run(args: CorpusArgs) -> Result<()> {
    let n = generate(&args)?;
    println!("wrote {n} files to {}", args.dir.display());
    Ok(())
}
