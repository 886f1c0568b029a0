//! Cluster roles (`sluice coordinator`, `sluice worker`) and the job client
//! (`sluice submit / status / watch / cancel / jobs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_common::pb;
use sluice_coordinator::cluster::{Cluster, ClusterConfig, Served};
use sluice_worker::session::{run_worker, GrpcTarget, Transport, WorkerConfig};

use crate::knobs::Knobs;

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on (job API, worker protocol, health, reflection)
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Address workers reach this coordinator at (default: the listen address)
    #[arg(long, env = "SLUICE_ADVERTISE")]
    pub advertise: Option<String>,
    /// etcd endpoints (leader election, job records, worker membership);
    /// without them, one coordinator runs alone with an in-memory store
    #[arg(long, env = "SLUICE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix in etcd
    #[arg(long, env = "SLUICE_ETCD_PREFIX", default_value = "/sluice")]
    pub etcd_prefix: String,
    /// Leadership lease, in seconds: a standby takes over this long after the leader dies
    #[arg(long, env = "SLUICE_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds without a poll after which a worker is declared dead
    #[arg(long, env = "SLUICE_WORKER_TIMEOUT", default_value_t = 15)]
    pub worker_timeout: u64,
    /// Worker poll interval, in milliseconds
    #[arg(long, env = "SLUICE_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Serve the HTTP API here: SQL (POST /workspaces/{ws}/tables/query),
    /// tables, jobs as JSON, and /metrics, /healthz, /readyz (ready = leading)
    #[arg(long, env = "SLUICE_HTTP_LISTEN", visible_alias = "metrics-listen")]
    pub http_listen: Option<SocketAddr>,
    /// Where tables given by name live, e.g. s3://bucket/lake
    #[arg(long, env = "SLUICE_STORAGE_URI")]
    pub storage_uri: Option<String>,
    /// Local directories jobs may read files from (repeatable). Without
    /// one, jobs may only name object-store sources.
    #[arg(long = "allowed-root", env = "SLUICE_ALLOWED_ROOTS", value_delimiter = ',')]
    pub allowed_roots: Vec<PathBuf>,
    /// File of bearer tokens (one per line) the job API accepts; without
    /// it the job API is open
    #[arg(long, env = "SLUICE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate (PEM)
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: workers must present a certificate signed by this CA (PEM)
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Check the configuration (flags and environment), print it, and exit
    #[arg(long)]
    pub check_config: bool,
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Coordinator address, e.g. http://coordinator:50051 (with etcd, the
    /// leader's address is read from etcd and this is the fallback)
    #[arg(long, env = "SLUICE_COORDINATOR")]
    pub coordinator: Option<String>,
    /// etcd endpoints (membership lease, leader discovery)
    #[arg(long, env = "SLUICE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix in etcd
    #[arg(long, env = "SLUICE_ETCD_PREFIX", default_value = "/sluice")]
    pub etcd_prefix: String,
    /// Worker name (ids are NAME-<random>); default: the host name
    #[arg(long, env = "SLUICE_WORKER_NAME")]
    pub name: Option<String>,
    /// Membership lease TTL, in seconds
    #[arg(long, env = "SLUICE_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: u64,
    /// Render PDFs and read images in this process instead of child
    /// processes (video, audio and what else needs FFmpeg still go to
    /// `sluice-normalizer-media` processes: `sluice` does not link FFmpeg)
    #[arg(long)]
    pub in_process_normalizers: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz (ready = registered) here
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: ClientTls,
    /// Check the configuration (flags and environment), print it, and exit
    #[arg(long)]
    pub check_config: bool,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Coordinator address
    #[arg(long, env = "SLUICE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// File holding the bearer token for the job API [env: SLUICE_TOKEN holds the token itself]
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// TLS toward a coordinator served over `https://`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificate (PEM) that signed the coordinator's certificate
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS
    #[arg(long = "tls-client-cert", env = "SLUICE_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// Client certificate's private key (PEM)
    #[arg(long = "tls-client-key", env = "SLUICE_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTls {
    fn files(&self) -> sluice_common::tls::TlsFiles {
        sluice_common::tls::TlsFiles { cert: self.tls_client_cert.clone(), key: self.tls_client_key.clone(), ca: self.tls_ca.clone() }
    }
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Table URI (s3://bucket/path) or absolute path, as the workers see it
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// Files or directories to ingest (absolute paths the workers can read)
    pub inputs: Vec<String>,
    /// A directory (prefix) whose files are all ingested
    #[arg(long, conflicts_with_all = ["inputs", "manifest"])]
    pub prefix: Option<String>,
    /// A file listing one path per line (`.csv` with a header or `.jsonl`:
    /// with per-file values, stored in columns of their own)
    #[arg(long, conflicts_with = "inputs")]
    pub manifest: Option<String>,
    /// Types of the per-file value columns, SQL-style ("label TEXT, score DOUBLE")
    #[arg(long)]
    pub columns: Option<String>,
    #[command(flatten)]
    pub knobs: Knobs,
    /// Abort once more than N files have failed
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// Files per shard
    #[arg(long, default_value_t = 256)]
    pub shard_files: u32,
    /// Job id (default: a new one)
    #[arg(long)]
    pub job_id: Option<String>,
    /// Watch the job until it ends (exit code as `sluice ingest`)
    #[arg(long)]
    pub watch: bool,
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub job_id: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into())
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<i32> {
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let advertise = args.advertise.clone().unwrap_or_else(|| {
        if args.listen.ip().is_unspecified() {
            format!("{scheme}://{}:{}", hostname(), args.listen.port())
        } else {
            format!("{scheme}://{}", args.listen)
        }
    });
    let cfg = ClusterConfig {
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(50)),
        worker_timeout: Duration::from_secs(args.worker_timeout.max(1)),
        etcd: args.etcd,
        etcd_prefix: args.etcd_prefix,
        lease_ttl: Duration::from_secs(args.lease_ttl.max(1)),
        advertise,
        storage_root: args.storage_uri.clone(),
        // --check-config checks flags and values, not this machine: roots and
        // the tokens file are read when the coordinator really starts.
        allowed_roots: args
            .allowed_roots
            .iter()
            .map(|r| match std::fs::canonicalize(r) {
                Ok(real) => Ok(real),
                Err(_) if args.check_config && r.is_absolute() => Ok(r.clone()),
                Err(e) => Err(anyhow::anyhow!("--allowed-root {}: {e}", r.display())),
            })
            .collect::<Result<_>>()?,
        tokens: sluice_coordinator::cluster::Tokens(match &args.auth_tokens_file {
            Some(path) if !args.check_config => read_tokens(path)?,
            _ => Vec::new(),
        }),
        tls: sluice_common::tls::TlsFiles { cert: args.tls_cert.clone(), key: args.tls_key.clone(), ca: args.tls_client_ca.clone() },
    };
    if !args.check_config {
        // Unreadable or mismatched files fail here, not at the first client.
        cfg.tls.server()?;
    }
    if let Some(root) = &cfg.storage_root {
        if !root.contains("://") && !root.starts_with('/') {
            bail!("--storage-uri {root}: give a URI (s3://bucket/lake) or an absolute path");
        }
        sluice_common::storage::TableLocation::new(root, Default::default())?;
    }
    if args.check_config {
        println!("{cfg:#?}");
        if let Some(path) = &args.auth_tokens_file {
            println!("job API tokens from {}", path.display());
        }
        return Ok(0);
    }
    let cluster = Cluster::new(cfg).await?;
    if let Some(addr) = args.http_listen {
        let leader = cluster.clone();
        let ops = crate::telemetry::ops_routes(Arc::new(move || leader.is_leader()))?;
        let routes = ops.merge(sluice_coordinator::cluster::http_router(cluster.clone())?);
        crate::telemetry::serve_router(addr, routes).await?;
    }
    match sluice_coordinator::cluster::serve(cluster, args.listen, ctrl_c()).await? {
        Served::Shutdown => Ok(0),
        // EX_TEMPFAIL: a supervisor restarts it, and it stands by.
        Served::LeadershipLost => {
            tracing::error!("lost the leadership lease; stopped so a standby can lead");
            Ok(75)
        }
    }
}

pub async fn worker(args: WorkerArgs) -> Result<i32> {
    if args.coordinator.is_none() && args.etcd.is_empty() {
        bail!("give --coordinator or --etcd (to find the leading coordinator)");
    }
    let ready = Arc::new(AtomicBool::new(false));
    let cfg = WorkerConfig {
        name: args.name.unwrap_or_else(hostname),
        normalizer_exe: Some(sluice_worker::isolation::normalizer_exe(args.in_process_normalizers)?),
        ready: ready.clone(),
        ..Default::default()
    };
    let target = GrpcTarget {
        coordinator: args.coordinator,
        etcd: args.etcd,
        etcd_prefix: args.etcd_prefix,
        lease_ttl: Duration::from_secs(args.lease_ttl.max(1)),
        tls: args.tls.files(),
    };
    if args.check_config {
        println!("{cfg:#?}\n{target:#?}");
        return Ok(0);
    }
    if let Some(addr) = args.metrics_listen {
        let r = ready.clone();
        crate::telemetry::serve(addr, Arc::new(move || r.load(Ordering::SeqCst))).await?;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        ctrl_c().await;
        stop.cancel();
    });
    run_worker(cfg, Transport::Grpc(target), shutdown).await?;
    Ok(0)
}

/// Tokens, one per line; blank lines and `#` comments are skipped.
fn read_tokens(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("tokens file {}", path.display()))?;
    let tokens: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    if tokens.is_empty() {
        bail!("tokens file {} holds no token", path.display());
    }
    Ok(tokens)
}

type JobClient = pb::job_service_client::JobServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to the coordinator and the token every call carries.
async fn connect(args: &ClientArgs) -> Result<(tonic::transport::Channel, BearerToken)> {
    let token = match (&args.token_file, std::env::var("SLUICE_TOKEN").ok()) {
        (Some(path), _) => Some(read_tokens(path)?.remove(0)),
        (None, token) => token.filter(|t| !t.is_empty()),
    };
    let header = token
        .map(|t| format!("Bearer {t}").parse().context("the token is not valid in a header"))
        .transpose()?;
    let channel = args
        .tls
        .files()
        .endpoint(&args.coordinator)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))?;
    Ok((channel, BearerToken(header)))
}

async fn client(args: &ClientArgs) -> Result<JobClient> {
    let (channel, token) = connect(args).await?;
    Ok(pb::job_service_client::JobServiceClient::with_interceptor(channel, token))
}

pub type TableClient = pb::table_service_client::TableServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// A `TableService` client (requests up to 64 MiB: large insert batches).
pub async fn table_client(args: &ClientArgs) -> Result<TableClient> {
    let (channel, token) = connect(args).await?;
    Ok(pb::table_service_client::TableServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn absolute(p: &str) -> Result<String> {
    if p.contains("://") {
        return Ok(p.to_string());
    }
    Ok(std::path::absolute(PathBuf::from(p))?.to_string_lossy().into_owned())
}

pub async fn submit(args: SubmitArgs) -> Result<i32> {
    use pb::manifest::Source;
    let source = match (&args.prefix, &args.manifest) {
        (Some(p), _) => Source::Prefix(absolute(p)?),
        (_, Some(m)) => Source::ManifestUri(absolute(m)?),
        _ => {
            if args.inputs.is_empty() {
                bail!("nothing to ingest: give paths, --prefix or --manifest");
            }
            Source::Inline(pb::InlineList { uris: args.inputs.iter().map(|p| absolute(p)).collect::<Result<_>>()?, files: Vec::new() })
        }
    };
    let spec = pb::JobSpec {
        table: Some(pb::TableRef { uri: absolute(&args.table)?, storage_options: Default::default() }),
        manifest: Some(pb::Manifest { source: Some(source) }),
        settings: Some(pb::PipelineSettings::from(&args.knobs.settings())),
        max_errors: args.max_errors,
        job_id: args.job_id.clone().unwrap_or_default(),
        shard_files: args.shard_files,
        shard_bytes: 0,
        columns: args.columns.as_deref().map(sluice_common::insert::parse_columns).transpose()?.unwrap_or_default().into_iter().map(Into::into).collect(),
    };
    let mut c = client(&args.client).await?;
    let job_id = c
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .job_id;
    println!("{job_id}");
    if args.watch {
        return watch(JobArgs { client: args.client, job_id }).await;
    }
    Ok(0)
}

fn state_name(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn line(s: &pb::JobStatus) -> String {
    let p = s.progress.unwrap_or_default();
    let takeovers = match s.takeovers {
        0 => String::new(),
        n => format!("; taken over by a new leader {n}x"),
    };
    format!(
        "{}  {:<22} files {} done, {} failed, {} skipped of {} planned; rows {}; shards {}/{}; v{}{takeovers}  {}",
        s.job_id,
        state_name(s.state),
        p.files_done,
        p.files_failed,
        p.files_skipped,
        p.files_planned,
        p.rows,
        p.shards_done,
        p.shards_total,
        p.table_version,
        s.message
    )
}

/// Exit code of a finished job, as `sluice ingest`: 0, 2 (files failed), 3 (aborted), 1.
fn exit_code(s: &pb::JobStatus) -> i32 {
    match pb::JobState::try_from(s.state) {
        Ok(pb::JobState::Succeeded) => 0,
        Ok(pb::JobState::CompletedWithErrors) => 2,
        Ok(pb::JobState::Aborted | pb::JobState::Cancelled) => 3,
        _ => 1,
    }
}

pub async fn status(args: JobArgs) -> Result<i32> {
    let s = client(&args.client)
        .await?
        .get_job(pb::GetJobRequest { job_id: args.job_id })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{}", line(&s));
    Ok(0)
}

pub async fn watch(args: JobArgs) -> Result<i32> {
    let mut stream = client(&args.client)
        .await?
        .watch_job(pb::WatchJobRequest { job_id: args.job_id })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut last = None;
    while let Some(s) = stream.message().await.map_err(|s| anyhow::anyhow!("{}", s.message()))? {
        eprintln!("{}", line(&s));
        last = Some(s);
    }
    let last = last.context("the coordinator sent no status")?;
    println!("{}", line(&last));
    Ok(exit_code(&last))
}

pub async fn cancel(args: JobArgs) -> Result<i32> {
    let s = client(&args.client)
        .await?
        .cancel_job(pb::CancelJobRequest { job_id: args.job_id })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{}", line(&s));
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON (one object: workers, workers_lost)
    #[arg(long)]
    pub json: bool,
}

pub async fn workers(args: WorkersArgs) -> Result<i32> {
    let list = client(&args.client)
        .await?
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if args.json {
        println!("{}", sluice_coordinator::cluster::workers_json(&list));
        return Ok(0);
    }
    for w in &list.workers {
        println!(
            "{}  seen {:.1}s ago  {} shards held, {} taken, {} checkpoints{}",
            w.worker_id,
            w.seconds_since_seen,
            w.shards_held,
            w.shards_taken,
            w.checkpoints,
            if w.leased { "  (etcd lease)" } else { "" }
        );
    }
    println!("{} workers; {} declared dead", list.workers.len(), list.workers_lost);
    Ok(0)
}

pub async fn jobs(args: ClientArgs) -> Result<i32> {
    let list = client(&args)
        .await?
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for s in &list.jobs {
        println!("{}", line(s));
    }
    Ok(0)
}
