//! `sluice ingest`: run a whole job on this machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_coordinator::manifest::Inputs;
use sluice_coordinator::{JobPlan, JobProgress, JobSummary};

use crate::knobs::Knobs;
use crate::storage_args::StorageArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// Table location: a local path, file:// or s3:// URI
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// Files, directories or globs to ingest
    pub inputs: Vec<String>,
    /// A file listing one path per line; a `.csv` with a header (`path,label,...`)
    /// or `.jsonl` (`{"path": ..., "label": ...}`) also gives per-file values,
    /// stored in columns of their own
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Types of the per-file value columns, SQL-style ("label TEXT, score DOUBLE");
    /// left out: text for CSV columns, inferred from the first JSON line
    #[arg(long)]
    pub columns: Option<String>,
    #[command(flatten)]
    pub knobs: Knobs,
    /// Abort once more than N files have failed
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// Files per shard
    #[arg(long, default_value_t = 256)]
    pub shard_files: usize,
    /// Render PDFs and read images in this process instead of child
    /// processes (video, audio and what else needs FFmpeg still go to
    /// `sluice-normalizer-media` processes: `sluice` does not link FFmpeg)
    #[arg(long)]
    pub in_process_normalizers: bool,
    /// Job id (default: a new UUID)
    #[arg(long)]
    pub job_id: Option<String>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Print progress and then the summary as JSON lines on standard output
    /// ({"event": "progress", ...} as work advances, {"event": "summary", ...} last)
    #[arg(long, conflicts_with = "json")]
    pub events: bool,
    /// No progress bar
    #[arg(long)]
    pub no_progress: bool,
    /// Serve the job dashboard (and the JSON job API) on this address while
    /// the job runs, e.g. 127.0.0.1:8080
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: IngestArgs) -> Result<i32> {
    let table = args.storage.location(&args.table)?;
    let inputs = Inputs { paths: args.inputs.clone(), manifest: args.manifest.clone(), ..Default::default() };
    let mut job = JobPlan::new(table, inputs, args.knobs.settings());
    job.columns = args.columns.as_deref().map(sluice_common::insert::parse_columns).transpose()?.unwrap_or_default();
    job.job_id = args.job_id.clone();
    job.max_errors = args.max_errors;
    job.shard_files = args.shard_files;
    let normalizer_exe = Some(sluice_worker::isolation::normalizer_exe(args.in_process_normalizers)?);
    let embedded = crate::embedded::Embedded::start(normalizer_exe, job.settings.storage_concurrency).await?;
    if let Some(addr) = args.ui {
        // Bound before the job starts, so a taken port fails the run at once.
        let routes = sluice_coordinator::cluster::http_router(embedded.cluster())?;
        crate::telemetry::serve_router(addr, routes).await?;
    }
    let running = embedded.run(job).await;
    if let Some(addr) = args.ui {
        eprintln!("dashboard: http://{addr}/#/jobs/{}", running.id);
    }
    let progress = running.progress.clone();
    let bar = (!args.json && !args.events && !args.no_progress).then(|| progress_bar(progress.clone()));
    let events = args.events.then(|| tokio::spawn(progress_events(progress.clone())));
    if args.events {
        // A program drives this run: if it dies, stop as Ctrl-C would.
        let orphaned = progress.clone();
        let parent = std::os::unix::process::parent_id();
        tokio::spawn(async move {
            while std::os::unix::process::parent_id() == parent {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            eprintln!("the program that started this ingest is gone: finishing files in flight and committing them");
            orphaned.abort("the program that started the ingest exited");
        });
    }
    let interrupt = progress.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing files in flight and committing them (Ctrl-C again to kill)");
            interrupt.abort("interrupted");
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    });
    let result = embedded.finish(&running).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    if let Some(events) = events {
        events.abort();
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) if args.events => {
            println!("{}", serde_json::json!({ "event": "error", "error": e.message(), "status": e.http_status() }));
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if args.events {
        print_event("progress", &progress_view(&progress));
        // Programs get every failed file (up to a bound), not the summary's first ones.
        let ledger = sluice_common::ledger::ErrorLedger::new(&args.storage.location(&args.table)?)?;
        let mut errors = ledger.list(Some(&summary.job_id)).await?;
        errors.truncate(EVENT_ERRORS);
        let mut event = serde_json::to_value(&summary)?;
        event["errors"] = serde_json::to_value(errors)?;
        event["event"] = "summary".into();
        println!("{event}");
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(summary.status.exit_code())
}

/// Failed files listed in the `--events` summary.
const EVENT_ERRORS: usize = 100_000;

fn progress_view(p: &JobProgress) -> serde_json::Value {
    serde_json::json!({
        "files_total": p.files_total(),
        "files_done": JobProgress::get(&p.files_done),
        "files_failed": JobProgress::get(&p.files_failed),
        "files_skipped": JobProgress::get(&p.files_skipped),
        "rows": JobProgress::get(&p.rows_committed),
        "bytes": JobProgress::get(&p.bytes),
        "planning_done": p.planning_done.load(std::sync::atomic::Ordering::Relaxed),
        "table_version": p.version.load(std::sync::atomic::Ordering::Relaxed),
    })
}

fn print_event(kind: &str, view: &serde_json::Value) {
    let mut event = view.clone();
    event["event"] = kind.into();
    println!("{event}");
}

/// A progress line whenever the counters change (at most five a second).
async fn progress_events(p: Arc<JobProgress>) {
    let mut last = serde_json::Value::Null;
    loop {
        let now = progress_view(&p);
        if now != last {
            print_event("progress", &now);
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
            b.set_length(p.files_total());
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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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
