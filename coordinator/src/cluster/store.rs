//! The coordinator's state that must outlive it, and its election: job
//! records and leadership in etcd for a cluster; in memory when one
//! coordinator runs alone (no failover then).

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use prost::Message;
use sluice_common::meta::{etcd_err, keep_alive, key};
use sluice_common::{pb, Result};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub enum MetaStore {
    Memory,
    Etcd { client: Box<Client>, prefix: String },
}

impl MetaStore {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        if endpoints.is_empty() {
            return Ok(MetaStore::Memory);
        }
        let client = sluice_common::meta::connect(endpoints).await?;
        Ok(MetaStore::Etcd { client: Box::new(client), prefix: prefix.trim_end_matches('/').to_string() })
    }

    pub async fn save_job(&self, record: &pb::JobRecord) -> Result<()> {
        let MetaStore::Etcd { client, prefix } = self else { return Ok(()) };
        let id = record.status.as_ref().map(|s| s.job_id.clone()).unwrap_or_default();
        client
            .clone()
            .put(key(prefix, &format!("jobs/{id}")), record.encode_to_vec(), None)
            .await
            .map_err(|e| etcd_err("put job", e))?;
        Ok(())
    }

    pub async fn load_jobs(&self) -> Result<Vec<pb::JobRecord>> {
        let MetaStore::Etcd { client, prefix } = self else { return Ok(Vec::new()) };
        let resp = client
            .clone()
            .get(key(prefix, "jobs/"), Some(GetOptions::new().with_prefix()))
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
        // Held until the process ends (or the lease is lost).
        let lost = keep_alive(client.as_ref().clone(), lease, ttl, "leadership", CancellationToken::new());
        tracing::info!(%advertise, "campaigning for leadership");
        let won = client
            .campaign(key(prefix, "leader"), advertise, lease)
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
        use backon::Retryable;
        let asked = (|| async { client.clone().get(leadership.key.clone(), None).await })
            .retry(sluice_common::retry::within(leadership.ttl))
            .notify(|e, _| tracing::warn!(error = %e, "cannot confirm leadership yet; retrying"))
            .await;
        match asked {
            Ok(resp) => resp.kvs().first().is_some_and(|kv| kv.lease() == leadership.lease),
            Err(e) => {
                tracing::error!(error = %e, "cannot confirm leadership");
                false
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

/// Workers with a live membership lease.
pub async fn members(client: &Client, prefix: &str) -> Result<Vec<String>> {
    let key = key(prefix, "workers/");
    let resp = client
        .clone()
        .get(key.clone(), Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .map_err(|e| etcd_err("members", e))?;
    Ok(resp.kvs().iter().map(|kv| String::from_utf8_lossy(&kv.key()[key.len()..]).into_owned()).collect())
}

