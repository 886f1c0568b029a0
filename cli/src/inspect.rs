//! `sluice inspect`: what a table holds.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use arrow_array::{Array, StringArray, UInt32Array};
use futures::TryStreamExt;
use serde::Serialize;
use sluice_common::ledger::{ErrorLedger, ErrorRecord};
use sluice_common::schema::col;
use sluice_common::table::{prop, TableHandle};

use crate::storage_args::StorageArgs;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Table location
    pub table: String,
    /// Sample rows to show
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// List every failed file
    #[arg(long)]
    pub errors: bool,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Serialize)]
struct VersionInfo {
    version: u64,
    timestamp: String,
    operation: String,
    job_id: Option<String>,
    rows: Option<String>,
}

#[derive(Serialize)]
struct Sample {
    source_uri: String,
    kind: String,
    chunk_index: u32,
    mime_type: String,
    text: Option<String>,
}

#[derive(Serialize)]
struct Report {
    table: String,
    version: u64,
    rows: usize,
    schema: Vec<String>,
    rows_per_kind: BTreeMap<String, u64>,
    versions: Vec<VersionInfo>,
    samples: Vec<Sample>,
    failed_files: usize,
    errors: Vec<ErrorRecord>,
}

pub async fn run(args: InspectArgs) -> Result<()> {
    let location = args.storage.location(&args.table)?;
    let handle = TableHandle::new(location.clone(), 32);
    let ds = handle.open().await.with_context(|| format!("cannot open table {}", args.table))?;

    let schema = ds.schema().fields.iter().map(|f| format!("{}: {}", f.name, f.data_type())).collect();
    let mut rows_per_kind = BTreeMap::new();
    let mut scan = ds.scan();
    scan.project(&[col::KIND])?;
    let mut stream = scan.try_into_stream().await?;
    while let Some(batch) = stream.try_next().await? {
        let kinds = batch.column(0).as_any().downcast_ref::<StringArray>().context("kind column")?;
        for k in kinds.iter().flatten() {
            *rows_per_kind.entry(k.to_string()).or_insert(0) += 1;
        }
    }

    let mut versions = Vec::new();
    for v in ds.versions().await?.iter().rev().take(20) {
        let txn = ds.read_transaction_by_version(v.version).await.ok().flatten();
        let props = txn.as_ref().and_then(|t| t.transaction_properties.clone());
        versions.push(VersionInfo {
            version: v.version,
            timestamp: v.timestamp.to_rfc3339(),
            operation: txn.as_ref().map_or("?".into(), |t| t.operation.to_string()),
            job_id: props.as_ref().and_then(|p| p.get(prop::JOB_ID).cloned()),
            rows: props.as_ref().and_then(|p| p.get(prop::ROWS).cloned()),
        });
    }

    let mut samples = Vec::new();
    if args.samples > 0 {
        let mut scan = ds.scan();
        scan.project(&[col::SOURCE_URI, col::KIND, col::CHUNK_INDEX, col::MIME_TYPE, col::TEXT])?;
        scan.limit(Some(args.samples as i64), None)?;
        let batches: Vec<_> = scan.try_into_stream().await?.try_collect().await?;
        for b in batches {
            let s = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().expect("utf8").clone();
            let (uri, kind, mime, text) = (s(0), s(1), s(3), s(4));
            let chunk = b.column(2).as_any().downcast_ref::<UInt32Array>().expect("u32").clone();
            for i in 0..b.num_rows() {
                samples.push(Sample {
                    source_uri: uri.value(i).into(),
                    kind: kind.value(i).into(),
                    chunk_index: chunk.value(i),
                    mime_type: mime.value(i).into(),
                    text: (!text.is_null(i)).then(|| text.value(i).chars().take(80).collect()),
                });
            }
        }
    }

    // Files that failed once but are in the table now were fixed and re-ingested.
    let present = sluice_common::table::committed_files(&ds).await?;
    let errors: Vec<_> =
        ErrorLedger::new(&location)?.latest().await?.into_iter().filter(|e| !present.contains_key(&sluice_common::ids::uri_key(&e.uri))).collect();
    let report = Report {
        table: location.uri.clone(),
        version: ds.version().version,
        rows: ds.count_rows(None).await?,
        schema,
        rows_per_kind,
        versions,
        samples,
        failed_files: errors.len(),
        errors: if args.errors || args.json { errors } else { errors.into_iter().take(10).collect() },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("Table {} — version {}, {} rows", report.table, report.version, crate::ingest::thousands(report.rows as u64));
    println!("\nRows per kind:");
    for (k, n) in &report.rows_per_kind {
        println!("  {k:<8} {}", crate::ingest::thousands(*n));
    }
    println!("\nSchema:");
    for f in &report.schema {
        println!("  {f}");
    }
    println!("\nVersions (newest first):");
    for v in &report.versions {
        println!(
            "  v{:<5} {}  {:<10} job {}  rows {}",
            v.version,
            v.timestamp,
            v.operation,
            v.job_id.as_deref().unwrap_or("-"),
            v.rows.as_deref().unwrap_or("-")
        );
    }
    if !report.samples.is_empty() {
        println!("\nSamples:");
        for s in &report.samples {
            let text = s.text.as_deref().map(|t| format!("  {:?}", t)).unwrap_or_default();
            println!("  [{}#{}] {} ({}){}", s.kind, s.chunk_index, s.source_uri, s.mime_type, text);
        }
    }
    println!("\nFailed files: {}", report.failed_files);
    for e in &report.errors {
        println!("  {}  [{}] {}  (job {})", e.uri, if e.kind.is_empty() { "?" } else { &e.kind }, e.reason, e.job_id);
    }
    Ok(())
}
