//! `sluice query "SQL"`: SQL (DataFusion, through Lance) over a table, on
//! this machine, local or on object storage. The table is named in the SQL
//! by its last path segment (`SELECT kind, count(*) FROM lake GROUP BY kind`
//! for `./data/lake`). Blob bytes are left out unless `--blobs`; rows are
//! capped by `--limit` and the query by `--timeout`.

use std::time::Duration;

use anyhow::{Context, Result};

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

pub async fn run(args: QueryArgs) -> Result<i32> {
    let location = args.storage.location(&args.table)?;
    let name = args.name.clone().unwrap_or_else(|| sluice_common::query::table_name(&location.uri));
    let table = sluice_common::table::TableHandle::new(location, 32);
    let dataset = table.open().await.with_context(|| format!("cannot open table {}", args.table))?;
    let batches = sluice_common::query::run_sql(&dataset, &args.sql, &name, args.limit, args.blobs, args.timeout)
        .await
        .context("query failed")?;
    if args.json {
        for row in sluice_common::query::json_rows(&batches)? {
            println!("{row}");
        }
    } else {
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    }
    Ok(0)
}
