//! `sluice sql "SQL"`: one statement in the Postgres spelling (CREATE
//! TABLE, INSERT with `$n` parameters, SELECT, DELETE, DROP TABLE) over
//! tables named under a storage root (`"ws"."t"` is `ROOT/ws/t`), here or
//! through a coordinator. Prints the JSON the HTTP API answers with; a
//! failure prints `{"error": ..., "status": ...}` (the HTTP status it
//! would have) and exits with 1.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sluice_common::{pb, sql};

use crate::storage_args::StorageArgs;
use crate::table::Remote;

#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// The statement; "-" reads a whole request from standard input:
    /// {"query": SQL, "params": [...]} or {"query": SQL, "params_batch": [[...], ...]}
    pub query: String,
    /// Values of $1, $2, ... as a JSON array
    #[arg(long)]
    pub params: Option<String>,
    /// Run the statement once per parameter set, in one commit: a JSON array of arrays
    #[arg(long, conflicts_with = "params")]
    pub params_batch: Option<String>,
    /// Where tables live ("ws"."t" is ROOT/ws/t)
    #[arg(long, env = "SLUICE_STORAGE_URI", default_value = "./sluice-lake", conflicts_with = "coordinator")]
    pub storage_uri: String,
    /// The workspace of unqualified table names (default: directly under the root)
    #[arg(long, env = "SLUICE_WORKSPACE")]
    pub workspace: Option<String>,
    /// A retried INSERT with the same key lands once
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: SqlArgs) -> Result<i32> {
    let request = match request(&args) {
        Ok(r) => r,
        Err(e) => return Ok(fail(400, &format!("{e:#}"))),
    };
    let outcome = match args.remote.client().await? {
        Some(mut client) => remote(&mut client, &args, request).await?,
        None => {
            let location = args.storage.location(&args.storage_uri)?;
            let catalog = sql::Catalog::new(&location.uri, location.storage_options)?;
            match sql::execute(&catalog, args.workspace.as_deref(), request, args.idempotency_key.clone()).await {
                Ok(done) => Ok(serde_json::to_value(done)?),
                Err(e) => Err((e.http_status(), e.message())),
            }
        }
    };
    Ok(match outcome {
        Ok(done) => {
            println!("{done}");
            0
        }
        Err((status, message)) => fail(status, &message),
    })
}

fn fail(status: u16, message: &str) -> i32 {
    println!("{}", json!({ "error": message, "status": status }));
    1
}

fn request(args: &SqlArgs) -> Result<sql::Request> {
    if args.query == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)?;
        return serde_json::from_str(&text).context("standard input is not a JSON request");
    }
    let parse = |what: &str, text: &Option<String>| -> Result<Option<Value>> {
        text.as_deref().map(|t| serde_json::from_str(t).with_context(|| format!("--{what} is not JSON"))).transpose()
    };
    Ok(sql::Request {
        query: args.query.clone(),
        params: serde_json::from_value(parse("params", &args.params)?.unwrap_or(json!([]))).context("--params must be a JSON array")?,
        params_batch: parse("params-batch", &args.params_batch)?
            .map(serde_json::from_value)
            .transpose()
            .context("--params-batch must be a JSON array of arrays")?,
        ..Default::default()
    })
}

/// The statement run by a coordinator (`TableService.Execute`).
async fn remote(client: &mut crate::cluster::TableClient, args: &SqlArgs, request: sql::Request) -> Result<Result<Value, (u16, String)>> {
    let req = pb::ExecuteRequest {
        workspace: args.workspace.clone().unwrap_or_default(),
        query: request.query,
        params: request.params.into_iter().map(sluice_common::insert::json_to_value).collect(),
        params_batch: request
            .params_batch
            .unwrap_or_default()
            .into_iter()
            .map(|set| prost_types::ListValue { values: set.into_iter().map(sluice_common::insert::json_to_value).collect() })
            .collect(),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        timeout_ms: request.timeout_ms.unwrap_or_default() as u32,
        max_rows: request.max_rows.unwrap_or_default() as u32,
    };
    match client.execute(req).await {
        Ok(done) => {
            let done = done.into_inner();
            let rows: Vec<Value> = done.rows.iter().map(|r| serde_json::from_str(r)).collect::<Result<_, _>>()?;
            let mut out = json!({ "command": done.command, "columns": done.columns, "rows": rows, "row_count": done.row_count });
            if done.version > 0 {
                out["version"] = json!(done.version);
            }
            if done.replayed {
                out["replayed"] = json!(true);
            }
            if done.truncated {
                out["truncated"] = json!(true);
            }
            Ok(Ok(out))
        }
        Err(s) => {
            use tonic::Code;
            let status = match s.code() {
                Code::InvalidArgument => 400,
                Code::Unauthenticated => 401,
                Code::NotFound => 404,
                Code::DeadlineExceeded => 408,
                Code::AlreadyExists => 409,
                Code::ResourceExhausted => 429,
                Code::Unavailable => 503,
                _ => 500,
            };
            Ok(Err((status, s.message().to_string())))
        }
    }
}
