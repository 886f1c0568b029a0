//! `sluice query "SQL"`: SQL (DataFusion, through Lance) over a table, on
//! this machine (local or object storage) or through a coordinator
//! (`--coordinator`). The table is named in the SQL by its last path
//! segment (`SELECT kind, count(*) FROM lake GROUP BY kind` for
//! `./data/lake`). Blob bytes are left out unless `--blobs`; rows are
//! capped by `--limit` and the query by `--timeout`.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use sluice_common::pb;

use crate::storage_args::StorageArgs;
use crate::table::{rpc_error, Remote};

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The SQL statement
    pub sql: String,
    /// Table location (with --coordinator: also a name under its storage root)
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// Name of the table in the SQL (default: the location's last segment)
    #[arg(long, conflicts_with = "coordinator")]
    pub name: Option<String>,
    /// Most rows returned
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Give up after this long (the coordinator has its own limit)
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Return blob columns' bytes (by default: their descriptions only)
    #[arg(long)]
    pub blobs: bool,
    /// Print rows as JSON lines instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Rows of a query as JSON objects (one string each), here or remotely.
pub async fn rows(remote: &Remote, storage: &StorageArgs, table: &str, sql: &str, limit: usize) -> Result<Vec<String>> {
    match remote.client().await? {
        Some(mut client) => Ok(remote_rows(&mut client, table, sql, limit, false, Duration::from_secs(60)).await?.1),
        None => {
            let batches = local_batches(storage, table, None, sql, limit, false, Duration::from_secs(60)).await?;
            Ok(sluice_common::query::json_rows(&batches)?)
        }
    }
}

/// A query over a table opened here (named in the SQL by `name`, or else
/// by its last path segment).
async fn local_batches(
    storage: &StorageArgs,
    table: &str,
    name: Option<&str>,
    sql: &str,
    limit: usize,
    blobs: bool,
    timeout: Duration,
) -> Result<Vec<arrow_array::RecordBatch>> {
    let location = storage.location(table)?;
    let name = name.map_or_else(|| sluice_common::query::table_name(&location.uri), str::to_string);
    let dataset = sluice_common::table::TableHandle::new(location, 32)
        .open()
        .await
        .with_context(|| format!("cannot open table {table}"))?;
    sluice_common::query::run_sql(&dataset, sql, &name, limit, blobs, timeout).await.context("query failed")
}

/// The columns and rows of a query run by the coordinator.
async fn remote_rows(
    client: &mut crate::cluster::TableClient,
    table: &str,
    sql: &str,
    limit: usize,
    blobs: bool,
    timeout: Duration,
) -> Result<(Vec<String>, Vec<String>)> {
    let request = pb::QueryRequest {
        table: table.to_string(),
        sql: sql.to_string(),
        limit: limit.min(u32::MAX as usize) as u32,
        include_blobs: blobs,
        page_rows: 0,
        timeout_seconds: timeout.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
    };
    let pages = client.query(request).await.map_err(rpc_error)?.into_inner();
    let pages: Vec<pb::QueryPage> = pages.try_collect().await.map_err(rpc_error)?;
    let columns = pages.first().map(|p| p.columns.clone()).unwrap_or_default();
    Ok((columns, pages.into_iter().flat_map(|p| p.rows).collect()))
}

pub async fn run(args: QueryArgs) -> Result<i32> {
    let (columns, json_rows) = match args.remote.client().await? {
        Some(mut client) => {
            tokio::time::timeout(args.timeout, remote_rows(&mut client, &args.table, &args.sql, args.limit, args.blobs, args.timeout))
                .await
                .context("query timed out")??
        }
        None => {
            let batches = local_batches(
                &args.storage,
                &args.table,
                args.name.as_deref(),
                &args.sql,
                args.limit,
                args.blobs,
                args.timeout,
            )
            .await?;
            if !args.json {
                println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                return Ok(0);
            }
            (Vec::new(), sluice_common::query::json_rows(&batches)?)
        }
    };
    if args.json {
        for row in &json_rows {
            println!("{row}");
        }
    } else {
        println!("{}", pretty_json_rows(&columns, &json_rows)?);
    }
    Ok(0)
}

/// JSON rows as a text table, `columns` first in their order.
fn pretty_json_rows(columns: &[String], rows: &[String]) -> Result<String> {
    let values: Vec<serde_json::Map<String, serde_json::Value>> =
        rows.iter().map(|r| serde_json::from_str(r)).collect::<Result<_, _>>()?;
    let mut columns: Vec<String> = columns.to_vec();
    for row in &values {
        for k in row.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let cell = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let table: Vec<Vec<String>> = values.iter().map(|r| columns.iter().map(|c| cell(r.get(c))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| table.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let rule = format!("+{}+", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let line = |cells: &[String]| {
        format!("|{}|", cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect::<Vec<_>>().join("|"))
    };
    let mut out = vec![rule.clone(), line(&columns), rule.clone()];
    out.extend(table.iter().map(|r| line(r)));
    out.push(rule);
    Ok(out.join("\n"))
}
