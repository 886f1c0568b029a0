//! The table on S3: a real S3-compatible server (moto) started on a free
//! loopback port, written through the CLI, read back, resumed.

mod support;

use support::services::Moto;
use support::*;

fn ingest_s3(moto: &Moto, table: &str, corpus: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = sluice();
    cmd.args(["ingest", "--table", table, "--json"]).arg(corpus).args(moto.flags()).args(extra);
    let out = run(&mut cmd);
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or_default())
}

#[test]
fn ingest_to_s3_resume_and_storage_concurrency() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    support::corpus(&corpus, 40, true);
    let expected = expected_rows(&corpus);
    let total: u64 = expected.values().map(|n| *n as u64).sum();

    let (code, s) = ingest_s3(&moto, "s3://lake/tables/one", &corpus, &["--flush-every", "10", "--storage-concurrency", "1"]);
    assert_eq!(code, 2, "bad files failed, the rest landed");
    assert_eq!(s["rows"].as_u64().unwrap(), total);
    assert_eq!(s["files_failed"], 4);
    assert_eq!(s["storage_peak_in_flight"], 1, "storage_concurrency 1 means one request at a time");
    assert!(s["storage_requests"].as_u64().unwrap() > 10);

    // Read back through the CLI (Lance over S3), including the error ledger.
    let mut cmd = sluice();
    cmd.args(["inspect", "s3://lake/tables/one", "--json"]).args(moto.flags());
    let out = run(&mut cmd);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"].as_u64().unwrap(), total);
    assert_eq!(report["failed_files"], 4);

    // A rerun skips everything already there.
    let (_, again) = ingest_s3(&moto, "s3://lake/tables/one", &corpus, &[]);
    assert_eq!(again["files_skipped"], 40);
    assert_eq!(again["rows"], 0);

    // More concurrency is allowed, and used.
    let (code, s) = ingest_s3(&moto, "s3://lake/tables/two", &corpus, &["--flush-every", "5", "--storage-concurrency", "8"]);
    assert_eq!(code, 2);
    let peak = s["storage_peak_in_flight"].as_u64().unwrap();
    assert!((2..=8).contains(&peak), "peak in flight {peak} with storage_concurrency 8");
}
