//! Reaching the table's object store: locations, options, and the request
//! limiter that makes `storage_concurrency` real.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lance::io::{ObjectStoreParams, StorageOptionsAccessor, WrappingObjectStore};
use object_store::list::PaginatedListStore;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

use crate::{Error, Result};

/// Where a table lives: a local path, `file://` or `s3://` URI, plus store options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableLocation {
    pub uri: String,
    pub storage_options: HashMap<String, String>,
}

impl TableLocation {
    /// A location from a user-given path or URI. Local paths become absolute.
    pub fn new(uri: &str, storage_options: HashMap<String, String>) -> Result<Self> {
        if uri.trim().is_empty() {
            return Err(Error::InvalidInput("table location is empty".into()));
        }
        let uri = if uri.contains("://") {
            uri.trim_end_matches('/').to_string()
        } else {
            let p = std::path::Path::new(uri);
            let abs = std::path::absolute(p)?;
            if abs.exists() && !abs.is_dir() {
                return Err(Error::InvalidInput(format!("table path {} exists and is not a directory", abs.display())));
            }
            abs.to_string_lossy().trim_end_matches('/').to_string()
        };
        Ok(Self { uri, storage_options })
    }

    pub fn is_local(&self) -> bool {
        !self.uri.contains("://") || self.uri.starts_with("file://")
    }

    /// URL form of the location (local paths as `file://`).
    pub fn url(&self) -> Result<url::Url> {
        if self.uri.contains("://") {
            url::Url::parse(&self.uri).map_err(|e| Error::InvalidInput(format!("bad table URI {}: {e}", self.uri)))
        } else {
            url::Url::from_directory_path(&self.uri)
                .map_err(|_| Error::InvalidInput(format!("bad table path {}", self.uri)))
        }
    }

    /// A plain object store rooted at the store's bucket (or filesystem root),
    /// and the path of this table inside it. Used for sidecar files.
    pub fn object_store(&self) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = self.url()?;
        if url.scheme() == "file" {
            std::fs::create_dir_all(url.to_file_path().map_err(|_| Error::InvalidInput(url.to_string()))?)?;
        }
        let (store, path) = object_store::parse_url_opts(&url, self.storage_options.iter())?;
        Ok((Arc::from(store), path))
    }
}

/// Counts of requests that reached the object store.
#[derive(Debug, Default)]
pub struct StorageStats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    requests: AtomicU64,
}

impl StorageStats {
    fn enter(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self.clone())
    }
    /// Most requests ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

struct InFlight(Arc<StorageStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request admitted to the store: it holds one of the limiter's permits.
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _in_flight: InFlight,
}

/// Wraps every store Lance opens: at most `limit` requests in flight, counted.
/// Every store wrapped by one limiter (Lance opens one per session: a job's
/// coordinator and workers each have theirs) shares its permits, so the
/// limit holds for the whole process.
#[derive(Debug, Clone)]
pub struct StorageLimiter {
    permits: Arc<tokio::sync::Semaphore>,
    stats: Arc<StorageStats>,
}

impl StorageLimiter {
    pub fn new(limit: u32) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(limit.max(1) as usize)), stats: Arc::default() }
    }
    pub fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }
    /// Wait for a permit, then count the request.
    async fn admit(&self) -> Admitted {
        let permit = self.permits.clone().acquire_owned().await.expect("the limiter's semaphore is never closed");
        Admitted { _permit: permit, _in_flight: self.stats.enter() }
    }
}

impl WrappingObjectStore for StorageLimiter {
    fn wrap(&self, _prefix: &str, original: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(MeteredStore { inner: original, limiter: self.clone() })
    }

    fn wrap_paginated(
        &self,
        _prefix: &str,
        original: Arc<dyn PaginatedListStore>,
    ) -> Option<Arc<dyn PaginatedListStore>> {
        // Listings are metadata reads; keep Lance's paging pushdown.
        Some(original)
    }
}

/// Lance store parameters for a location, with the limiter installed.
pub fn store_params(location: &TableLocation, limiter: &StorageLimiter) -> ObjectStoreParams {
    ObjectStoreParams {
        object_store_wrapper: Some(Arc::new(limiter.clone())),
        storage_options_accessor: Some(Arc::new(StorageOptionsAccessor::with_static_options(
            location.storage_options.clone(),
        ))),
        ..Default::default()
    }
}

/// Limits and counts requests as they reach the inner store.
#[derive(Debug)]
struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    limiter: StorageLimiter,
}

impl std::fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        let _g = self.limiter.admit().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = {
            let _g = self.limiter.admit().await;
            self.inner.put_multipart_opts(location, opts).await?
        };
        Ok(Box::new(MeteredUpload { inner: upload, limiter: self.limiter.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let admitted = self.limiter.admit().await;
        let got = self.inner.get_opts(location, options).await?;
        // A streamed body is part of the request: the permit goes with it.
        let payload = match got.payload {
            GetResultPayload::Stream(body) => GetResultPayload::Stream(Box::pin(body.map(move |chunk| {
                let _ = &admitted;
                chunk
            }))),
            other => other,
        };
        Ok(GetResult { payload, ..got })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let _g = self.limiter.admit().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let _g = self.limiter.admit().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let _g = self.limiter.admit().await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        let _g = self.limiter.admit().await;
        self.inner.rename_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    limiter: StorageLimiter,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let fut = self.inner.put_part(data);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let _g = limiter.admit().await;
            fut.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let _g = self.limiter.admit().await;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// Fill in what the process environment says about the object store of
/// `uri`, for keys not set already: S3 credentials and endpoint (path-style
/// and plain HTTP for S3-compatible servers), `GOOGLE_*` for `gs://`,
/// `AZURE_*` for `az://`, and plain HTTP allowed for `http://` URIs.
pub fn complete_options(uri: &str, opts: &mut HashMap<String, String>) {
    let scheme = uri.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "s3" | "s3a" => {
            options_from_env(opts);
            if opts.get("aws_endpoint").is_some_and(|e| e.starts_with("http://")) {
                opts.entry("allow_http".into()).or_insert_with(|| "true".into());
            }
            if opts.contains_key("aws_endpoint") {
                // S3-compatible servers are addressed path-style.
                opts.entry("aws_virtual_hosted_style_request".into()).or_insert_with(|| "false".into());
            }
        }
        "gs" => env_with_prefix("GOOGLE_", opts),
        "az" | "azure" | "abfs" | "abfss" | "adl" => env_with_prefix("AZURE_", opts),
        "http" => {
            opts.entry("allow_http".into()).or_insert_with(|| "true".into());
        }
        _ => {}
    }
}

/// Every `PREFIX*` environment variable as a lower-case option key (the
/// store keeps the keys it knows, e.g. `google_service_account`,
/// `azure_storage_account_name`).
fn env_with_prefix(prefix: &str, opts: &mut HashMap<String, String>) {
    for (k, v) in std::env::vars() {
        if k.starts_with(prefix) {
            opts.entry(k.to_ascii_lowercase()).or_insert(v);
        }
    }
}

pub fn options_from_env(options: &mut HashMap<String, String>) {
    for (env, key) in [
        ("AWS_ENDPOINT_URL", "aws_endpoint"),
        ("AWS_ENDPOINT", "aws_endpoint"),
        ("AWS_REGION", "aws_region"),
        ("AWS_DEFAULT_REGION", "aws_region"),
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
        ("AWS_ALLOW_HTTP", "allow_http"),
    ] {
        if let Ok(v) = std::env::var(env) {
            options.entry(key.to_string()).or_insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;

    /// One limiter's permits are shared by every store it wraps (Lance opens
    /// one per session), and a streamed body holds its request's permit.
    #[tokio::test]
    async fn stores_wrapped_by_one_limiter_share_its_limit() {
        let limiter = StorageLimiter::new(1);
        let a = limiter.wrap("a", Arc::new(InMemory::new()));
        let b = limiter.wrap("b", Arc::new(InMemory::new()));
        let path = Path::from("x");
        a.put(&path, PutPayload::from_static(b"abc")).await.unwrap();
        let body = a.get(&path).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(200), b.put(&path, PutPayload::from_static(b"d"))).await;
        assert!(blocked.is_err(), "the other store waits while the body is unread");
        assert_eq!(body.bytes().await.unwrap(), Bytes::from_static(b"abc"));
        b.put(&path, PutPayload::from_static(b"d")).await.unwrap();
        let stats = limiter.stats();
        assert_eq!((stats.requests(), stats.peak_in_flight()), (3, 1));
    }
}
