//! `sluice insert` and `sluice tables`, plus what `query` and `inspect` share:
//! each works on a table on this machine (local or object storage), or
//! through a coordinator's `TableService` with `--coordinator`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sluice_common::insert::{insert_rows, parse_columns, parse_json_rows, InsertRequest};
use sluice_common::pb;
use sluice_common::table::TableHandle;

use crate::cluster::{table_client, ClientArgs, ClientTls, TableClient};
use crate::storage_args::StorageArgs;

/// Go through a coordinator instead of opening the table here.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Remote {
    /// Coordinator address (e.g. http://127.0.0.1:50051): use its table API;
    /// the table may then be a name under the coordinator's storage root
    #[arg(long)]
    pub coordinator: Option<String>,
    /// File holding the bearer token for the coordinator [env: SLUICE_TOKEN holds the token itself]
    #[arg(long, requires = "coordinator")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTls,
}

impl Remote {
    pub async fn client(&self) -> Result<Option<TableClient>> {
        let Some(coordinator) = &self.coordinator else { return Ok(None) };
        let args = ClientArgs { coordinator: coordinator.clone(), token_file: self.token_file.clone(), tls: self.tls.clone() };
        Ok(Some(table_client(&args).await?))
    }
}

/// A gRPC error as the user should read it.
pub fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

#[derive(clap::Args, Debug)]
pub struct InsertArgs {
    /// Table location (with --coordinator: also a name under its storage root)
    #[arg(long, env = "SLUICE_TABLE")]
    pub table: String,
    /// JSON lines, one object per row, columns by name ("-": standard input)
    #[arg(long, default_value = "-")]
    pub rows: String,
    /// Create the table with these columns if it does not exist, SQL-style:
    /// "filename TEXT NOT NULL, metadata JSONB, size BIGINT"
    #[arg(long)]
    pub columns: Option<String>,
    /// Rows per atomic batch (one commit, one request)
    #[arg(long, default_value_t = 5000)]
    pub batch_rows: usize,
    /// Insert at most once: batch N is sent with key KEY#N, so running the
    /// same command again inserts only the batches that did not land
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Print the outcome as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn insert(args: InsertArgs) -> Result<i32> {
    let columns = args.columns.as_deref().map(parse_columns).transpose()?.unwrap_or_default();
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    let input: Box<dyn BufRead> = if args.rows == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.rows).with_context(|| format!("cannot read rows from {}", args.rows))?,
        ))
    };
    let mut client = args.remote.client().await?;
    let local = match client {
        Some(_) => None,
        None => Some(TableHandle::new(args.storage.location(&args.table)?, 32)),
    };
    let mut total = sluice_common::insert::Inserted::default();
    let mut lines = input.lines();
    let (mut line_no, mut batch_no) = (0usize, 0usize);
    loop {
        let first_line = line_no + 1;
        let mut batch = Vec::new();
        let mut eof = false;
        while batch.len() < args.batch_rows {
            let Some(line) = lines.next() else {
                eof = true;
                break;
            };
            let line = line.context("cannot read rows")?;
            line_no += 1;
            if !line.trim().is_empty() {
                batch.push(line);
            }
        }
        // An empty first batch still creates the table.
        if batch.is_empty() && batch_no > 0 {
            break;
        }
        let key = args.idempotency_key.as_ref().map(|k| format!("{k}#{batch_no}"));
        let done = match (&mut client, &local) {
            (Some(c), _) => c
                .insert_rows(pb::InsertRowsRequest {
                    table: args.table.clone(),
                    json_rows: batch,
                    create_columns: columns.iter().cloned().map(Into::into).collect(),
                    idempotency_key: key.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().into())
                .map_err(rpc_error),
            (None, Some(handle)) => match parse_json_rows(batch.iter().map(String::as_str)) {
                Ok(rows) => insert_rows(handle, InsertRequest { rows, create_columns: columns.clone(), idempotency_key: key })
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            },
            (None, None) => unreachable!("no table handle without a coordinator"),
        }
        .with_context(|| match batch_no {
            0 if line_no == 0 => "nothing was inserted".to_string(),
            0 => format!("batch 0 (lines {first_line} to {line_no}) was not inserted; nothing was"),
            _ => format!("batch {batch_no} (lines {first_line} to {line_no}) was not inserted; the batches before it were"),
        })?;
        total.table_uri = done.table_uri;
        total.version = done.version;
        total.rows_inserted += done.rows_inserted;
        total.created |= done.created;
        total.replayed |= done.replayed;
        batch_no += 1;
        if eof {
            break;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&total)?);
    } else {
        println!(
            "{} rows inserted into {} (version {}){}{}",
            crate::ingest::thousands(total.rows_inserted),
            total.table_uri,
            total.version,
            if total.created { ", table created" } else { "" },
            if total.replayed { ", some batches had been inserted before" } else { "" },
        );
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct TablesArgs {
    /// Directory or URI holding tables (without --coordinator)
    pub root: Option<String>,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn tables(args: TablesArgs) -> Result<i32> {
    let tables = match args.remote.client().await? {
        Some(mut c) => c.list_tables(pb::ListTablesRequest {}).await.map_err(rpc_error)?.into_inner().tables.into_iter().map(Into::into).collect(),
        None => {
            let Some(root) = &args.root else { bail!("give the directory or URI holding the tables, or --coordinator") };
            sluice_common::describe::list_tables(Some(&args.storage.location(root)?), &[]).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tables)?);
        return Ok(0);
    }
    for t in &tables {
        println!("{:<24} v{:<6} {:>12} rows  {}", t.name, t.version, crate::ingest::thousands(t.rows), t.table_uri);
    }
    Ok(0)
}
