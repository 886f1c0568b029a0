//! etcd as the roles share it: the connection, the key layout and lease
//! keep-alives. The election and job records are the coordinator's
//! (`coordinator::cluster::store`), membership is the worker's
//! (`worker::membership`).
//!
//! Keys under the prefix (default `/sluice`):
//! - `leader`: the election; its value is the leader's advertised address.
//! - `jobs/<job id>`: a `JobRecord` (spec and last status), small.
//! - `workers/<worker id>`: present while the worker's lease lives.

use std::time::Duration;

pub use etcd_client::Client;
use tokio_util::sync::CancellationToken;
use crate::{Error, Result};

/// An etcd failure: the cluster's store is unavailable.
pub fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd {what}: {e}"))
}

/// Where keys of `what` (`leader`, `jobs/`, `workers/`) live under `prefix`.
pub fn key(prefix: &str, what: &str) -> String {
    format!("{}/{what}", prefix.trim_end_matches('/'))
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
    match client.clone().leader(key(prefix, "leader")).await {
        Ok(resp) => Ok(resp.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
        // "election: no leader" comes back as an error.
        Err(e) if e.to_string().contains("no leader") => Ok(None),
        Err(e) => Err(etcd_err("leader", e)),
    }
}

/// Refresh `lease` every third of its TTL until `release` is cancelled
/// (then the lease is revoked, best effort). An etcd that is briefly away
/// (restarted, a blip) is retried until the lease would have expired; only
/// then is the lease lost, and the returned token cancelled.
pub fn keep_alive(client: Client, lease: i64, ttl: Duration, what: &'static str, release: CancellationToken) -> CancellationToken {
    let lost = CancellationToken::new();
    let token = lost.clone();
    tokio::spawn(async move {
        let every = (ttl / 3).max(Duration::from_millis(100));
        let mut renewed = tokio::time::Instant::now();
        let why = loop {
            if release.is_cancelled() {
                let _ = client.clone().lease_revoke(lease).await;
                return;
            }
            if renewed.elapsed() > ttl {
                break "could not renew it within its TTL".to_string();
            }
            match renew_once(&client, lease, every).await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => break "the lease expired".to_string(),
                Err(e) => tracing::warn!(error = %e, lease = what, "cannot renew the lease yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = release.cancelled() => {}
            }
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
