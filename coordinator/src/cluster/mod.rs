//! Cluster mode: the coordinator serves the job API and the worker protocol
//! over gRPC. Workers register, poll for shards (the poll is also their
//! heartbeat) and publish checkpoints; a worker silent for longer than the
//! timeout (or whose etcd lease is gone) is declared dead, fenced, and its
//! shards go to the others. With etcd, coordinators elect a leader and keep
//! job records there; a new leader resumes running jobs, and the table
//! (which records every committed file) tells it what is already done.

mod dashboard;
mod http;
mod job;
mod service;
mod store;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use store::MetaStore;
use sluice_common::settings::Settings;
use sluice_common::storage::{complete_options, TableLocation};
use sluice_common::protocol::{
    Admission, Checkpoint, CheckpointAck, CoordinatorApi, JobEnded, PollRequest, PollResponse, Registration,
};
use sluice_common::{ids, pb, Error, Result};
use tokio::sync::Notify;

pub use job::{ClusterJob, Phase};
pub use http::{router as http_router, workers_json};
pub use service::{serve, Served};

use crate::job::JobPlan;
use crate::manifest::Inputs;
use crate::progress::JobStatus;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often workers poll.
    pub heartbeat: Duration,
    /// A worker silent this long is dead.
    pub worker_timeout: Duration,
    /// etcd endpoints; empty means an in-memory store and no failover.
    pub etcd: Vec<String>,
    pub etcd_prefix: String,
    /// Leadership lease TTL.
    pub lease_ttl: Duration,
    /// Address workers and clients reach this coordinator at.
    pub advertise: String,
    /// Where tables named without a scheme live (`s3://bucket/lake`): a job
    /// for table `videos` writes `s3://bucket/lake/videos`.
    pub storage_root: Option<String>,
    /// Local directories jobs may read (canonical). Empty: local sources
    /// are refused, only object-store URIs are accepted.
    pub allowed_roots: Vec<std::path::PathBuf>,
    /// Bearer tokens accepted by the job API; empty: no authentication.
    pub tokens: Tokens,
    /// TLS for the gRPC endpoint; with a client CA, workers must present a
    /// certificate it signed (mutual TLS).
    pub tls: sluice_common::tls::TlsFiles,
}

/// Bearer tokens; never printed.
#[derive(Clone, Default)]
pub struct Tokens(pub Vec<String>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bearer tokens>", self.0.len())
    }
}

struct WorkerEntry {
    registered: Instant,
    registered_at: std::time::SystemTime,
    last_seen: Instant,
    /// Holds an etcd membership lease (checked on top of heartbeats).
    leased: bool,
    shards_taken: u64,
    checkpoints: u64,
}

pub struct Cluster {
    cfg: ClusterConfig,
    store: MetaStore,
    jobs: Mutex<BTreeMap<String, Arc<ClusterJob>>>,
    workers: Mutex<HashMap<String, WorkerEntry>>,
    /// Workers declared dead.
    workers_lost: std::sync::atomic::AtomicU64,
    work: Arc<Notify>,
    leading: AtomicBool,
    leadership: std::sync::OnceLock<store::Leadership>,
    /// Jobs that ended under an earlier leader: their last status.
    archived: Mutex<BTreeMap<String, pb::JobStatus>>,
    /// Queries running at once (gRPC and HTTP share them).
    query_slots: Arc<tokio::sync::Semaphore>,
}

/// Queries running at once on a coordinator; more wait for a slot.
pub const QUERY_SLOTS: usize = 4;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

/// The in-process transport of the worker protocol (the gRPC service calls
/// the same methods): only the leader answers.
#[async_trait::async_trait]
impl CoordinatorApi for Cluster {
    async fn register(&self, req: Registration) -> Result<Admission> {
        self.check_leading()?;
        if req.worker_id.is_empty() {
            return Err(invalid("worker_id is required"));
        }
        Ok(self.admit(&req.worker_id, req.leased))
    }

    async fn poll(&self, req: PollRequest) -> Result<PollResponse> {
        self.check_leading()?;
        Ok(self.poll_shards(req).await)
    }

    async fn publish_checkpoint(&self, cp: Checkpoint) -> Result<CheckpointAck> {
        self.check_leading()?;
        self.publish(cp).await
    }

    async fn end_job(&self, ended: JobEnded) -> Result<()> {
        self.check_leading()?;
        self.job_ended_by(ended);
        Ok(())
    }
}

impl Cluster {
    pub async fn new(cfg: ClusterConfig) -> Result<Arc<Self>> {
        let store = MetaStore::connect(&cfg.etcd, &cfg.etcd_prefix).await?;
        Ok(Arc::new(Self {
            cfg,
            store,
            jobs: Mutex::default(),
            workers: Mutex::default(),
            workers_lost: Default::default(),
            work: Arc::new(Notify::new()),
            leading: AtomicBool::new(false),
            leadership: std::sync::OnceLock::new(),
            archived: Mutex::default(),
            query_slots: Arc::new(tokio::sync::Semaphore::new(QUERY_SLOTS)),
        }))
    }

    /// A slot to run a query in, waiting until `deadline` at most.
    pub async fn query_slot(&self, deadline: tokio::time::Instant) -> Result<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout_at(deadline, self.query_slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy(format!("{QUERY_SLOTS} queries are running; try again later")))?
            .map_err(|_| Error::Busy("shutting down".into()))
    }

    /// Where tables named in SQL live: workspaces under the storage root.
    pub fn catalog(&self) -> Result<sluice_common::sql::Catalog> {
        let root = self.cfg.storage_root.as_deref().ok_or_else(|| {
            invalid("this coordinator has no --storage-uri: start it with one to name tables in SQL")
        })?;
        sluice_common::sql::Catalog::new(root, HashMap::new())
    }

    /// Run one SQL statement (HTTP and gRPC `Execute`), in a query slot.
    pub async fn execute_sql(
        &self,
        workspace: Option<&str>,
        request: sluice_common::sql::Request,
        idempotency_key: Option<String>,
    ) -> Result<sluice_common::sql::Response> {
        let catalog = self.catalog()?;
        let _slot = self.query_slot(tokio::time::Instant::now() + sluice_common::sql::MAX_TIMEOUT).await?;
        sluice_common::sql::execute(&catalog, workspace, request, idempotency_key.filter(|k| !k.is_empty())).await
    }

    /// Is this bearer token one of the configured ones (or is there no authentication)?
    pub fn authorized(&self, token: Option<&str>) -> bool {
        if self.cfg.tokens.0.is_empty() {
            return true;
        }
        let Some(token) = token else { return false };
        // Compare every token in full, so timing says nothing about near misses.
        self.cfg.tokens.0.iter().fold(false, |ok, t| {
            let same = t.len() == token.len() && t.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            ok | same
        })
    }

    /// Must workers present a client certificate?
    pub fn requires_worker_certs(&self) -> bool {
        self.cfg.tls.ca.is_some()
    }

    pub fn tls(&self) -> &sluice_common::tls::TlsFiles {
        &self.cfg.tls
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Unavailable unless this coordinator leads.
    pub fn check_leading(&self) -> Result<()> {
        match self.is_leader() {
            true => Ok(()),
            false => Err(Error::Unavailable("this coordinator is a standby; the leader serves the API".into())),
        }
    }

    /// Wait for leadership, resume the jobs the store says are running, and
    /// watch workers' liveness from then on.
    pub async fn lead(self: &Arc<Self>) -> Result<()> {
        if let Some(leadership) = self.store.lead(&self.cfg.advertise, self.cfg.lease_ttl).await? {
            let _ = self.leadership.set(leadership);
        }
        let records = self.store.load_jobs().await?;
        let resume: Vec<_> = records
            .into_iter()
            .filter_map(|record| {
                let status = record.status?;
                let running = matches!(pb::JobState::try_from(status.state), Ok(pb::JobState::Running | pb::JobState::Planning));
                if !running {
                    self.archived.lock().insert(status.job_id.clone(), status);
                    return None;
                }
                Some((record.spec?, status.takeovers + 1))
            })
            .collect();
        if !resume.is_empty() {
            // The previous leader may still be finishing one commit it began
            // before its lease ran out (it checks leadership before each
            // commit, then exits when its lease is gone). Let it land before
            // the table is read for what is already done.
            tracing::info!(jobs = resume.len(), grace = ?self.cfg.lease_ttl, "taking over running jobs");
            tokio::time::sleep(self.cfg.lease_ttl).await;
        }
        for (spec, takeovers) in resume {
            let id = spec.job_id.clone();
            match self.start(spec, takeovers).await {
                Ok(_) => tracing::info!(job_id = %id, "resumed a running job after taking over"),
                Err(e) => tracing::error!(job_id = %id, error = %e, "cannot resume job"),
            }
        }
        self.leading.store(true, Ordering::SeqCst);
        metrics::gauge!("sluice_leader").set(1.0);
        let me = self.clone();
        tokio::spawn(async move { me.watch_workers().await });
        if let Some(lost) = self.leadership_lost() {
            // Stop answering as the leader at once; `serve` then ends.
            let me = self.clone();
            tokio::spawn(async move {
                lost.cancelled().await;
                me.leading.store(false, Ordering::SeqCst);
                metrics::gauge!("sluice_leader").set(0.0);
            });
        }
        Ok(())
    }

    /// Cancelled when this coordinator's leadership lease is lost (`None`
    /// while it does not lead through etcd).
    pub fn leadership_lost(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.leadership.get().map(|l| l.lost().clone())
    }

    /// Validate a job spec into what the job runner needs.
    fn plan(&self, spec: &pb::JobSpec) -> Result<JobPlan> {
        let table = spec.table.as_ref().filter(|t| !t.uri.trim().is_empty()).ok_or_else(|| invalid("spec.table.uri is required"))?;
        let location = self.table_location(&table.uri, table.storage_options.clone())?;
        let settings = Settings::try_from(&spec.settings.clone().unwrap_or_default())?;
        // Sources: absolute local paths (shared by coordinator and
        // workers) or object-store URIs.
        let source = |uri: &str| -> Result<String> {
            if sluice_common::sources::is_remote(uri) {
                sluice_common::sources::open(uri)?;
                return Ok(uri.to_string());
            }
            let path = uri.strip_prefix("file://").unwrap_or(uri);
            if !path.starts_with('/') {
                return Err(invalid(format!("{uri}: source paths must be absolute (or object-store URIs)")));
            }
            if self.cfg.allowed_roots.is_empty() {
                return Err(invalid(format!(
                    "{uri}: local sources are not allowed on this coordinator (start it with --allowed-root DIR)"
                )));
            }
            // Existing paths must resolve below a root; globs are checked file by file.
            let glob = path.contains(['*', '?', '[']);
            if !glob && std::path::Path::new(path).exists() && !crate::manifest::within_roots(path.as_ref(), &self.cfg.allowed_roots) {
                return Err(invalid(format!("{uri}: outside the allowed roots")));
            }
            Ok(path.to_string())
        };
        use pb::manifest::Source;
        let inputs = match spec.manifest.as_ref().and_then(|m| m.source.as_ref()) {
            None => return Err(invalid("spec.manifest is required: inline, prefix or manifest_uri")),
            Some(Source::Inline(list)) => {
                if list.uris.is_empty() && list.files.is_empty() {
                    return Err(invalid("spec.manifest.inline has no uris and no files"));
                }
                let mut paths: Vec<String> = list.uris.iter().map(|u| source(u)).collect::<Result<_>>()?;
                let mut attributes = Vec::new();
                if !list.files.is_empty() {
                    attributes = vec![String::new(); paths.len()];
                    for f in &list.files {
                        paths.push(source(&f.uri)?);
                        let values = f.attributes.clone().map(sluice_common::insert::struct_to_json).unwrap_or_default();
                        attributes.push(if values.is_empty() { String::new() } else { serde_json::Value::Object(values).to_string() });
                    }
                }
                Inputs { paths, attributes, listed: true, ..Default::default() }
            }
            Some(Source::Prefix(p)) => {
                let p = source(p)?;
                let p = if sluice_common::sources::is_remote(&p) && !p.ends_with('/') { format!("{p}/") } else { p };
                Inputs { paths: vec![p], ..Default::default() }
            }
            Some(Source::ManifestUri(m)) => match source(m)? {
                m if sluice_common::sources::is_remote(&m) => Inputs { remote_manifest: Some(m), ..Default::default() },
                m => Inputs { manifest: Some(m.into()), ..Default::default() },
            },
        };
        let mut inputs = inputs;
        inputs.allowed_roots = Some(self.cfg.allowed_roots.clone());
        crate::manifest::validate(&inputs)?;
        let columns: Vec<_> = spec.columns.iter().cloned().map(Into::into).collect();
        sluice_common::attributes::fields(&columns)?;
        let mut job = JobPlan::new(location, inputs, settings);
        job.columns = columns;
        job.max_errors = spec.max_errors;
        if spec.shard_files > 0 {
            job.shard_files = spec.shard_files as usize;
        }
        if spec.shard_bytes > 0 {
            job.shard_bytes = spec.shard_bytes;
        }
        Ok(job)
    }

    /// A job's table: a URI, an absolute path, or a name under the storage root.
    pub fn table_uri(&self, given: &str) -> Result<String> {
        if given.contains("://") || given.starts_with('/') {
            return Ok(given.to_string());
        }
        let simple = given.split('/').all(|part| {
            !part.is_empty() && part != ".." && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
        match &self.cfg.storage_root {
            Some(root) if simple => Ok(format!("{}/{given}", root.trim_end_matches('/'))),
            Some(_) => Err(invalid(format!("table name {given} may only hold letters, digits, '-', '_', '.' and '/'"))),
            None => Err(invalid(format!(
                "table {given} must be an absolute path or a URI (s3://, file://); names need the coordinator's --storage-uri"
            ))),
        }
    }

    /// The location of a table a request names, with `options` completed
    /// from this process's environment.
    pub fn table_location(&self, given: &str, mut options: HashMap<String, String>) -> Result<TableLocation> {
        let uri = self.table_uri(given)?;
        complete_options(&uri, &mut options);
        TableLocation::new(&uri, options)
    }

    /// Where tables given by name live, if configured.
    pub fn storage_root(&self) -> Result<Option<TableLocation>> {
        let Some(root) = &self.cfg.storage_root else { return Ok(None) };
        let mut options = std::collections::HashMap::new();
        complete_options(root, &mut options);
        Ok(Some(TableLocation::new(root, options)?))
    }

    /// Accept a job and start it.
    pub async fn submit(self: &Arc<Self>, mut spec: pb::JobSpec) -> Result<String> {
        if spec.job_id.is_empty() {
            spec.job_id = ids::new_job_id();
        } else if spec.job_id.len() > 128 || !spec.job_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(invalid("job_id may only hold letters, digits, '-', '_' and '.' (128 at most)"));
        }
        if self.jobs.lock().get(&spec.job_id).is_some_and(|j| j.is_running()) {
            return Err(invalid(format!("job {} is already running", spec.job_id)));
        }
        let job = self.start(spec, 0).await?;
        metrics::counter!("sluice_jobs_submitted_total").increment(1);
        Ok(job.id.clone())
    }

    /// Start a job; `takeovers`: how many leaders took it over before.
    async fn start(self: &Arc<Self>, mut spec: pb::JobSpec, takeovers: u32) -> Result<Arc<ClusterJob>> {
        let mut def = self.plan(&spec)?;
        def.job_id = Some(spec.job_id.clone());
        if let Some(table) = spec.table.as_mut() {
            table.uri = def.table.uri.clone();
        }
        Ok(self.launch(def, spec, takeovers).await)
    }

    /// Run a job planned in this process (`sluice ingest`): no spec to
    /// check, its inputs are this machine's.
    pub async fn run(self: &Arc<Self>, mut plan: JobPlan) -> Arc<ClusterJob> {
        let job_id = plan.job_id.get_or_insert_with(ids::new_job_id).clone();
        let table = pb::TableRef { uri: plan.table.uri.clone(), storage_options: plan.table.storage_options.clone() };
        let spec = pb::JobSpec { job_id, table: Some(table), ..Default::default() };
        self.launch(plan, spec, 0).await
    }

    async fn launch(self: &Arc<Self>, def: JobPlan, spec: pb::JobSpec, takeovers: u32) -> Arc<ClusterJob> {
        let (table, settings) = (def.table.clone(), def.settings.clone());
        let mut job = ClusterJob::new(spec.job_id.clone(), spec, table, settings, self.work.clone());
        job.takeovers = takeovers;
        let job = Arc::new(job);
        self.jobs.lock().insert(job.id.clone(), job.clone());
        self.save(&job).await;
        let sampled = job.clone();
        tokio::spawn(async move {
            while sampled.is_running() {
                sampled.sample();
                tokio::time::sleep(watch::SAMPLE_EVERY).await;
            }
        });
        let (me, runner) = (self.clone(), job.clone());
        tokio::spawn(async move {
            let guard = {
                let me = me.clone();
                Arc::new(move || {
                    let me = me.clone();
                    Box::pin(async move {
                        match me.leadership.get() {
                            Some(l) if !me.store.still_leading(l).await => {
                                Err(Error::Unavailable("this coordinator no longer leads; not committing".into()))
                            }
                            _ => Ok(()),
                        }
                    }) as futures::future::BoxFuture<'static, Result<()>>
                }) as crate::reconciler::CommitGuard
            };
            let result = crate::job::run_job(&def, runner.clone(), guard).await;
            let (state, message) = match &result {
                Ok(summary) if runner.is_cancelled() => (pb::JobState::Cancelled, format!("cancelled; {} files ingested", summary.files_ingested)),
                Ok(summary) => {
                    let state = match summary.status {
                        JobStatus::Succeeded => pb::JobState::Succeeded,
                        JobStatus::CompletedWithErrors => pb::JobState::CompletedWithErrors,
                        JobStatus::Aborted => pb::JobState::Aborted,
                    };
                    let message = summary.abort_reason.clone().unwrap_or_else(|| {
                        format!("{} files ingested, {} failed, {} skipped", summary.files_ingested, summary.files_failed, summary.files_skipped)
                    });
                    (state, message)
                }
                Err(e) => (pb::JobState::Failed, e.to_string()),
            };
            tracing::info!(job_id = %runner.id, state = ?state, %message, "job ended");
            runner.set_done(state, message, result);
            me.save(&runner).await;
        });
        job
    }

    async fn save(&self, job: &ClusterJob) {
        // Storage options may hold credentials: they are not stored. A job
        // resumed by another leader uses that leader's environment.
        let mut spec = job.spec.clone();
        if let Some(table) = spec.table.as_mut() {
            table.storage_options.clear();
        }
        let record = pb::JobRecord { spec: Some(spec), status: Some(self.status_of(job)) };
        if let Err(e) = self.store.save_job(&record).await {
            tracing::warn!(job_id = %job.id, error = %e, "cannot save the job record");
        }
    }

    pub fn job(&self, id: &str) -> Option<Arc<ClusterJob>> {
        self.jobs.lock().get(id).cloned()
    }

    pub fn jobs(&self) -> Vec<Arc<ClusterJob>> {
        self.jobs.lock().values().cloned().collect()
    }

    /// Status of a job that ended under an earlier leader.
    pub fn archived(&self, id: &str) -> Option<pb::JobStatus> {
        self.archived.lock().get(id).cloned()
    }

    /// Every job's status: those run here, then those archived.
    pub fn statuses(&self) -> Vec<pb::JobStatus> {
        let mut out: Vec<pb::JobStatus> = self.jobs().iter().map(|j| self.status_of(j)).collect();
        let archived = self.archived.lock();
        out.extend(archived.values().filter(|s| !out.iter().any(|o| o.job_id == s.job_id)).cloned().collect::<Vec<_>>());
        out
    }

    pub fn status_of(&self, job: &ClusterJob) -> pb::JobStatus {
        let p = &job.progress;
        let get = crate::progress::JobProgress::get;
        let (state, message) = match job.phase() {
            Phase::Running if job.is_cancelled() => (pb::JobState::Running, "cancelling".to_string()),
            Phase::Running if !p.planning_done.load(Ordering::Relaxed) => (pb::JobState::Planning, String::new()),
            Phase::Running => (pb::JobState::Running, String::new()),
            Phase::Done { state, message } => (state, message),
        };
        let (shards_total, shards_done) = job.shard_counts();
        pb::JobStatus {
            job_id: job.id.clone(),
            state: state as i32,
            progress: Some(pb::JobProgress {
                files_planned: get(&p.files_planned),
                files_total: p.files_total(),
                files_skipped: get(&p.files_skipped),
                files_done: get(&p.files_done),
                files_failed: get(&p.files_failed),
                rows: get(&p.rows_committed),
                bytes: get(&p.bytes),
                table_version: p.version.load(Ordering::Relaxed),
                planning_done: p.planning_done.load(Ordering::Relaxed),
                commits: get(&p.commits),
                shards_total,
                shards_done,
                workers: self.workers.lock().len() as u32,
            }),
            message,
            table_uri: job.spec.table.as_ref().map(|t| t.uri.clone()).unwrap_or_default(),
            submitted_ms: job.submitted.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            seconds: job.elapsed().as_secs_f64(),
            takeovers: job.takeovers,
        }
    }

    fn admit(&self, worker_id: &str, leased: bool) -> Admission {
        let entry = WorkerEntry {
            registered: Instant::now(),
            registered_at: std::time::SystemTime::now(),
            last_seen: Instant::now(),
            leased,
            shards_taken: 0,
            checkpoints: 0,
        };
        self.workers.lock().insert(worker_id.to_string(), entry);
        tracing::info!(%worker_id, "worker registered");
        metrics::gauge!("sluice_workers").set(self.workers.lock().len() as f64);
        Admission { heartbeat: self.cfg.heartbeat, timeout: self.cfg.worker_timeout }
    }

    /// Heartbeat and work request. Waits up to one heartbeat for work.
    async fn poll_shards(&self, req: PollRequest) -> PollResponse {
        let known = self.touch(&req.worker_id);
        if !known {
            return PollResponse::reregister();
        }
        let deadline = tokio::time::Instant::now() + self.cfg.heartbeat;
        loop {
            // Register interest before looking, so no wake-up is missed.
            let notified = self.work.notified();
            let jobs = self.jobs();
            let stop_jobs = jobs.iter().filter(|j| j.stopping()).map(|j| j.id.clone()).collect();
            let mut assignments = Vec::new();
            let mut free = req.free_slots as usize;
            for job in jobs.iter().filter(|j| !j.stopping()) {
                if free == 0 {
                    break;
                }
                let got = job.take_shards(&req.worker_id, free);
                free -= got.len();
                assignments.extend(got);
            }
            if !assignments.is_empty() {
                if let Some(w) = self.workers.lock().get_mut(&req.worker_id) {
                    w.shards_taken += assignments.len() as u64;
                }
            }
            if !assignments.is_empty() || req.free_slots == 0 || tokio::time::Instant::now() >= deadline {
                return PollResponse { assignments, stop_jobs, reregister: false };
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
            if !self.touch(&req.worker_id) {
                return PollResponse::reregister();
            }
        }
    }

    /// The workers this coordinator knows, by id.
    pub fn workers(&self) -> pb::ListWorkersResponse {
        let jobs = self.jobs();
        let mut workers: Vec<pb::WorkerInfo> = self
            .workers
            .lock()
            .iter()
            .map(|(id, w)| pb::WorkerInfo {
                worker_id: id.clone(),
                registered_ms: w.registered_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
                seconds_since_seen: w.last_seen.elapsed().as_secs_f64(),
                leased: w.leased,
                shards_held: 0,
                shards_taken: w.shards_taken,
                checkpoints: w.checkpoints,
            })
            .collect();
        for w in &mut workers {
            w.shards_held = jobs.iter().map(|j| j.shards_held_by(&w.worker_id)).sum();
        }
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        pb::ListWorkersResponse { workers, workers_lost: self.workers_lost.load(Ordering::Relaxed) }
    }

    /// The workers that took part in `job`, with their share of it.
    pub fn job_workers(&self, job: &ClusterJob) -> Vec<watch::WorkerView> {
        let seen: HashMap<String, f64> =
            self.workers.lock().iter().map(|(id, w)| (id.clone(), w.last_seen.elapsed().as_secs_f64())).collect();
        job.watch.workers(job.is_running(), |id| job.shards_held_by(id), |id| seen.get(id).copied())
    }

    /// Note that a worker is alive; false if it is not (or no longer) known.
    fn touch(&self, worker_id: &str) -> bool {
        match self.workers.lock().get_mut(worker_id) {
            Some(w) => {
                w.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    async fn publish(&self, cp: Checkpoint) -> Result<CheckpointAck> {
        let refuse = |reason: String| Ok(CheckpointAck::refused(reason));
        if !self.touch(&cp.worker_id) {
            return refuse(format!("worker {} is not registered (declared dead?)", cp.worker_id));
        }
        let Some(job) = self.job(&cp.job_id) else { return refuse(format!("unknown job {}", cp.job_id)) };
        if !job.is_running() {
            // Not a fault of the worker: it drops the job at its next poll.
            return Ok(CheckpointAck { accepted: false, reason: format!("job {} has ended", cp.job_id), stop: false });
        }
        if let Err(reason) = job.check_generations(&cp) {
            return refuse(reason);
        }
        let ack = job.publish(cp.clone()).await?;
        if ack.accepted {
            job.absorbed(&cp);
            if let Some(w) = self.workers.lock().get_mut(&cp.worker_id) {
                w.checkpoints += 1;
            }
        }
        Ok(ack)
    }

    /// A worker is done with a job: stopped and flushed, or failed.
    fn job_ended_by(&self, ended: JobEnded) {
        if !self.touch(&ended.worker_id) {
            // Fenced: whatever it says no longer counts.
            return;
        }
        let Some(job) = self.job(&ended.job_id).filter(|j| j.is_running()) else { return };
        match ended.error {
            None => job.worker_ended(&ended.worker_id),
            Some(error) => {
                tracing::error!(job_id = %job.id, worker_id = %ended.worker_id, %error, "a worker's pipeline failed; stopping the job");
                job.fail(format!("worker {}: {error}", ended.worker_id));
            }
        }
    }

    /// Declare workers dead when they stop polling (or, with etcd, when
    /// their membership lease is gone), and requeue their shards.
    async fn watch_workers(self: Arc<Self>) {
        let tick = (self.cfg.worker_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            tokio::time::sleep(tick).await;
            let members = match &self.store {
                MetaStore::Etcd { client, prefix } => store::members(client, prefix).await.ok(),
                MetaStore::Memory => None,
            };
            let dead: Vec<String> = {
                let mut workers = self.workers.lock();
                let dead: Vec<String> = workers
                    .iter()
                    .filter(|(id, w)| {
                        w.last_seen.elapsed() > self.cfg.worker_timeout
                            // Its etcd membership lease expired (workers
                            // register there before they register here).
                            || (w.leased
                                && members.as_ref().is_some_and(|m| !m.contains(id) && w.registered.elapsed() > self.cfg.worker_timeout))
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &dead {
                    workers.remove(id);
                }
                dead
            };
            if !dead.is_empty() {
                metrics::gauge!("sluice_workers").set(self.workers.lock().len() as f64);
            }
            for worker_id in dead {
                tracing::warn!(%worker_id, "worker declared dead");
                self.workers_lost.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sluice_workers_lost_total").increment(1);
                for job in self.jobs() {
                    job.worker_lost(&worker_id).await;
                }
            }
        }
    }
}
