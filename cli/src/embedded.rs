//! `sluice ingest` is a cluster in one process: a coordinator (in-memory job
//! records, no election) and one worker, meeting through the in-process
//! transport of the worker protocol. Shards, generations, fencing and
//! checkpoints go the same way as between machines; only the wire is gone.

use std::sync::Arc;
use std::time::Duration;

use sluice_common::storage::StorageLimiter;
use sluice_coordinator::cluster::{Cluster, ClusterConfig, ClusterJob};
use sluice_coordinator::{JobPlan, JobSummary};
use sluice_worker::actors::PipelineStats;
use sluice_worker::session::{run_worker, Transport, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// How often the worker polls: the latency of a stop, and of new shards
/// when none were queued.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// A worker this long silent is declared dead and its shards redone; in one
/// process that means a stalled runtime, not a lost machine.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Embedded {
    cluster: Arc<Cluster>,
    limiter: StorageLimiter,
    stats: Arc<PipelineStats>,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<sluice_common::Result<()>>,
}

impl Embedded {
    /// Start the coordinator and the worker. `storage_concurrency` bounds
    /// the storage requests of both together.
    pub async fn start(normalizer_exe: Option<sluice_worker::isolation::Normalizers>, storage_concurrency: u32) -> anyhow::Result<Self> {
        let cfg = ClusterConfig {
            heartbeat: HEARTBEAT,
            worker_timeout: WORKER_TIMEOUT,
            etcd: Vec::new(),
            etcd_prefix: String::new(),
            lease_ttl: WORKER_TIMEOUT,
            advertise: "this process".into(),
            storage_root: None,
            allowed_roots: Vec::new(),
            tokens: Default::default(),
            tls: Default::default(),
        };
        let cluster = Cluster::new(cfg).await?;
        cluster.lead().await?;
        let limiter = StorageLimiter::new(storage_concurrency);
        let stats = Arc::new(PipelineStats::default());
        let worker = WorkerConfig {
            name: "embedded".into(),
            normalizer_exe,
            limiter: Some(limiter.clone()),
            stats: stats.clone(),
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let transport = Transport::InProcess(cluster.clone());
        let worker = tokio::spawn(run_worker(worker, transport, shutdown.clone()));
        Ok(Self { cluster, limiter, stats, shutdown, worker })
    }

    /// The in-process coordinator (for its HTTP API and dashboard).
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.clone()
    }

    /// Start a job; its progress can be watched meanwhile.
    pub async fn run(&self, mut plan: JobPlan) -> Arc<ClusterJob> {
        plan.limiter = Some(self.limiter.clone());
        self.cluster.run(plan).await
    }

    /// Wait for `job` to end, then stop the worker.
    pub async fn finish(self, job: &ClusterJob) -> sluice_common::Result<JobSummary> {
        let outcome = job.outcome().await;
        self.shutdown.cancel();
        if let Ok(Err(e)) = self.worker.await {
            tracing::warn!(error = %e, "the worker ended with an error");
        }
        let summary = outcome.unwrap_or_else(|| Err(sluice_common::Error::Internal("the job's outcome was taken".into())))?;
        Ok(JobSummary {
            peak_concurrent_normalizations: self.stats.normalizers.peak() as u64,
            peak_media_normalizations: self.stats.media_normalizers.peak() as u64,
            peak_pdf_normalizations: self.stats.pdf_normalizers.peak() as u64,
            peak_rows_in_flight_bytes: self.stats.rows_in_flight.peak_bytes(),
            ..summary
        })
    }
}
