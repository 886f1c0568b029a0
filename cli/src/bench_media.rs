//! `sluice bench-media`: media throughput against bare baselines, on the
//! same files in one run. Video: sluice ingest vs a bare ffmpeg-next remux
//! loop vs `ffmpeg -c copy -f segment`. PDF: sluice ingest (1 and 2
//! workers) vs bare pdfium rendering of the same pages at the same DPI,
//! with and without one JPEG encode per page. The video runs take turns
//! over `--rounds` and report medians: each ratio is of runs next to each
//! other.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::bench::{median, range};

#[derive(clap::Args, Debug)]
pub struct BenchMediaArgs {
    /// Video files
    #[arg(long, num_args = 1..)]
    pub videos: Vec<PathBuf>,
    /// PDF files
    #[arg(long, num_args = 1..)]
    pub pdfs: Vec<PathBuf>,
    /// PDF render resolution
    #[arg(long, default_value_t = 150)]
    pub pdf_dpi: u32,
    /// Also time one generated text PDF of this many pages against the same
    /// pages as four PDFs (0: skip)
    #[arg(long, default_value_t = 0)]
    pub big_pdf_pages: usize,
    /// Rounds of the video runs, the bare remux and each sluice ingest
    /// taking turns; medians are reported (a shared machine's pace drifts
    /// within seconds, so one run of each is not a ratio)
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Pages of text, `first..first + n`, about 60 lines each.
fn text_pages(first: usize, n: usize) -> Vec<Vec<String>> {
    (first..first + n)
        .map(|p| (0..60).map(|l| format!("Page {p}, line {l}: sluice splits big documents over its normalizer processes")).collect())
        .collect()
}

fn sluice_ingest(files: &[PathBuf], table: &std::path::Path, extra: &[&str]) -> Result<Value> {
    let _ = std::fs::remove_dir_all(table);
    let args = files.iter().map(|f| f.as_os_str()).chain(extra.iter().map(std::ffi::OsStr::new));
    crate::bench::ingest_json(table, args, &[])
}

pub fn run(args: BenchMediaArgs) -> Result<()> {
    let work = std::env::temp_dir().join(format!("sluice-bench-media-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut report = serde_json::Map::new();
    if !args.videos.is_empty() {
        let bytes: u64 = args.videos.iter().map(|v| std::fs::metadata(v).map_or(0, |m| m.len())).sum();
        let mb = bytes as f64 / 1e6;
        // In `sluice-normalizer-media`, the one binary with FFmpeg, timed
        // there (its start is not in the figure).
        let media_exe = sluice_worker::isolation::normalizer_exe(false)?.media;
        let bare_remux = || -> Result<f64> {
            let out = Command::new(&media_exe).arg("bare-remux").arg(&work).args(&args.videos).output()?;
            if !out.status.success() {
                bail!("bare remux failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
            Ok(mb / seconds)
        };
        let t = Instant::now();
        for (i, v) in args.videos.iter().enumerate() {
            let pattern = work.join(format!("seg-{i}-%03d.mp4"));
            let ok = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(v)
                .args(["-c", "copy", "-map", "0", "-f", "segment", "-segment_time", "10", "-reset_timestamps", "1"])
                .arg(&pattern)
                .status()?;
            if !ok.success() {
                bail!("ffmpeg CLI failed on {}", v.display());
            }
        }
        let cli = mb / t.elapsed().as_secs_f64();
        let rate = |s: &Value| mb / s["seconds"].as_f64().unwrap_or(f64::NAN);
        // Each round: the bare remux, then sluice with 1 and 2 normalizer
        // processes and with the default knobs (four), as users run it.
        let knobs: [&[&str]; 3] = [&["--normalization-workers", "1"], &["--normalization-workers", "2"], &[]];
        let (mut bare, mut rates, mut ratios) = (Vec::new(), vec![Vec::new(); 3], vec![Vec::new(); 3]);
        let (mut segments, mut peak_rss) = (Value::Null, Vec::new());
        for _ in 0..args.rounds.max(1) {
            let b = bare_remux()?;
            bare.push(b);
            for (k, extra) in knobs.iter().enumerate() {
                let s = sluice_ingest(&args.videos, &work.join(format!("v{k}")), extra)?;
                rates[k].push(rate(&s));
                ratios[k].push(rate(&s) / b);
                if k == 0 {
                    segments = s["rows"].clone();
                    peak_rss.extend(s["peak_rss_bytes"].as_f64().map(|b| b / 1e6));
                }
            }
        }
        report.insert(
            "video".into(),
            json!({
                "mb": mb,
                "rounds": bare.len(),
                "bare_ffmpeg_next_remux_mb_s": median(bare.clone()),
                "bare_ffmpeg_next_remux_mb_s_range": range(&bare),
                "ffmpeg_cli_segment_mb_s": cli,
                "sluice_1_worker_mb_s": median(rates[0].clone()),
                "sluice_2_workers_mb_s": median(rates[1].clone()),
                "sluice_default_knobs_mb_s": median(rates[2].clone()),
                "sluice_1_vs_bare_remux": median(ratios[0].clone()),
                "sluice_1_vs_bare_remux_range": range(&ratios[0]),
                "sluice_2_vs_bare_remux": median(ratios[1].clone()),
                "sluice_2_vs_bare_remux_range": range(&ratios[1]),
                "sluice_default_knobs_vs_bare_remux": median(ratios[2].clone()),
                "sluice_default_knobs_vs_bare_remux_range": range(&ratios[2]),
                "sluice_1_vs_ffmpeg_cli": median(rates[0].clone()) / cli,
                "segments": segments,
                "peak_rss_mb_1_worker": median(peak_rss),
            }),
        );
    }
    if !args.pdfs.is_empty() {
        let bare_rate = |encode: bool| -> Result<(usize, f64)> {
            let t = Instant::now();
            let mut pages = 0;
            for p in &args.pdfs {
                pages += sluice_worker::normalize::bare_render(p, args.pdf_dpi, encode).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok((pages, pages as f64 / t.elapsed().as_secs_f64()))
        };
        // What one page costs, step by step (one thread, one after another).
        let mut costs = sluice_worker::normalize::PageCosts::default();
        for p in &args.pdfs {
            let c = sluice_worker::normalize::page_costs(p, args.pdf_dpi, sluice_common::settings::Settings::DEFAULT.thumbnail_size)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            costs.pages += c.pages;
            costs.load_and_text += c.load_and_text;
            costs.render += c.render;
            costs.to_rgba += c.to_rgba;
            costs.jpeg_pure_rust += c.jpeg_pure_rust;
            costs.jpeg_turbo += c.jpeg_turbo;
            costs.thumbnail += c.thumbnail;
        }
        let per_page = |secs: f64| 1000.0 * secs / costs.pages.max(1) as f64;
        let before = costs.load_and_text + costs.render + costs.to_rgba + costs.jpeg_pure_rust + costs.thumbnail;
        let now = costs.load_and_text + costs.render + costs.jpeg_turbo + costs.thumbnail;
        let (pages, bare) = bare_rate(false)?;
        let (_, bare_encode) = bare_rate(true)?;
        let dpi = args.pdf_dpi.to_string();
        let s1 = sluice_ingest(&args.pdfs, &work.join("p1"), &["--normalization-workers", "1", "--pdf-dpi", &dpi])?;
        let s2 = sluice_ingest(&args.pdfs, &work.join("p2"), &["--normalization-workers", "2", "--pdf-dpi", &dpi])?;
        let rate = |s: &Value| s["rows"].as_f64().unwrap_or(0.0) / s["seconds"].as_f64().unwrap_or(f64::NAN);
        report.insert(
            "pdf".into(),
            json!({
                "pages": pages,
                "bare_pdfium_render_pages_s": bare,
                "bare_pdfium_render_and_jpeg_pages_s": bare_encode,
                "sluice_1_worker_pages_s": rate(&s1),
                "sluice_2_workers_pages_s": rate(&s2),
                "sluice_1_vs_bare": rate(&s1) / bare,
                "sluice_1_vs_bare_render_and_jpeg": rate(&s1) / bare_encode,
                "two_vs_one_worker": rate(&s2) / rate(&s1),
                "ms_per_page": {
                    "load_and_text": per_page(costs.load_and_text),
                    "render": per_page(costs.render),
                    "thumbnail_and_its_jpeg": per_page(costs.thumbnail),
                    "jpeg_libjpeg_turbo_from_render": per_page(costs.jpeg_turbo),
                    "before_bgra_to_rgba": per_page(costs.to_rgba),
                    "before_jpeg_pure_rust": per_page(costs.jpeg_pure_rust),
                    "all_steps_now": per_page(now),
                    "all_steps_before": per_page(before),
                    "now_vs_before": now / before,
                },
            }),
        );
    }
    if args.big_pdf_pages > 0 {
        let (n, quarter) = (args.big_pdf_pages, args.big_pdf_pages.div_ceil(4));
        let (one, four) = (work.join("big-one"), work.join("big-four"));
        std::fs::create_dir_all(&one)?;
        std::fs::create_dir_all(&four)?;
        std::fs::write(one.join("big.pdf"), sluice_common::samples::text_pdf(&text_pages(1, n), (612.0, 792.0), "Big"))?;
        for i in 0..4 {
            let pages = text_pages(1 + i * quarter, quarter.min(n.saturating_sub(i * quarter)));
            std::fs::write(four.join(format!("part-{i}.pdf")), sluice_common::samples::text_pdf(&pages, (612.0, 792.0), "Part"))?;
        }
        let dpi = args.pdf_dpi.to_string();
        let big = sluice_ingest(&[one], &work.join("t-one"), &["--pdf-dpi", &dpi])?;
        let parts = sluice_ingest(&[four], &work.join("t-four"), &["--pdf-dpi", &dpi])?;
        let secs = |s: &Value| s["seconds"].as_f64().unwrap_or(f64::NAN);
        report.insert(
            "big_pdf".into(),
            json!({
                "pages": n,
                "one_pdf_seconds": secs(&big),
                "four_pdfs_seconds": secs(&parts),
                "one_vs_four_time": secs(&big) / secs(&parts),
                "one_pdf_peak_processes": big["peak_pdf_normalizations"],
            }),
        );
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
