//! A cluster in one test process: a coordinator and workers that speak the
//! worker protocol through its in-process transport (as `sluice ingest`
//! does), so tests can kill workers and stop jobs, then assert on the
//! coordinator's job and worker state instead of reading logs.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_common::settings::Settings;
use sluice_common::storage::TableLocation;
use sluice_coordinator::cluster::{Cluster, ClusterConfig, ClusterJob};
use sluice_coordinator::manifest::Inputs;
use sluice_coordinator::{JobPlan, JobStatus};
use sluice_worker::session::{run_worker, Transport, WorkerConfig};
use support::{assert_rows_exactly_once, corpus, expected_rows, read_rows};
use tokio_util::sync::CancellationToken;

/// A coordinator and named workers in this process.
struct InProcess {
    cluster: Arc<Cluster>,
    workers: Vec<(String, CancellationToken)>,
}

impl InProcess {
    async fn start(workers: usize) -> Self {
        let cfg = ClusterConfig {
            heartbeat: Duration::from_millis(100),
            worker_timeout: Duration::from_secs(1),
            etcd: Vec::new(),
            etcd_prefix: String::new(),
            lease_ttl: Duration::from_secs(5),
            advertise: "test".into(),
            storage_root: None,
            allowed_roots: Vec::new(),
            tokens: Default::default(),
            tls: Default::default(),
        };
        let cluster = Cluster::new(cfg).await.unwrap();
        cluster.lead().await.unwrap();
        let mut me = Self { cluster, workers: Vec::new() };
        for i in 0..workers {
            me.add_worker(&format!("w{i}"));
        }
        me
    }

    fn add_worker(&mut self, name: &str) {
        let cfg = WorkerConfig { name: name.into(), ..Default::default() };
        let stop = CancellationToken::new();
        tokio::spawn(run_worker(cfg, Transport::InProcess(self.cluster.clone()), stop.clone()));
        self.workers.push((name.into(), stop));
    }

    /// The worker stops polling and drops its jobs mid-file, as a crashed
    /// process would; the coordinator must notice on its own.
    fn kill(&self, name: &str) {
        self.workers.iter().find(|(n, _)| n == name).unwrap().1.cancel();
    }

    async fn run(&self, table: &Path, corpus: &Path, settings: Settings) -> Arc<ClusterJob> {
        let location = TableLocation::new(table.to_str().unwrap(), Default::default()).unwrap();
        let inputs = Inputs { paths: vec![corpus.to_str().unwrap().into()], ..Default::default() };
        let mut plan = JobPlan::new(location, inputs, settings);
        plan.shard_files = 20;
        self.cluster.run(plan).await
    }

    /// Shards handed to the registered worker named `name`.
    fn shards_taken(&self, name: &str) -> u64 {
        let prefix = format!("{name}-");
        self.cluster.workers().workers.iter().filter(|w| w.worker_id.starts_with(&prefix)).map(|w| w.shards_taken).sum()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn small_commits() -> Settings {
    Settings { flush_every: 10, commit_every: 40, normalization_workers: 2, ..Settings::default() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

#[test]
fn a_worker_lost_mid_job_costs_nothing_and_its_shards_finish_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    corpus(&data, 240, false);
    let table = dir.path().join("t");
    // Files take a while, so the kill lands mid-job.
    std::env::set_var("SLUICE_TEST_FILE_DELAY_MS", "20");
    let summary = runtime().block_on(async {
        let cluster = InProcess::start(3).await;
        let job = cluster.run(&table, &data, small_commits()).await;
        wait_for("w0 to take shards and a first commit", || {
            cluster.shards_taken("w0") > 0 && job.progress.commits.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        assert!(job.is_running(), "the kill lands mid-job");
        cluster.kill("w0");
        let summary = job.outcome().await.unwrap().unwrap();
        let workers = cluster.cluster.workers();
        assert_eq!(workers.workers_lost, 1, "w0 was declared dead");
        assert_eq!(workers.workers.len(), 2, "the others are still registered");
        assert!(workers.workers.iter().all(|w| w.shards_held == 0), "every shard was committed: {workers:?}");
        summary
    });
    assert_eq!(summary.status, JobStatus::Succeeded, "{summary:?}");
    assert_eq!(summary.files_ingested, 240);
    assert_rows_exactly_once(read_rows(&table), &expected_rows(&data));
}

#[test]
fn a_stopped_job_finishes_the_files_in_flight_and_a_rerun_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    corpus(&data, 200, false);
    let table = dir.path().join("t");
    std::env::set_var("SLUICE_TEST_FILE_DELAY_MS", "10");
    let rt = runtime();
    let stopped = rt.block_on(async {
        let cluster = InProcess::start(2).await;
        let job = cluster.run(&table, &data, small_commits()).await;
        wait_for("a first commit", || job.progress.commits.load(std::sync::atomic::Ordering::Relaxed) > 0).await;
        job.request_cancel();
        // Ends once both workers flushed what they had and said so.
        let summary = job.outcome().await.unwrap().unwrap();
        let workers = cluster.cluster.workers();
        assert_eq!(workers.workers_lost, 0, "no worker had to be declared dead to stop");
        summary
    });
    assert_eq!(stopped.status, JobStatus::Aborted, "{stopped:?}");
    assert!(stopped.files_ingested > 0 && stopped.files_ingested < 200, "stopped mid-job: {stopped:?}");
    // What was committed is whole files only.
    let rows = read_rows(&table);
    let expected = expected_rows(&data);
    let mut per_file: std::collections::HashMap<&str, usize> = Default::default();
    for r in &rows {
        *per_file.entry(r.uri.as_str()).or_default() += 1;
    }
    assert_eq!(per_file.len() as u64, stopped.files_ingested, "every ingested file is in the table");
    for (uri, n) in &per_file {
        assert_eq!(expected.get(*uri), Some(n), "{uri} is whole");
    }

    let summary = rt.block_on(async {
        let cluster = InProcess::start(2).await;
        cluster.run(&table, &data, small_commits()).await.outcome().await.unwrap().unwrap()
    });
    assert_eq!(summary.files_skipped, stopped.files_ingested, "the rerun skips what was committed");
    assert_rows_exactly_once(read_rows(&table), &expected);
}
