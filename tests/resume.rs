//! Crash and resume: the process dies at chosen and at random moments; a
//! rerun of the same command must leave every file's rows exactly once.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use support::*;

const ARGS: &[&str] = &["--flush-every", "5", "--commit-every", "15", "--normalization-workers", "2"];

fn setup(files: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    support::corpus(&corpus, files, false);
    (dir, corpus)
}

fn ingest_with_failpoint(table: &Path, corpus: &Path, failpoint: &str) {
    let mut cmd = sluice();
    cmd.env("SLUICE_FAILPOINTS", failpoint).arg("ingest").arg("--table").arg(table).arg(corpus).arg("--json").args(ARGS);
    let out = run(&mut cmd);
    assert!(!out.status.success(), "failpoint {failpoint} must kill the process");
    assert_eq!(out.status.code(), None, "killed by a signal (abort), not a clean exit");
}

fn rerun_and_check(table: &Path, corpus: &Path) {
    let (code, s) = ingest_json(table, &[corpus], ARGS);
    assert_eq!(code, 0, "rerun succeeds");
    assert!(s["files_skipped"].as_u64().unwrap() > 0, "work committed before the crash is kept");
    assert!(s["files_ingested"].as_u64().unwrap() > 0, "the crash happened mid-job");
    assert_exactly_once(table, &expected_rows(corpus));
}

#[test]
fn crash_after_a_commit_lands() {
    let (dir, corpus) = setup(120);
    let table = dir.path().join("t");
    ingest_with_failpoint(&table, &corpus, "after_commit=3");
    rerun_and_check(&table, &corpus);
}

#[test]
fn crash_after_fragments_are_written_but_before_commit() {
    let (dir, corpus) = setup(120);
    let table = dir.path().join("t");
    ingest_with_failpoint(&table, &corpus, "before_commit=4");
    rerun_and_check(&table, &corpus);
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    let (dir, corpus) = setup(300);
    let mut rng = rand::rng();
    for round in 0..3 {
        let table = dir.path().join(format!("t{round}"));
        let mut child = sluice()
            .arg("ingest")
            .arg("--table")
            .arg(&table)
            .arg(&corpus)
            .arg("--no-progress")
            // Small flushes and commits: many commit points to die between.
            .args(["--flush-every", "2", "--commit-every", "4", "--normalization-workers", "1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first commit, then kill at a random moment after it.
        let started = Instant::now();
        let versions_dir = table.join("_versions");
        let manifests = || {
            std::fs::read_dir(&versions_dir).map_or(0, |d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".manifest"))).count()
            })
        };
        while manifests() < 2 {
            assert!(started.elapsed() < Duration::from_secs(120), "no commit within 2 minutes");
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        assert!(child.try_wait().unwrap().is_none(), "round {round}: the job finished before the kill");
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        eprintln!("round {round}: killed ({status:?}) after {:?}", started.elapsed());
        rerun_and_check(&table, &corpus);
    }
}

#[test]
fn a_failed_fragment_write_ends_the_job_with_an_error_and_a_rerun_completes() {
    let (dir, corpus) = setup(120);
    let table = dir.path().join("t");
    let mut cmd = sluice();
    cmd.env("SLUICE_FAILPOINTS", "fragment_write=6").arg("ingest").arg("--table").arg(&table).arg(&corpus).arg("--json").args(ARGS);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "the job fails, it does not hang or panic");
    assert!(String::from_utf8_lossy(&out.stderr).contains("injected fragment write failure"));
    rerun_and_check(&table, &corpus);
}

/// A normalizer that fails after handing on a file's first rows, while the
/// job is draining (the last file), must not end in a commit of that file's
/// first rows: the job fails, nothing of the file is in the table, and a
/// rerun ingests it whole.
#[test]
fn a_normalizer_failing_mid_file_during_the_drain_commits_no_part_of_it() {
    let (dir, corpus) = setup(12);
    let pages: Vec<String> = (0..20).map(|p| format!("page {p} of the last file")).collect();
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    let pdf = corpus.join("zz-last.pdf");
    std::fs::write(&pdf, make_pdf(&pages, (612.0, 792.0), "last")).unwrap();
    let pdf_uri = format!("file://{}", std::path::absolute(&pdf).unwrap().display());
    let table = dir.path().join("t");
    let mut cmd = sluice();
    // Slow files: the queue closes and the drain starts while the PDF (the
    // last file) is still being normalized.
    cmd.env("SLUICE_FAILPOINTS", "streamed_file_end=1")
        .env("SLUICE_TEST_FILE_DELAY_MS", "150")
        .arg("ingest")
        .arg("--table")
        .arg(&table)
        .arg(&corpus)
        .arg("--json")
        .args(ARGS);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "the job fails instead of committing a cut-off file");
    // The failure names the file and why, as the worker reported it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("zz-last.pdf") && stderr.contains("after its first rows"), "{stderr}");
    let rows = read_rows(&table);
    assert!(rows.iter().all(|r| r.uri != pdf_uri), "no row of the cut-off file was committed");

    let mut expected = expected_rows(&corpus);
    expected.insert(pdf_uri, pages.len());
    let (code, s) = ingest_json(&table, &[&corpus], ARGS);
    assert_eq!(code, 0, "rerun succeeds: {s}");
    assert_exactly_once(&table, &expected);
}

#[test]
fn gc_removes_the_fragments_a_crash_left_and_keeps_the_table() {
    let (dir, corpus) = setup(120);
    let table = dir.path().join("t");
    ingest_with_failpoint(&table, &corpus, "before_commit=4");
    let data_files = || {
        std::fs::read_dir(table.join("data")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".lance")).count()
    };
    let referenced = || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ds = lance::Dataset::open(table.to_str().unwrap()).await.unwrap();
            ds.get_fragments().iter().map(|f| f.metadata().files.len()).sum::<usize>()
        })
    };
    let rows_before = read_rows(&table).len();
    assert!(data_files() > referenced(), "the crash left uncommitted fragments");

    // Young orphans are kept by default (they could be a write in progress).
    let out = run(sluice().args(["gc", "--json"]).arg(&table));
    assert!(out.status.success());
    assert!(data_files() > referenced());

    let out = run(sluice().args(["gc", "--orphans-now", "--json"]).arg(&table));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["data_files_removed"].as_u64().unwrap() > 0);
    assert_eq!(data_files(), referenced(), "only referenced files remain");
    assert_eq!(read_rows(&table).len(), rows_before, "no committed row lost");
    rerun_and_check(&table, &corpus);
}
