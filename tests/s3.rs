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

    let (code, s) = ingest_s3(&moto, "s3://lake/tables/one", &corpus, &["--flush-every", "10", "--commit-every", "10", "--storage-concurrency", "1"]);
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
    let (code, s) = ingest_s3(&moto, "s3://lake/tables/two", &corpus, &["--flush-every", "5", "--commit-every", "5", "--storage-concurrency", "8"]);
    assert_eq!(code, 2);
    let peak = s["storage_peak_in_flight"].as_u64().unwrap();
    assert!((2..=8).contains(&peak), "peak in flight {peak} with storage_concurrency 8");
}

/// A fragment up to the upload part size goes up in one request, not as a
/// multipart upload of Lance's 5 MiB parts; `LANCE_INITIAL_UPLOAD_SIZE`
/// still chooses otherwise.
#[test]
fn a_fragment_is_one_put_unless_lance_part_size_is_set() {
    use rand::{RngCore, SeedableRng};
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut blob = vec![0u8; 3_000_000];
    for i in 0..3 {
        rng.fill_bytes(&mut blob);
        std::fs::write(corpus.join(format!("blob-{i}.bin")), &blob).unwrap();
    }
    let largest = |table: &str| {
        let objects = moto.objects("lake", table);
        objects.into_iter().max_by_key(|o| o.1).unwrap()
    };

    let (code, s) = ingest_s3(&moto, "s3://lake/one", &corpus, &[]);
    assert_eq!((code, s["fragments"].as_u64()), (0, Some(1)), "{s}");
    let (key, size, etag) = largest("one/");
    assert!(size >= 9_000_000, "the fragment's blobs in {key}: {size} bytes");
    assert!(!etag.contains('-'), "{key} went up in one PUT, its ETag is {etag}");

    let mut cmd = sluice();
    cmd.args(["ingest", "--table", "s3://lake/parts", "--json"]).arg(&corpus).args(moto.flags()).env("LANCE_INITIAL_UPLOAD_SIZE", (5 << 20).to_string());
    assert!(run(&mut cmd).status.success());
    let (key, size, etag) = largest("parts/");
    assert!(size >= 9_000_000 && etag.ends_with("-2"), "{key}: {size} bytes in 5 MiB parts, ETag {etag}");
}

/// A fault-injecting proxy in front of moto (tests/python/fault_proxy.py).
struct FaultProxy {
    child: std::process::Child,
    endpoint: String,
    stats: std::path::PathBuf,
}

impl FaultProxy {
    fn start(upstream: &str, rate: f64, dir: &std::path::Path) -> Self {
        let port = support::services::free_port();
        let upstream_port = upstream.rsplit(':').next().unwrap().to_string();
        let stats = dir.join("faults.json");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/fault_proxy.py");
        let child = std::process::Command::new(python())
            .arg(script)
            .args([port.to_string(), upstream_port, rate.to_string()])
            .arg(&stats)
            .spawn()
            .unwrap();
        support::services::wait_port(port, "fault proxy");
        Self { child, endpoint: format!("http://127.0.0.1:{port}"), stats }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.stats).unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ingest_through_ten_percent_storage_faults_is_exact() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    support::corpus(&corpus, 150, true);
    let expected = expected_rows(&corpus);
    let proxy = FaultProxy::start(&moto.endpoint, 0.10, dir.path());

    // Every request to storage goes through the proxy; a tenth of them fail
    // (503, 500), are slow, or hang. The object-store client times out and
    // retries with exponential backoff and jitter.
    let mut cmd = sluice();
    cmd.args(["ingest", "--table", "s3://lake/faulty", "--json", "--flush-every", "5", "--commit-every", "20"])
        .arg(&corpus)
        .args(["--s3-endpoint", &proxy.endpoint, "--s3-region", "us-east-1", "--s3-access-key-id", "test"])
        .args(["--s3-secret-access-key", "test", "--s3-allow-http"])
        // A hung request is abandoned after 2 s and retried.
        .args(["--storage-option", "timeout=2s"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "the job completes; only the bad files fail");
    let stats = proxy.stats();
    let injected: u64 = ["503", "500", "slow", "hang"].iter().map(|k| stats[*k].as_u64().unwrap_or(0)).sum();
    assert!(injected >= 5, "faults were injected: {stats}");
    eprintln!("faults: {stats}");
    assert_rows_exactly_once(read_rows_at("s3://lake/faulty", moto.storage_options()), &expected);
}
