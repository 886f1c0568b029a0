//! `sluice inspect`: what a table holds (columns, rows per kind, versions
//! with the job or insert that wrote each, samples, failed files), here or
//! through a coordinator (`--coordinator`).

use anyhow::{Context, Result};
use serde::Serialize;
use sluice_common::describe::{TableDescription, TableVersion};
use sluice_common::pb;
use sluice_common::schema::col;
use sluice_common::table::TableHandle;

use crate::storage_args::StorageArgs;
use crate::table::{rpc_error, Remote};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Table location (with --coordinator: also a name under its storage root)
    pub table: String,
    /// Sample rows to show
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Versions to show, newest first
    #[arg(long, default_value_t = 20)]
    pub versions: usize,
    /// List every failed file
    #[arg(long)]
    pub errors: bool,
    /// Failed files of this job only
    #[arg(long)]
    pub job: Option<String>,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    table: TableDescription,
    versions: Vec<TableVersion>,
    samples: Vec<serde_json::Value>,
}

pub async fn run(args: InspectArgs) -> Result<()> {
    let max_errors = if args.errors || args.json { u32::MAX } else { 10 };
    let (table, versions) = match args.remote.client().await? {
        Some(mut c) => {
            let request = pb::DescribeTableRequest {
                table: args.table.clone(),
                job_id: args.job.clone().unwrap_or_default(),
                max_errors,
            };
            let table = c.describe_table(request).await.map_err(rpc_error)?.into_inner().into();
            let request = pb::ListVersionsRequest { table: args.table.clone(), limit: args.versions as u32 };
            let versions = c.list_versions(request).await.map_err(rpc_error)?.into_inner().versions.into_iter().map(Into::into).collect();
            (table, versions)
        }
        None => {
            let handle = TableHandle::new(args.storage.location(&args.table)?, 32);
            let ds = sluice_common::describe::open(&handle).await.with_context(|| format!("cannot open table {}", args.table))?;
            let table = sluice_common::describe::describe(&handle, &ds, args.job.as_deref(), max_errors as usize)
                .await
                .with_context(|| format!("cannot inspect table {}", args.table))?;
            (table, sluice_common::describe::versions(&ds, args.versions).await?)
        }
    };
    let samples = if args.samples == 0 || table.rows == 0 {
        Vec::new()
    } else {
        let sql = sample_sql(&table, args.samples);
        let rows = crate::query::rows(&args.remote, &args.storage, &args.table, &sql, args.samples).await?;
        rows.iter().map(|r| serde_json::from_str(r)).collect::<Result<_, _>>()?
    };
    let report = Report { table, versions, samples };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print(&report);
    Ok(())
}

/// Sample rows: for ingest tables, where each came from and the start of
/// its text; for others, every column that is not binary.
fn sample_sql(table: &TableDescription, n: usize) -> String {
    let has = |name: &str| table.columns.iter().any(|c| c.name == name);
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let select = if [col::SOURCE_URI, col::KIND, col::CHUNK_INDEX, col::MIME_TYPE, col::TEXT].iter().all(|c| has(c)) {
        format!(
            "{}, {}, {}, {}, substr({}, 1, 80) AS {}",
            col::SOURCE_URI,
            col::KIND,
            col::CHUNK_INDEX,
            col::MIME_TYPE,
            col::TEXT,
            col::TEXT
        )
    } else {
        let cols: Vec<String> =
            table.columns.iter().filter(|c| !matches!(c.ty.as_str(), "binary" | "blob")).map(|c| quoted(&c.name)).collect();
        if cols.is_empty() { "count(*) AS rows".into() } else { cols.join(", ") }
    };
    format!("SELECT {select} FROM {} LIMIT {n}", quoted(&table.name))
}

fn print(report: &Report) {
    let t = &report.table;
    println!("Table {} — version {}, {} rows", t.table_uri, t.version, crate::ingest::thousands(t.rows));
    if !t.rows_per_kind.is_empty() {
        println!("\nRows per kind:");
        let kinds: std::collections::BTreeMap<_, _> = t.rows_per_kind.iter().collect();
        for (k, n) in kinds {
            println!("  {k:<8} {}", crate::ingest::thousands(*n));
        }
    }
    println!("\nColumns:");
    for c in &t.columns {
        println!("  {}: {}{}", c.name, c.ty, if c.nullable { "" } else { " not null" });
    }
    println!("\nVersions (newest first):");
    for v in &report.versions {
        let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
        let by = if !v.job_id.is_empty() {
            format!("job {}", v.job_id)
        } else if !v.idempotency_key.is_empty() {
            format!("insert {}", v.idempotency_key)
        } else {
            "-".into()
        };
        println!("  v{:<5} {}  {:<10} {}  rows {}", v.version, v.timestamp, dash(&v.operation), by, v.rows);
    }
    if !report.samples.is_empty() {
        println!("\nSamples:");
        for s in &report.samples {
            println!("  {s}");
        }
    }
    println!("\nFailed files: {}", t.failed_files);
    for e in &t.errors {
        println!("  {}  [{}] {}  (job {})", e.uri, if e.kind.is_empty() { "?" } else { &e.kind }, e.reason, e.job_id);
    }
}
