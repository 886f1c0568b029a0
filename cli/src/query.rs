//! `sluice query "SQL"`: SQL (DataFusion, through Lance) over a table, on
//! this machine, local or on object storage. The table is named in the SQL
//! by its last path segment (`SELECT kind, count(*) FROM lake GROUP BY kind`
//! for `./data/lake`). Blob bytes are left out unless `--blobs`; rows are
//! capped by `--limit` and the query by `--timeout`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use lance_core::datatypes::BlobHandling;

use crate::storage_args::StorageArgs;

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The SQL statement
    pub sql: String,
    /// Table location
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// Name of the table in the SQL (default: the location's last segment)
    #[arg(long)]
    pub name: Option<String>,
    /// Most rows returned
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Give up after this long
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Return blob columns' bytes (by default: their descriptions only)
    #[arg(long)]
    pub blobs: bool,
    /// Print rows as JSON lines instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The table's name in SQL: the location's last path segment, as an identifier.
fn default_name(uri: &str) -> String {
    let last = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("t");
    let name: String = last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) { format!("t_{name}") } else { name }
}

pub async fn run(args: QueryArgs) -> Result<i32> {
    let location = args.storage.location(&args.table)?;
    let name = args.name.clone().unwrap_or_else(|| default_name(&location.uri));
    let table = sluice_common::table::TableHandle::new(location, 32);
    let dataset = table.open().await.with_context(|| format!("cannot open table {}", args.table))?;
    let blobs = if args.blobs { BlobHandling::AllBinary } else { BlobHandling::AllDescriptions };
    let run = async {
        let query = dataset
            .sql(&args.sql)
            .table_name(&name)
            .blob_handling(blobs)
            .build()
            .await
            .map_err(sluice_common::Error::from)?;
        let frame = query.into_dataframe().limit(0, Some(args.limit))?;
        let batches: Vec<arrow_array::RecordBatch> = frame.execute_stream().await?.try_collect().await?;
        Ok::<_, anyhow::Error>(batches)
    };
    let batches = match tokio::time::timeout(args.timeout, run).await {
        Err(_) => bail!("query timed out after {:?}", args.timeout),
        Ok(r) => r.context("query failed")?,
    };
    if args.json {
        let mut out = arrow_json::LineDelimitedWriter::new(std::io::stdout().lock());
        let refs: Vec<&arrow_array::RecordBatch> = batches.iter().collect();
        out.write_batches(&refs)?;
        out.finish()?;
    } else {
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    }
    Ok(0)
}
