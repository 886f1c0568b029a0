//! `sluice bench-storage`: upload throughput to a table's object store,
//! `sluice ingest` against a bare `object_store` upload of the same bytes
//! at the same request concurrency, in one run.
//!
//! The files are incompressible random bytes (the `other` kind: one row a
//! file, stored as a blob), so what is measured is moving bytes, not
//! normalizing them. The bare side puts each file as one object by a
//! multipart upload in 5 MiB parts (Lance's writer uploads its data and blob
//! files the same way), every request through one `LimitStore` of
//! `storage_concurrency` permits, the same bound the ingest's stores get.
//! It also reports single-request puts of the same files, the fastest way
//! to move files that fit one request.
//!
//! The three take turns over `--rounds`, everything written deleted between
//! rounds (an in-memory store such as moto slows down as it fills), and
//! medians are reported: each ratio is of runs next to each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use object_store::limit::LimitStore;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sluice_common::settings::Settings;

use crate::bench::{median, range};
use crate::storage_args::StorageArgs;

/// Part size of multipart uploads, Lance's first part size too.
const PART: usize = 5 << 20;

#[derive(clap::Args, Debug)]
pub struct BenchStorageArgs {
    /// Where to write: a table URI for the ingest (e.g. s3://bucket/bench);
    /// the bare upload goes beside it, under `<uri>-bare`
    #[arg(long)]
    pub table: String,
    /// Total bytes to move, in MB
    #[arg(long, default_value_t = 256)]
    pub mb: usize,
    /// Size of each file, in MB
    #[arg(long, default_value_t = 4.0)]
    pub file_mb: f64,
    /// Requests in flight at once, both sides
    #[arg(long, default_value_t = Settings::DEFAULT.storage_concurrency)]
    pub storage_concurrency: u32,
    /// Rounds of the three runs, taking turns; medians are reported
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Extra arguments passed to `sluice ingest`
    #[arg(last = true)]
    pub ingest_args: Vec<String>,
}

fn make_files(dir: &Path, total: usize, each: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut files = Vec::new();
    let mut left = total;
    let mut buf = vec![0u8; each];
    while left > 0 {
        let n = left.min(each);
        rng.fill_bytes(&mut buf[..n]);
        let path = dir.join(format!("blob-{:05}.bin", files.len()));
        std::fs::write(&path, &buf[..n])?;
        files.push(path);
        left -= n;
    }
    Ok(files)
}

/// Put one file by a multipart upload with its parts in flight together
/// (the store's limit bounds them), or in one request if `single`.
async fn put_file(store: Arc<dyn ObjectStore>, path: StorePath, file: PathBuf, concurrency: usize, single: bool) -> Result<()> {
    let bytes = bytes::Bytes::from(tokio::fs::read(&file).await?);
    if single {
        store.put(&path, bytes.into()).await?;
        return Ok(());
    }
    let upload = store.put_multipart(&path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    for chunk in bytes.chunks(PART) {
        writer.wait_for_capacity(concurrency).await?;
        writer.put(bytes.slice_ref(chunk));
    }
    writer.finish().await?;
    Ok(())
}

/// Delete every object under `prefix`.
async fn clear(store: &Arc<dyn ObjectStore>, prefix: &StorePath) -> Result<()> {
    let paths = store.list(Some(prefix)).map_ok(|m| m.location).boxed();
    store.delete_stream(paths).try_collect::<Vec<_>>().await?;
    Ok(())
}

pub async fn run(args: BenchStorageArgs) -> Result<()> {
    let work = std::env::temp_dir().join(format!("sluice-bench-storage-{}", std::process::id()));
    let total = args.mb * 1_000_000;
    let mb = total as f64 / 1e6;
    let files = make_files(&work.join("files"), total, (args.file_mb * 1e6) as usize)?;
    let concurrency = args.storage_concurrency.max(1) as usize;

    // Bare: every file as one object, files and parts in flight together up
    // to the limit.
    let bare_location = args.storage.location(&format!("{}-bare", args.table.trim_end_matches('/')))?;
    let (raw_store, root) = bare_location.object_store()?;
    let store: Arc<dyn ObjectStore> = Arc::new(LimitStore::new(raw_store.clone(), concurrency));
    let bare = |single: bool| {
        let (store, root, files) = (store.clone(), root.clone(), files.clone());
        async move {
            let t = Instant::now();
            futures::stream::iter(files.into_iter().enumerate())
                .map(|(i, f)| put_file(store.clone(), root.clone().join(format!("blob-{i:05}.bin").as_str()), f, concurrency, single))
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            anyhow::Ok(t.elapsed().as_secs_f64())
        }
    };
    let table = args.storage.location(&args.table)?;
    let (table_store, table_root) = table.object_store()?;
    let options = serde_json::to_string(&table.storage_options)?;
    let concurrency_arg = args.storage_concurrency.to_string();
    let files_dir = work.join("files");

    let (mut single, mut multipart, mut sluice, mut ratios, mut last) = (vec![], vec![], vec![], vec![], Value::Null);
    for _ in 0..args.rounds.max(1) {
        clear(&raw_store, &root).await?;
        clear(&table_store, &table_root).await?;
        let single_seconds = bare(true).await?;
        clear(&raw_store, &root).await?;
        let bare_seconds = bare(false).await?;
        // sluice: the same files through a whole ingest, into an empty table.
        let ingest_args = [files_dir.as_os_str(), "--storage-concurrency".as_ref(), concurrency_arg.as_ref()]
            .into_iter()
            .chain(args.ingest_args.iter().map(|a| a.as_ref()));
        let s = crate::bench::ingest_json(&args.table, ingest_args, &[("SLUICE_STORAGE_OPTIONS", &options)])?;
        let seconds = s["seconds"].as_f64().unwrap_or(f64::NAN);
        single.push(mb / single_seconds);
        multipart.push(mb / bare_seconds);
        sluice.push(mb / seconds);
        ratios.push(bare_seconds / seconds);
        last = s;
    }
    clear(&raw_store, &root).await?;
    let report = json!({
        "mb": mb,
        "files": files.len(),
        "storage_concurrency": concurrency,
        "rounds": ratios.len(),
        "bare_multipart_mb_s": median(multipart.clone()),
        "bare_multipart_mb_s_range": range(&multipart),
        "bare_single_put_mb_s": median(single.clone()),
        "sluice_ingest_mb_s": median(sluice.clone()),
        "sluice_ingest_mb_s_range": range(&sluice),
        "sluice_vs_bare_multipart": median(ratios.clone()),
        "sluice_vs_bare_multipart_range": range(&ratios),
        "sluice_vs_bare_single_put": median(sluice.iter().zip(&single).map(|(s, b)| s / b).collect()),
        "sluice_storage_requests": last["storage_requests"],
        "sluice_storage_peak_in_flight": last["storage_peak_in_flight"],
        "sluice_fragments": last["fragments"],
        "sluice_peak_rss_mb": last["peak_rss_bytes"].as_f64().map(|b| b / 1e6),
    });
    println!("{}", serde_json::to_string(&report)?);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
