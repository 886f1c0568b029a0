//! The table on S3: a real S3-compatible server (moto) started on a free
//! loopback port, written through the CLI, read back, resumed.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bin = std::path::Path::new(&python()).with_file_name("moto_server");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed beside SLUICE_PYTHON (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, endpoint }
    }

    fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
            self.endpoint
        );
        assert!(Command::new(python()).args(["-c", &script]).status().unwrap().success());
    }

    fn flags(&self) -> Vec<String> {
        ["--s3-endpoint", &self.endpoint, "--s3-region", "us-east-1", "--s3-access-key-id", "test", "--s3-secret-access-key", "test", "--s3-allow-http"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
