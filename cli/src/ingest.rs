//! `sluice ingest`: run a whole job on this machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_common::settings::Settings;
use sluice_coordinator::manifest::Inputs;
use sluice_coordinator::{run_embedded, EmbeddedJob, JobProgress, JobSummary};

use crate::storage_args::StorageArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// Table location: a local path, file:// or s3:// URI
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// Files, directories or globs to ingest
    pub inputs: Vec<String>,
    /// A file listing one path per line
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Files normalized in parallel
    #[arg(long, env = "SLUICE_NORMALIZATION_WORKERS", default_value_t = 4)]
    pub normalization_workers: u32,
    /// Rows buffered before a fragment is written
    #[arg(long, env = "SLUICE_FLUSH_EVERY", default_value_t = 200)]
    pub flush_every: u32,
    /// Bytes buffered before a fragment is written (whichever comes first)
    #[arg(long, env = "SLUICE_FLUSH_BYTES", default_value_t = 64 << 20)]
    pub flush_bytes: u64,
    /// Rows between table commits
    #[arg(long, env = "SLUICE_COMMIT_EVERY", default_value_t = 2000)]
    pub commit_every: u32,
    /// Concurrent object-store requests
    #[arg(long, env = "SLUICE_STORAGE_CONCURRENCY", default_value_t = 32)]
    pub storage_concurrency: u32,
    /// Text chunk size in characters
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: u32,
    /// Text chunk overlap in characters
    #[arg(long, default_value_t = 200)]
    pub chunk_overlap: u32,
    /// Largest image accepted, in pixels
    #[arg(long, default_value_t = 100_000_000)]
    pub max_image_pixels: u64,
    /// Largest file accepted, in bytes
    #[arg(long, default_value_t = 512 << 20)]
    pub max_file_size: u64,
    /// Seconds one file may spend in a normalizer
    #[arg(long, default_value_t = 300)]
    pub file_timeout: u32,
    /// Target video segment length, in seconds (cut at keyframes)
    #[arg(long, env = "SLUICE_SEGMENT_SECONDS", default_value_t = 10.0)]
    pub segment_seconds: f64,
    /// Longest video accepted, in seconds
    #[arg(long, default_value_t = 6 * 3600)]
    pub max_video_seconds: u32,
    /// Largest video accepted, in bytes (videos are streamed, not loaded)
    #[arg(long, default_value_t = 64 << 30)]
    pub max_video_size: u64,
    /// PDF page render resolution
    #[arg(long, env = "SLUICE_PDF_DPI", default_value_t = 150)]
    pub pdf_dpi: u32,
    /// Largest page render, in pixels (larger pages are rendered smaller)
    #[arg(long, default_value_t = 25_000_000)]
    pub max_render_pixels: u64,
    /// Most pages accepted in one PDF
    #[arg(long, default_value_t = 5000)]
    pub max_pdf_pages: u32,
    /// Abort once more than N files have failed
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// Files per shard
    #[arg(long, default_value_t = 256)]
    pub shard_files: usize,
    /// Run video and PDF decoders in this process instead of child processes
    #[arg(long)]
    pub in_process_normalizers: bool,
    /// Job id (default: a new UUID)
    #[arg(long)]
    pub job_id: Option<String>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// No progress bar
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl IngestArgs {
    fn settings(&self) -> Settings {
        Settings {
            normalization_workers: self.normalization_workers,
            flush_every: self.flush_every,
            flush_bytes: self.flush_bytes,
            commit_every: self.commit_every,
            storage_concurrency: self.storage_concurrency,
            chunk_size: self.chunk_size,
            chunk_overlap: self.chunk_overlap,
            max_image_pixels: self.max_image_pixels,
            max_file_bytes: self.max_file_size,
            file_timeout_secs: self.file_timeout,
            segment_seconds: self.segment_seconds,
            max_video_seconds: self.max_video_seconds,
            max_video_bytes: self.max_video_size,
            pdf_dpi: self.pdf_dpi,
            max_render_pixels: self.max_render_pixels,
            max_pdf_pages: self.max_pdf_pages,
            ..Settings::default()
        }
    }
}

pub async fn run(args: IngestArgs) -> Result<i32> {
    let table = args.storage.location(&args.table)?;
    let inputs = Inputs { paths: args.inputs.clone(), manifest: args.manifest.clone() };
    let mut job = EmbeddedJob::new(table, inputs, args.settings());
    job.job_id = args.job_id.clone();
    job.max_errors = args.max_errors;
    job.shard_files = args.shard_files;
    if !args.in_process_normalizers {
        job.normalizer_exe = Some(std::env::current_exe()?);
    }

    let progress = Arc::new(JobProgress::default());
    let bar = (!args.json && !args.no_progress).then(|| progress_bar(progress.clone()));
    let interrupt = progress.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing files in flight and committing them (Ctrl-C again to kill)");
            interrupt.abort("interrupted");
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    });
    let result = run_embedded(job, progress).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(summary.status.exit_code())
}

fn progress_bar(p: Arc<JobProgress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files  ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let b = bar.clone();
    let started = std::time::Instant::now();
    let ticker = tokio::spawn(async move {
        loop {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let bytes = JobProgress::get(&p.bytes);
            b.set_length(JobProgress::get(&p.files_planned));
            b.set_position(p.files_finished());
            b.set_message(format!(
                "{:.0} files/s, {:.1} MB/s | {} rows, {}, {} failed, v{}",
                JobProgress::get(&p.files_done) as f64 / secs,
                bytes as f64 / 1e6 / secs,
                thousands(JobProgress::get(&p.rows_written)),
                bytesize::ByteSize(bytes),
                JobProgress::get(&p.files_failed),
                p.version.load(std::sync::atomic::Ordering::Relaxed),
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, ticker)
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_summary(s: &JobSummary) {
    let took = humantime::format_duration(Duration::from_secs(s.seconds.round() as u64));
    let skipped = if s.files_skipped > 0 { format!(", {} unchanged skipped", thousands(s.files_skipped)) } else { String::new() };
    println!(
        "Ingested {} rows from {} files ({} failed{skipped}) in {took} — {:.0} files/s, {:.1} MB/s; table version {}",
        thousands(s.rows),
        thousands(s.files_ingested),
        thousands(s.files_failed),
        s.files_per_sec,
        s.mb_per_sec,
        s.table_version
    );
    if let Some(reason) = &s.abort_reason {
        println!("Stopped early: {reason}");
    }
    if !s.errors.is_empty() {
        println!("Failed files:");
        for e in s.errors.iter().take(20) {
            println!("  {}  {}", e.uri, e.reason);
        }
        if s.files_failed > 20 {
            println!("  … and {} more (sluice inspect {} --errors)", s.files_failed - 20, s.table);
        }
    }
}
