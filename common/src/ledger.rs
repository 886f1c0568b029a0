//! The error ledger: files that could not be ingested, with the reason.
//!
//! Stored beside the table as JSON lines, one object per commit, under
//! `_sluice/errors/<job_id>/<commit_id>.jsonl`. It is written before the
//! commit it belongs to and named by the commit id, so a retried commit
//! rewrites the same object instead of adding a second one.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::TableLocation;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub job_id: String,
    pub uri: String,
    pub kind: String,
    pub reason: String,
    /// When the failure was recorded (RFC 3339).
    #[serde(default)]
    pub recorded_at: String,
}

#[derive(Debug, Clone)]
pub struct ErrorLedger {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl ErrorLedger {
    pub fn new(location: &TableLocation) -> Result<Self> {
        let (store, table) = location.object_store()?;
        Ok(Self { store, root: table.clone().join("_sluice").join("errors") })
    }

    /// Record the failures that belong to one commit.
    pub async fn record(&self, job_id: &str, commit_id: &str, failed: &[crate::protocol::FileFailed]) -> Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        let now = chrono::Utc::now().to_rfc3339();
        for f in failed {
            let rec = ErrorRecord {
                job_id: job_id.to_string(),
                uri: f.uri.clone(),
                kind: f.kind.map(|k| k.to_string()).unwrap_or_default(),
                reason: f.reason.clone(),
                recorded_at: now.clone(),
            };
            serde_json::to_writer(&mut body, &rec)?;
            body.push(b'\n');
        }
        let path = self.root.clone().join(job_id).join(format!("{commit_id}.jsonl").as_str());
        self.store.put(&path, PutPayload::from(body)).await?;
        Ok(())
    }

    /// Every recorded failure, optionally of one job only.
    pub async fn list(&self, job_id: Option<&str>) -> Result<Vec<ErrorRecord>> {
        let prefix = match job_id {
            Some(j) => self.root.clone().join(j),
            None => self.root.clone(),
        };
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out = Vec::new();
        for meta in metas {
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(line)?);
            }
        }
        out.sort_by(|a: &ErrorRecord, b| (&a.recorded_at, &a.uri).cmp(&(&b.recorded_at, &b.uri)));
        Ok(out)
    }

    /// The latest failure of each file, across jobs. A file that failed in
    /// several runs (each rerun retries it) is listed once.
    pub async fn latest(&self) -> Result<Vec<ErrorRecord>> {
        let mut by_uri = std::collections::BTreeMap::new();
        for rec in self.list(None).await? {
            by_uri.insert(rec.uri.clone(), rec);
        }
        Ok(by_uri.into_values().collect())
    }
}
