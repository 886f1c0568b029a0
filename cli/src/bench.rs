//! `sluice bench`: generate a corpus, ingest it in a child process, report
//! files/s, rows/s, MB/s and the child's peak RSS.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::corpus::{generate, CorpusArgs};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Numbers of files in the generated corpora, comma-separated: one
    /// ingest each, then each one's peak RSS against the smallest's
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub files: Vec<usize>,
    /// Working directory (corpora and table); default: a temporary directory
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Extra arguments passed to `sluice ingest` (e.g. --normalization-workers 8)
    #[arg(last = true)]
    pub ingest_args: Vec<String>,
}

/// Prints one JSON line per corpus size and, for several sizes, a last line
/// comparing their peak RSS: memory should follow the buffers, not the
/// number of files.
pub async fn run(args: BenchArgs) -> Result<()> {
    let tmp;
    let work = match &args.workdir {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let mut sizes = args.files.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut peaks = Vec::new();
    for &files in &sizes {
        let report = run_one(&work, files, &args.ingest_args)?;
        peaks.push(report["peak_rss_mb"].as_f64().unwrap_or(f64::NAN));
        println!("{}", serde_json::to_string(&report)?);
    }
    if sizes.len() > 1 {
        let vs_fewest: Vec<f64> = peaks.iter().map(|p| p / peaks[0]).collect();
        let growth = vs_fewest.iter().copied().fold(f64::NAN, f64::max);
        let summary = serde_json::json!({
            "files": sizes,
            "peak_rss_mb": peaks,
            "peak_rss_vs_fewest_files": vs_fewest,
            "largest_peak_rss_vs_fewest_files": growth,
        });
        println!("{}", serde_json::to_string(&summary)?);
    }
    if args.workdir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// Ingest a corpus of `files` small mixed files (made once per size under
/// `work`) into a new table (left there); the ingest's figures.
fn run_one(work: &std::path::Path, files: usize, ingest_args: &[String]) -> Result<Value> {
    let corpus = work.join(format!("corpus-{files}"));
    let table = work.join("table");
    let _ = std::fs::remove_dir_all(&table);
    if !corpus.exists() {
        generate(&CorpusArgs { dir: corpus.clone(), files, with_bad_files: false, text_chars: 3000, image_side: 96, with_media: false, text_pdfs: 0 })?;
    }
    let s = ingest_json(&table, std::iter::once(corpus.as_os_str()).chain(ingest_args.iter().map(|a| a.as_ref())), &[])?;
    Ok(serde_json::json!({
        "files": s["files_ingested"],
        "rows": s["rows"],
        "bytes": s["bytes"],
        "seconds": s["seconds"],
        "files_per_sec": s["files_per_sec"],
        "rows_per_sec": s["rows_per_sec"],
        "mb_per_sec": s["mb_per_sec"],
        "peak_rss_mb": s["peak_rss_bytes"].as_f64().map(|b| b / 1e6),
        "commits": s["commits"],
        "fragments": s["fragments"],
        "ingest_args": ingest_args,
    }))
}

/// Run `sluice ingest --table TABLE --json ARGS...` (this executable, with
/// `envs` set) and return its summary.
pub(crate) fn ingest_json<S: AsRef<OsStr>>(
    table: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
    envs: &[(&str, &str)],
) -> Result<Value> {
    let out = Command::new(std::env::current_exe()?)
        .envs(envs.iter().copied())
        .arg("ingest")
        .arg("--table")
        .arg(table)
        .arg("--json")
        .args(args)
        .output()
        .context("running sluice ingest")?;
    if !out.status.success() {
        bail!("ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The median of `values` (NaN for none).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `[min, max]` of `values`, as JSON.
pub(crate) fn range(values: &[f64]) -> serde_json::Value {
    serde_json::json!([values.iter().copied().fold(f64::INFINITY, f64::min), values.iter().copied().fold(f64::NEG_INFINITY, f64::max)])
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians_and_ranges() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(super::median(Vec::new()).is_nan());
        assert_eq!(super::range(&[0.7, 0.5, 0.9]), serde_json::json!([0.5, 0.9]));
    }
}
