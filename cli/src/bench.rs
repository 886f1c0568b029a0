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
    /// Number of files in the generated corpus
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Working directory (corpus and table); default: a temporary directory
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Extra arguments passed to `sluice ingest` (e.g. --normalization-workers 8)
    #[arg(last = true)]
    pub ingest_args: Vec<String>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let tmp;
    let work = match &args.workdir {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let corpus = work.join("corpus");
    let table = work.join("table");
    let _ = std::fs::remove_dir_all(&table);
    if !corpus.exists() {
        generate(&CorpusArgs { dir: corpus.clone(), files: args.files, with_bad_files: false, text_chars: 3000, image_side: 96, with_media: false, text_pdfs: 0 })?;
    }
    let s = ingest_json(&table, std::iter::once(corpus.as_os_str()).chain(args.ingest_args.iter().map(|a| a.as_ref())), &[])?;
    let report = serde_json::json!({
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
        "ingest_args": args.ingest_args,
    });
    println!("{}", serde_json::to_string(&report)?);
    if args.workdir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
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
