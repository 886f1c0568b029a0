//! A worker's sessions with the coordinator, over either transport of the
//! worker protocol ([`CoordinatorApi`]): the coordinator in this process
//! (`sluice ingest`) or one reached over gRPC, directly or through etcd.
//!
//! A session registers under a fresh id, polls for shards (the poll is its
//! heartbeat), runs them through the job's pipeline and publishes checkpoints.
//! Each registration is an incarnation: when the coordinator no longer knows
//! this worker (it was declared dead, or a new leader took over) or refuses
//! its checkpoints, the worker drops every job it holds and registers again
//! under a new id. Whatever it had not yet had committed is redone from the
//! coordinator's side, and its old checkpoints are refused (fencing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_common::protocol::{Admission, Checkpoint, CheckpointAck, CoordinatorApi, JobEnded, PollRequest, PollResponse, Registration, ShardAssignment};
use sluice_common::storage::StorageLimiter;
use sluice_common::{pb, Error, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::actors::PipelineStats;
use crate::Worker;
use pb::coordinator_service_client::CoordinatorServiceClient;

/// What a worker is, whichever way it reaches the coordinator.
#[derive(Debug, Clone, Default)]
pub struct WorkerConfig {
    /// Name prefix of this worker's ids.
    pub name: String,
    /// Run media decoders in child processes of these executables.
    pub normalizer_exe: Option<crate::isolation::Normalizers>,
    /// Set while registered with a coordinator (readiness).
    pub ready: Arc<AtomicBool>,
    /// Share this storage limiter with the rest of the process.
    pub limiter: Option<StorageLimiter>,
    /// Observations across sessions.
    pub stats: Arc<PipelineStats>,
}

/// How a worker reaches the coordinator.
#[derive(Clone)]
pub enum Transport {
    /// The coordinator in this process: the protocol's calls are calls.
    InProcess(Arc<dyn CoordinatorApi>),
    /// A coordinator over gRPC.
    Grpc(GrpcTarget),
}

/// Where the leading coordinator is, and how to talk to it.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    /// Coordinator address (`http://host:port`); used when no etcd is given,
    /// or when etcd names no leader.
    pub coordinator: Option<String>,
    pub etcd: Vec<String>,
    pub etcd_prefix: String,
    /// Membership lease TTL in etcd.
    pub lease_ttl: Duration,
    /// TLS to the coordinator (`https://` addresses): the CA to trust, and
    /// this worker's certificate for mutual TLS.
    pub tls: sluice_common::tls::TlsFiles,
}

/// The worker protocol over gRPC.
struct GrpcCoordinator {
    client: CoordinatorServiceClient<Channel>,
    /// Longest a poll may take (the coordinator holds it up to a heartbeat).
    poll_timeout: Duration,
}

fn transport_err(what: &str, s: tonic::Status) -> Error {
    let message = format!("{what}: {}", s.message());
    match s.code() {
        tonic::Code::InvalidArgument => Error::InvalidInput(message),
        tonic::Code::Internal | tonic::Code::Unknown => Error::Internal(message),
        _ => Error::Unavailable(message),
    }
}

/// A call that failed on the way (the coordinator is away or slow) and is
/// worth repeating: the protocol's writes are idempotent.
fn transient(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
}

#[async_trait]
impl CoordinatorApi for GrpcCoordinator {
    async fn register(&self, req: Registration) -> Result<Admission> {
        let req = pb::RegisterWorkerRequest::from(req);
        let resp = self.client.clone().register_worker(req).await.map_err(|s| transport_err("registering", s))?;
        Ok(resp.into_inner().into())
    }

    async fn poll(&self, req: PollRequest) -> Result<PollResponse> {
        let mut request = tonic::Request::new(pb::PollRequest::from(req));
        request.set_timeout(self.poll_timeout);
        let resp = self.client.clone().poll(request).await.map_err(|s| transport_err("polling", s))?;
        resp.into_inner().try_into()
    }

    async fn publish_checkpoint(&self, cp: Checkpoint) -> Result<CheckpointAck> {
        // Retry transport errors for a while: the checkpoint is idempotent
        // (the coordinator takes each sequence number once).
        use backon::Retryable;
        let cp = pb::Checkpoint::from(cp);
        let published = (|| {
            let (mut client, cp) = (self.client.clone(), cp.clone());
            async move { client.publish_checkpoint(cp).await }
        })
        .retry(sluice_common::retry::peer())
        .when(transient)
        .notify(|s, after| tracing::warn!(seq = cp.seq, error = %s.message(), ?after, "publishing a checkpoint; retrying"))
        .await;
        published.map(|r| r.into_inner().into()).map_err(|s| transport_err(&format!("publishing checkpoint {}", cp.seq), s))
    }

    async fn end_job(&self, ended: JobEnded) -> Result<()> {
        use backon::Retryable;
        let ended = pb::JobEnded::from(ended);
        (|| {
            let (mut client, ended) = (self.client.clone(), ended.clone());
            async move { client.end_job(ended).await }
        })
        .retry(sluice_common::retry::peer())
        .when(transient)
        .await
        .map(|_| ())
        .map_err(|s| transport_err("reporting a job's end", s))
    }
}

/// Run sessions until `shutdown` is cancelled.
pub async fn run_worker(cfg: WorkerConfig, transport: Transport, shutdown: CancellationToken) -> Result<()> {
    let etcd = match &transport {
        Transport::Grpc(t) if !t.etcd.is_empty() => Some(sluice_common::meta::connect(&t.etcd).await?),
        _ => None,
    };
    loop {
        let session = shutdown.child_token();
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = incarnation(&cfg, &transport, etcd.as_ref(), session.clone()) => r,
        };
        session.cancel();
        if let Err(e) = result {
            tracing::warn!(error = %e, "worker session ended; registering again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn coordinator_address(t: &GrpcTarget, etcd: Option<&sluice_common::meta::Client>) -> Result<String> {
    if let Some(client) = etcd {
        if let Some(addr) = sluice_common::meta::leader_address(client, &t.etcd_prefix).await? {
            return Ok(if addr.contains("://") { addr } else { format!("http://{addr}") });
        }
    }
    t.coordinator.clone().ok_or_else(|| Error::Unavailable("no leading coordinator yet".into()))
}

/// One registration: poll, feed shards, until the coordinator forgets us,
/// refuses our checkpoints, or cannot be reached for longer than the timeout.
async fn incarnation(
    cfg: &WorkerConfig,
    transport: &Transport,
    etcd: Option<&sluice_common::meta::Client>,
    session: CancellationToken,
) -> Result<()> {
    let worker_id = format!("{}-{}", cfg.name, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Cancelled if the etcd membership lease is lost (the coordinator then
    // declares this incarnation dead).
    let mut membership_lost = CancellationToken::new();
    let (api, addr): (Arc<dyn CoordinatorApi>, String) = match transport {
        Transport::InProcess(api) => (api.clone(), "this process".into()),
        Transport::Grpc(t) => {
            let addr = coordinator_address(t, etcd).await?;
            let channel = t.tls.endpoint(&addr)?.connect_timeout(Duration::from_secs(3)).connect_lazy();
            let client = CoordinatorServiceClient::new(channel).max_decoding_message_size(64 << 20);
            if let Some(etcd) = etcd {
                membership_lost = crate::membership::register(etcd, &t.etcd_prefix, &worker_id, &addr, t.lease_ttl, session.clone()).await?;
            }
            (Arc::new(GrpcCoordinator { client, poll_timeout: Duration::from_secs(10) }), addr)
        }
    };
    let reg = api
        .register(Registration { worker_id: worker_id.clone(), leased: etcd.is_some() })
        .await?;
    let Admission { heartbeat, timeout } = reg;
    tracing::info!(%worker_id, coordinator = %addr, "registered");
    cfg.ready.store(true, Ordering::SeqCst);

    let fenced = CancellationToken::new();
    let worker = Worker::new(worker_id.clone(), api.clone(), session.clone(), fenced.clone())
        .with_normalizer_processes(cfg.normalizer_exe.clone())
        .with_storage_limiter(cfg.limiter.clone())
        .with_stats(cfg.stats.clone());
    let worker = Arc::new(worker);

    // Shards are fed one at a time: `assign_shard` returns once the shard's
    // files are all queued, so the next poll asks for more only then.
    let (feed, mut shards) = mpsc::channel::<ShardAssignment>(1);
    let feeder = {
        let worker = worker.clone();
        tokio::spawn(async move {
            while let Some(a) = shards.recv().await {
                let (job_id, shard_id) = (a.job_id.clone(), a.shard_id.clone());
                match worker.assign_shard(a).await {
                    Ok(Some(reason)) => tracing::warn!(%job_id, %shard_id, %reason, "shard not taken"),
                    Ok(None) => {}
                    Err(e) => tracing::error!(%job_id, %shard_id, error = %e, "shard failed to start"),
                }
            }
        })
    };

    let mut last_ok = tokio::time::Instant::now();
    let result = loop {
        if fenced.is_cancelled() {
            break Err(Error::Unavailable("the coordinator refused a checkpoint of this worker".into()));
        }
        if session.is_cancelled() {
            break Ok(());
        }
        if membership_lost.is_cancelled() {
            break Err(Error::Unavailable("the etcd membership lease was lost".into()));
        }
        let free_slots = u32::from(feed.capacity() > 0);
        let req = PollRequest { worker_id: worker_id.clone(), free_slots };
        let polled = tokio::select! {
            r = tokio::time::timeout(heartbeat * 3 + Duration::from_secs(2), api.poll(req)) => {
                r.unwrap_or_else(|_| Err(Error::Timeout("poll".into())))
            }
            _ = session.cancelled() => continue,
            _ = fenced.cancelled() => continue,
            _ = membership_lost.cancelled() => continue,
        };
        match polled {
            Ok(resp) => {
                last_ok = tokio::time::Instant::now();
                if resp.reregister {
                    break Err(Error::Unavailable("the coordinator no longer knows this worker".into()));
                }
                // Stopped jobs finish the files in flight, publish them and
                // say so; ended ones have nothing left.
                let running = worker.job_ids().await;
                for job_id in resp.stop_jobs.into_iter().filter(|j| running.contains(j)) {
                    tracing::info!(%job_id, "job stopped");
                    let worker = worker.clone();
                    tokio::spawn(async move { worker.stop_job(&job_id).await });
                }
                for a in resp.assignments {
                    if feed.send(a).await.is_err() {
                        break;
                    }
                }
                if free_slots == 0 {
                    // Poll again when the feeder takes the waiting shard (so
                    // the next one is there before this one is fed), or to
                    // keep the heartbeat.
                    tokio::select! {
                        _ = tokio::time::sleep(heartbeat) => {}
                        _ = feed.reserve() => {}
                        _ = session.cancelled() => {}
                        _ = fenced.cancelled() => {}
                    }
                }
            }
            Err(e) => {
                if last_ok.elapsed() > timeout {
                    break Err(Error::Unavailable(format!("coordinator unreachable: {e}")));
                }
                tokio::time::sleep(heartbeat.min(Duration::from_millis(500))).await;
            }
        }
    };
    cfg.ready.store(false, Ordering::SeqCst);
    session.cancel();
    feeder.abort();
    for job_id in worker.job_ids().await {
        worker.abandon_job(&job_id).await;
    }
    result
}
