//! A worker's membership in etcd: a key under a lease, present while the
//! worker lives. The coordinator declares a worker whose key is gone dead.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use sluice_common::meta::{etcd_err, keep_alive, key};
use sluice_common::Result;
use tokio_util::sync::CancellationToken;

/// Register a worker under a lease; the key vanishes when the worker dies.
/// The returned token is cancelled if the lease is lost: the coordinator
/// will declare this worker dead, so its session ends. Cancelling `session`
/// revokes the lease, so the key of an ended session goes at once.
pub async fn register(
    client: &Client,
    prefix: &str,
    worker_id: &str,
    value: &str,
    ttl: Duration,
    session: CancellationToken,
) -> Result<CancellationToken> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl.as_secs().max(1) as i64, None).await.map_err(|e| etcd_err("lease", e))?.id();
    c.put(key(prefix, &format!("workers/{worker_id}")), value, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| etcd_err("register", e))?;
    Ok(keep_alive(c, lease, ttl, "membership", session))
}

