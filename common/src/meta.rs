//! Cluster state that must outlive a coordinator: job records, leadership
//! and worker membership. In etcd for a cluster; in memory when one
//! coordinator runs alone (no failover then).
//!
//! Keys under the prefix (default `/sluice`):
//! - `leader`: the election; its value is the leader's advertised address.
//! - `jobs/<job id>`: a [`pb::JobRecord`] (spec and last status), small.
//! - `workers/<worker id>`: present while the worker's lease lives.

use std::time::Duration;

pub use etcd_client::Client;
use etcd_client::{GetOptions, PutOptions};
use prost::Message;
use tokio_util::sync::CancellationToken;
use crate::{pb, Error, Result};

fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd {what}: {e}"))
}

#[derive(Clone)]
pub enum MetaStore {
    Memory,
    Etcd { client: Client, prefix: String },
}

impl MetaStore {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        if endpoints.is_empty() {
            return Ok(MetaStore::Memory);
        }
        let client = connect(endpoints).await?;
        Ok(MetaStore::Etcd { client, prefix: prefix.trim_end_matches('/').to_string() })
    }

    pub async fn save_job(&self, record: &pb::JobRecord) -> Result<()> {
        let MetaStore::Etcd { client, prefix } = self else { return Ok(()) };
        let id = record.status.as_ref().map(|s| s.job_id.clone()).unwrap_or_default();
        client
            .clone()
            .put(format!("{prefix}/jobs/{id}"), record.encode_to_vec(), None)
            .await
            .map_err(|e| etcd_err("put job", e))?;
        Ok(())
    }

    pub async fn load_jobs(&self) -> Result<Vec<pb::JobRecord>> {
        let MetaStore::Etcd { client, prefix } = self else { return Ok(Vec::new()) };
        let resp = client
            .clone()
            .get(format!("{prefix}/jobs/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err("list jobs", e))?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match pb::JobRecord::decode(kv.value()) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable job record"),
            }
        }
        Ok(out)
    }

    /// Block until this process leads, then keep the lease alive in the
    /// background. [`Leadership::lost`] fires if the lease is lost: a
    /// coordinator that may no longer lead must stop (the standby takes over).
    pub async fn lead(&self, advertise: &str, ttl: Duration) -> Result<Option<Leadership>> {
        let MetaStore::Etcd { client, prefix } = self else { return Ok(None) };
        let mut client = client.clone();
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl_secs, None).await.map_err(|e| etcd_err("lease", e))?.id();
        let lost = keep_alive(client.clone(), lease, ttl, "leadership");
        tracing::info!(%advertise, "campaigning for leadership");
        let won = client
            .campaign(format!("{prefix}/leader"), advertise, lease)
            .await
            .map_err(|e| etcd_err("campaign", e))?;
        let key = won.leader().map(|k| k.key().to_vec()).unwrap_or_default();
        tracing::info!(%advertise, "leading");
        Ok(Some(Leadership { key, lease, ttl, lost }))
    }

    /// Does this process still hold `leadership`? Checked right before
    /// every table commit, so a leader whose lease ran out (while a standby
    /// takes over) does not commit.
    pub async fn still_leading(&self, leadership: &Leadership) -> bool {
        let MetaStore::Etcd { client, .. } = self else { return true };
        // etcd may be briefly away; nobody else can lead before our lease
        // runs out, so keep asking until then.
        let deadline = tokio::time::Instant::now() + leadership.ttl;
        loop {
            match client.clone().get(leadership.key.clone(), None).await {
                Ok(resp) => return resp.kvs().first().is_some_and(|kv| kv.lease() == leadership.lease),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot confirm leadership yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot confirm leadership");
                    return false;
                }
            }
        }
    }
}

/// The election key this process holds while it leads.
#[derive(Debug, Clone)]
pub struct Leadership {
    key: Vec<u8>,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
}

impl Leadership {
    /// Cancelled when the leadership lease could not be kept.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

/// Connect to etcd (the endpoints are `http://host:port`, comma-separated or repeated).
pub async fn connect(endpoints: &[String]) -> Result<Client> {
    let eps: Vec<String> =
        endpoints.iter().flat_map(|e| e.split(',')).map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    Client::connect(eps, Some(opts)).await.map_err(|e| etcd_err("connect", e))
}

/// The leading coordinator's advertised address, if there is a leader.
pub async fn leader_address(client: &Client, prefix: &str) -> Result<Option<String>> {
    let prefix = prefix.trim_end_matches('/');
    match client.clone().leader(format!("{prefix}/leader")).await {
        Ok(resp) => Ok(resp.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
        // "election: no leader" comes back as an error.
        Err(e) if e.to_string().contains("no leader") => Ok(None),
        Err(e) => Err(etcd_err("leader", e)),
    }
}

/// Register a worker under a lease; the key vanishes when the worker dies.
/// A lost membership lease needs nothing here: the worker's next poll tells
/// it to register again.
pub async fn register_member(client: &Client, prefix: &str, worker_id: &str, value: &str, ttl: Duration) -> Result<()> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl.as_secs().max(1) as i64, None).await.map_err(|e| etcd_err("lease", e))?.id();
    let key = format!("{}/workers/{worker_id}", prefix.trim_end_matches('/'));
    c.put(key, value, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| etcd_err("register", e))?;
    let _ = keep_alive(c, lease, ttl, "membership");
    Ok(())
}

/// Workers with a live membership lease.
pub async fn members(client: &Client, prefix: &str) -> Result<Vec<String>> {
    let key = format!("{}/workers/", prefix.trim_end_matches('/'));
    let resp = client
        .clone()
        .get(key.clone(), Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .map_err(|e| etcd_err("members", e))?;
    Ok(resp.kvs().iter().map(|kv| String::from_utf8_lossy(&kv.key()[key.len()..]).into_owned()).collect())
}

/// Refresh `lease` every third of its TTL. An etcd that is briefly away
/// (restarted, a blip) is retried until the lease would have expired; only
/// then is the lease lost, and the returned token cancelled.
fn keep_alive(client: Client, lease: i64, ttl: Duration, what: &'static str) -> CancellationToken {
    let lost = CancellationToken::new();
    let token = lost.clone();
    tokio::spawn(async move {
        let every = (ttl / 3).max(Duration::from_millis(100));
        let mut renewed = tokio::time::Instant::now();
        let why = loop {
            if renewed.elapsed() > ttl {
                break "could not renew it within its TTL".to_string();
            }
            match renew_once(&client, lease, every).await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => break "the lease expired".to_string(),
                Err(e) => tracing::warn!(error = %e, lease = what, "cannot renew the lease yet; retrying"),
            }
            tokio::time::sleep(every).await;
        };
        tracing::warn!(%why, lease = what, "lease lost");
        token.cancel();
    });
    lost
}

/// One keep-alive round trip: Ok(false) if etcd says the lease is gone.
async fn renew_once(client: &Client, lease: i64, wait: Duration) -> Result<bool> {
    let (mut keeper, mut stream) = client.clone().lease_keep_alive(lease).await.map_err(|e| etcd_err("keep-alive", e))?;
    keeper.keep_alive().await.map_err(|e| etcd_err("keep-alive", e))?;
    match tokio::time::timeout(wait.max(Duration::from_millis(500)), stream.message()).await {
        Ok(Ok(Some(resp))) => Ok(resp.ttl() > 0),
        Ok(Ok(None)) => Err(Error::Unavailable("etcd keep-alive stream ended".into())),
        Ok(Err(e)) => Err(etcd_err("keep-alive", e)),
        Err(_) => Err(Error::Unavailable("no etcd keep-alive answer".into())),
    }
}
