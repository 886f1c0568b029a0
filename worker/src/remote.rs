//! A worker process in a cluster: finds the leading coordinator (directly or
//! through etcd), registers under a fresh id, polls for shards (the poll is
//! its heartbeat), runs them through the same pipeline as embedded mode and
//! publishes checkpoints over gRPC.
//!
//! Each registration is an incarnation. When the coordinator no longer
//! knows this worker (it was declared dead, or a new leader took over), the
//! worker drops every job it holds and registers again under a new id:
//! whatever it had not yet had committed is redone from the coordinator's
//! side, and its old checkpoints are refused (fencing).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_common::link::{CoordinatorLink, WorkerLink};
use sluice_common::{pb, Error, Result};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::Worker;
use pb::coordinator_service_client::CoordinatorServiceClient;

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Coordinator address (`http://host:port`); used when no etcd is given,
    /// or when etcd names no leader.
    pub coordinator: Option<String>,
    pub etcd: Vec<String>,
    pub etcd_prefix: String,
    /// Name prefix of this worker's ids.
    pub name: String,
    /// Run media decoders in child processes of this executable.
    pub normalizer_exe: Option<PathBuf>,
    /// Membership lease TTL in etcd.
    pub lease_ttl: Duration,
    /// Set while registered with a coordinator (readiness).
    pub ready: Arc<AtomicBool>,
    /// TLS to the coordinator (`https://` addresses): the CA to trust, and
    /// this worker's certificate for mutual TLS.
    pub tls: sluice_common::tls::TlsFiles,
}

/// Checkpoints over gRPC. A checkpoint refused with `stop` ends the incarnation.
struct GrpcLink {
    client: CoordinatorServiceClient<Channel>,
    refused: Arc<AtomicBool>,
}

#[async_trait]
impl CoordinatorLink for GrpcLink {
    async fn publish_checkpoint(&self, cp: pb::Checkpoint) -> Result<pb::CheckpointAck> {
        // Retry transport errors for a while: the checkpoint is idempotent
        // (the coordinator takes each sequence number once).
        use backon::Retryable;
        let published = (|| {
            let (mut client, cp) = (self.client.clone(), cp.clone());
            async move { client.publish_checkpoint(cp).await }
        })
            .retry(sluice_common::retry::peer())
            .when(|s: &tonic::Status| matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded))
            .notify(|s, after| tracing::warn!(seq = cp.seq, error = %s.message(), ?after, "publishing a checkpoint; retrying"))
            .await;
        match published {
            Ok(ack) => {
                let ack = ack.into_inner();
                // Refused with `stop`: fenced, or the stream is broken;
                // this incarnation is over. Without: the job ended.
                if !ack.accepted && ack.stop {
                    self.refused.store(true, Ordering::SeqCst);
                }
                Ok(ack)
            }
            Err(s) => {
                self.refused.store(true, Ordering::SeqCst);
                Err(Error::Link(format!("publishing checkpoint {}: {}", cp.seq, s.message())))
            }
        }
    }
}

/// Run until `shutdown` resolves.
pub async fn run_worker(cfg: RemoteConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let etcd = if cfg.etcd.is_empty() { None } else { Some(sluice_common::meta::connect(&cfg.etcd).await?) };
    tokio::pin!(shutdown);
    loop {
        let incarnation = incarnation(&cfg, etcd.as_ref());
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = incarnation => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "worker incarnation ended; registering again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn coordinator_address(cfg: &RemoteConfig, etcd: Option<&sluice_common::meta::Client>) -> Result<String> {
    if let Some(client) = etcd {
        if let Some(addr) = sluice_common::meta::leader_address(client, &cfg.etcd_prefix).await? {
            return Ok(if addr.contains("://") { addr } else { format!("http://{addr}") });
        }
    }
    cfg.coordinator.clone().ok_or_else(|| Error::Unavailable("no leading coordinator yet".into()))
}

/// One registration: poll, feed shards, until the coordinator forgets us
/// or cannot be reached for longer than the timeout.
async fn incarnation(cfg: &RemoteConfig, etcd: Option<&sluice_common::meta::Client>) -> Result<()> {
    let addr = coordinator_address(cfg, etcd).await?;
    let channel = cfg.tls.endpoint(&addr)?.connect_timeout(Duration::from_secs(3)).connect_lazy();
    let client = CoordinatorServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let worker_id = format!("{}-{}", cfg.name, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    if let Some(etcd) = etcd {
        sluice_common::meta::register_member(etcd, &cfg.etcd_prefix, &worker_id, &addr, cfg.lease_ttl).await?;
    }
    let reg = client
        .clone()
        .register_worker(pb::RegisterWorkerRequest { worker_id: worker_id.clone(), leased: etcd.is_some(), ..Default::default() })
        .await
        .map_err(|s| Error::Link(format!("registering with {addr}: {}", s.message())))?
        .into_inner();
    let heartbeat = Duration::from_millis(u64::from(reg.heartbeat_ms.max(100)));
    let timeout = Duration::from_millis(u64::from(reg.timeout_ms.max(1000)));
    tracing::info!(%worker_id, coordinator = %addr, "registered");
    cfg.ready.store(true, Ordering::SeqCst);

    let refused = Arc::new(AtomicBool::new(false));
    let link = Arc::new(GrpcLink { client: client.clone(), refused: refused.clone() });
    let mut worker = Worker::new(worker_id.clone(), link).with_flush_when_idle();
    if let Some(exe) = &cfg.normalizer_exe {
        worker = worker.with_normalizer_processes(exe.clone());
    }
    let worker = Arc::new(worker);

    // Shards are fed one at a time: `assign_shard` returns once the shard's
    // files are all queued, so the next poll asks for more only then.
    let (feed, mut shards) = mpsc::channel::<pb::ShardAssignment>(1);
    let feeder = {
        let worker = worker.clone();
        tokio::spawn(async move {
            while let Some(a) = shards.recv().await {
                let (job_id, shard_id) = (a.job_id.clone(), a.shard_id.clone());
                match worker.assign_shard(a).await {
                    Ok(ack) if !ack.accepted => tracing::warn!(%job_id, %shard_id, reason = %ack.reason, "shard not taken"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(%job_id, %shard_id, error = %e, "shard failed to start"),
                }
            }
        })
    };

    let mut last_ok = tokio::time::Instant::now();
    let result = loop {
        if refused.load(Ordering::SeqCst) {
            break Err(Error::Link("the coordinator refused a checkpoint".into()));
        }
        let free_slots = u32::from(feed.capacity() > 0);
        let req = pb::PollRequest { worker_id: worker_id.clone(), free_slots };
        let mut request = tonic::Request::new(req);
        request.set_timeout(heartbeat * 3 + Duration::from_secs(2));
        match client.clone().poll(request).await {
            Ok(resp) => {
                last_ok = tokio::time::Instant::now();
                let resp = resp.into_inner();
                if resp.reregister {
                    break Err(Error::Link("the coordinator no longer knows this worker".into()));
                }
                // Ended jobs have nothing left here (their shards finished and
                // were flushed); cancelled ones are dropped as they stand.
                let running = worker.job_ids().await;
                for job_id in resp.stop_jobs.iter().filter(|j| running.contains(j)) {
                    tracing::info!(%job_id, "job stopped");
                    worker.abandon_job(job_id).await;
                }
                for a in resp.assignments {
                    if feed.send(a).await.is_err() {
                        break;
                    }
                }
                if free_slots == 0 {
                    tokio::time::sleep(heartbeat).await;
                }
            }
            Err(s) => {
                if last_ok.elapsed() > timeout {
                    break Err(Error::Unavailable(format!("coordinator unreachable: {}", s.message())));
                }
                tokio::time::sleep(heartbeat.min(Duration::from_millis(500))).await;
            }
        }
    };
    cfg.ready.store(false, Ordering::SeqCst);
    feeder.abort();
    for job_id in worker.job_ids().await {
        worker.abandon_job(&job_id).await;
    }
    result
}
