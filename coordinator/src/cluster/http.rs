//! The coordinator's HTTP API (`--http-listen`), beside gRPC:
//!
//! - SQL: `POST /workspaces/{ws}/tables/query` (and `POST /tables/query`
//!   for tables directly under the storage root) with
//!   `{"query": SQL, "params": [...]}` or `{"query": SQL, "params_batch": [[...], ...]}`;
//!   an `Idempotency-Key` header makes a retried insert land once.
//! - Tables: `GET /workspaces/{ws}/tables`, `GET|DELETE /workspaces/{ws}/tables/{t}`
//!   (and the same without `/workspaces/{ws}`).
//! - Tables as the gRPC `TableService` gives them: `GET /v1/tables` (under
//!   the storage root, and those jobs wrote), `GET /v1/tables/describe?table=T`,
//!   `GET /v1/tables/versions?table=T&limit=N` (T: a name or a URI).
//! - Jobs: `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//!   `POST /v1/jobs/{id}/cancel`, `GET /v1/jobs/{id}/errors?limit=N&contains=TEXT`,
//!   `GET /v1/jobs/{id}/history`, `GET /v1/jobs/{id}/workers`,
//!   `GET /v1/jobs/{id}/versions`; `GET /v1/workers`.
//! - The dashboard: `/` and its files under `/ui/` (open: the page asks for
//!   a token when the API wants one).
//! - Operations: `/metrics`, `/healthz`, `/readyz` (open, like gRPC health).
//!
//! Everything else takes the job API's bearer tokens. Errors are JSON
//! `{"error": "..."}`: 400 for a bad request, 401 without a valid token,
//! 404 for what does not exist, 409 for a table that does, 413 for a body
//! over the limit, 429 when every query slot is busy, 503 on a standby.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_common::settings::Settings;
use sluice_common::sql;
use sluice_common::{pb, Error};

use super::{Cluster, ClusterJob};

/// Largest SQL request body.
const MAX_SQL_BYTES: usize = 16 << 20;
/// Largest job submission (an inline list of files with their values).
const MAX_JOB_BYTES: usize = 64 << 20;

/// A JSON answer. (axum's own `Json` needs a feature that turns on
/// serde_json's `raw_value` for the whole build.)
struct Json<T>(T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// An error as the API answers it.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.message())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError(r.status(), r.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Every API route, behind bearer tokens (the process adds its open
/// operations endpoints).
pub fn router(cluster: Arc<Cluster>) -> sluice_common::Result<Router> {
    let sql_routes = Router::new()
        .route("/tables/query", post(root_sql))
        .route("/workspaces/{ws}/tables/query", post(workspace_sql))
        .layer(DefaultBodyLimit::max(MAX_SQL_BYTES));
    let job_routes = Router::new().route("/v1/jobs", post(submit_job).get(list_jobs)).layer(DefaultBodyLimit::max(MAX_JOB_BYTES));
    let api = Router::new()
        .merge(sql_routes)
        .merge(job_routes)
        .route("/tables", get(root_tables))
        .route("/workspaces/{ws}/tables", get(workspace_tables))
        .route("/tables/{table}", get(describe_root).delete(drop_root))
        .route("/workspaces/{ws}/tables/{table}", get(describe_in_workspace).delete(drop_in_workspace))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/workers", get(list_workers))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/errors", get(job_errors))
        .route("/v1/jobs/{id}/history", get(job_history))
        .route("/v1/jobs/{id}/workers", get(job_workers))
        .route("/v1/jobs/{id}/versions", get(job_versions))
        .route("/v1/tables", get(all_tables))
        .route("/v1/tables/describe", get(describe_any))
        .route("/v1/tables/versions", get(versions_of_any))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(cluster.clone(), guard))
        .with_state(cluster);
    Ok(super::dashboard::routes().merge(api))
}

/// A query string as `T`; unknown or malformed parameters are a 400.
fn query<T: serde::de::DeserializeOwned>(raw: Option<&str>) -> ApiResult<T> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| bad(format!("bad query string: {e}")))
}

/// Bearer tokens (when configured) and leadership, for every API route.
async fn guard(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    if !cluster.authorized(token) {
        return ApiError(StatusCode::UNAUTHORIZED, "a valid bearer token is required (Authorization: Bearer <token>)".into())
            .into_response();
    }
    if !cluster.is_leader() {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "this coordinator is a standby; the leader serves the API".into())
            .into_response();
    }
    next.run(request).await
}

async fn root_sql(state: State<Arc<Cluster>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<sql::Response>> {
    run_sql(state, None, headers, body).await
}

async fn workspace_sql(
    state: State<Arc<Cluster>>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<sql::Response>> {
    run_sql(state, Some(ws), headers, body).await
}

async fn run_sql(
    State(cluster): State<Arc<Cluster>>,
    workspace: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<sql::Response>> {
    let request: sql::Request = parse_body(&body?)?;
    let key = headers.get("idempotency-key").map(|v| v.to_str().map(String::from)).transpose().map_err(|_| bad("Idempotency-Key must be text"))?;
    let done = cluster.execute_sql(workspace.as_deref(), request, key).await?;
    Ok(Json(done))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| bad(format!("the body is not the expected JSON: {e}")))
}

#[derive(Serialize)]
struct TableEntry {
    table_name: String,
    table_uri: String,
    version: u64,
    rows: u64,
}

async fn root_tables(state: State<Arc<Cluster>>) -> ApiResult<Json<Value>> {
    list_tables(state, None).await
}

async fn workspace_tables(state: State<Arc<Cluster>>, Path(ws): Path<String>) -> ApiResult<Json<Value>> {
    list_tables(state, Some(ws)).await
}

async fn list_tables(State(cluster): State<Arc<Cluster>>, workspace: Option<String>) -> ApiResult<Json<Value>> {
    let tables = cluster.catalog()?.tables(workspace.as_deref()).await?;
    let tables: Vec<TableEntry> =
        tables.into_iter().map(|t| TableEntry { table_name: t.name, table_uri: t.table_uri, version: t.version, rows: t.rows }).collect();
    Ok(Json(json!({ "tables": tables })))
}

async fn describe_root(state: State<Arc<Cluster>>, Path(table): Path<String>) -> ApiResult<Json<sluice_common::describe::TableDescription>> {
    describe(state, None, table).await
}

async fn describe_in_workspace(state: State<Arc<Cluster>>, Path((ws, table)): Path<(String, String)>) -> ApiResult<Json<sluice_common::describe::TableDescription>> {
    describe(state, Some(ws), table).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableQuery {
    /// A name under the storage root (`ws/name` in a workspace) or a URI.
    table: String,
    limit: Option<usize>,
}

fn table_handle(cluster: &Cluster, q: Option<String>) -> ApiResult<(sluice_common::table::TableHandle, Option<usize>)> {
    let q: TableQuery = query(q.as_deref())?;
    if q.table.trim().is_empty() {
        return Err(bad("table= is required"));
    }
    let location = cluster.table_location(&q.table, Default::default())?;
    Ok((sluice_common::table::TableHandle::new(location, 32), q.limit))
}

/// Tables under the storage root and those jobs wrote (`TableService.ListTables`).
async fn all_tables(State(cluster): State<Arc<Cluster>>) -> ApiResult<Json<Value>> {
    let root = cluster.storage_root()?;
    let mut others: Vec<String> = cluster.statuses().into_iter().map(|s| s.table_uri).filter(|u| !u.is_empty()).collect();
    others.sort();
    others.dedup();
    let tables = sluice_common::describe::list_tables(root.as_ref(), &others).await?;
    Ok(Json(json!({ "tables": tables })))
}

/// One table: rows, rows per kind, columns, failed files (`TableService.DescribeTable`).
async fn describe_any(State(cluster): State<Arc<Cluster>>, RawQuery(q): RawQuery) -> ApiResult<Json<sluice_common::describe::TableDescription>> {
    let (handle, _) = table_handle(&cluster, q)?;
    let ds = sluice_common::describe::open(&handle).await?;
    Ok(Json(sluice_common::describe::describe(&handle, &ds, None, 100).await?))
}

/// The newest versions of a table (default 20, at most 1000), newest first
/// (`TableService.ListVersions`).
async fn versions_of_any(State(cluster): State<Arc<Cluster>>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let (handle, limit) = table_handle(&cluster, q)?;
    let limit = limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(bad(format!("limit={limit}: give 1 to 1000")));
    }
    let ds = sluice_common::describe::open(&handle).await?;
    let versions = sluice_common::describe::versions(&ds, limit).await?;
    Ok(Json(json!({ "table_uri": handle.location.uri, "versions": versions })))
}

async fn describe(State(cluster): State<Arc<Cluster>>, workspace: Option<String>, table: String) -> ApiResult<Json<sluice_common::describe::TableDescription>> {
    let handle = cluster.catalog()?.handle(workspace.as_deref(), &table)?;
    let ds = sluice_common::describe::open(&handle).await?;
    Ok(Json(sluice_common::describe::describe(&handle, &ds, None, 100).await?))
}

async fn drop_root(state: State<Arc<Cluster>>, Path(table): Path<String>) -> ApiResult<Json<sql::Response>> {
    drop_table(state, None, table).await
}

async fn drop_in_workspace(state: State<Arc<Cluster>>, Path((ws, table)): Path<(String, String)>) -> ApiResult<Json<sql::Response>> {
    drop_table(state, Some(ws), table).await
}

async fn drop_table(State(cluster): State<Arc<Cluster>>, workspace: Option<String>, table: String) -> ApiResult<Json<sql::Response>> {
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(bad(format!("table name `{table}` is not valid")));
    }
    let request = sql::Request { query: format!("DROP TABLE \"{table}\""), ..Default::default() };
    Ok(Json(cluster.execute_sql(workspace.as_deref(), request, None).await?))
}

/// A job as the JSON API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    /// A name under the storage root, `workspace/name`, or a URI.
    table: String,
    /// Files (or directories, or prefixes) with per-file values.
    #[serde(default)]
    files: Vec<FileEntry>,
    /// A prefix (directory or object-store prefix) whose files are all ingested.
    #[serde(default)]
    prefix: Option<String>,
    /// A manifest file (one path per line; CSV with a header or JSON lines
    /// with per-file values).
    #[serde(default)]
    manifest: Option<String>,
    /// Columns of per-file values; left out: inferred from the values.
    #[serde(default)]
    columns: Vec<ColumnEntry>,
    /// Pipeline knobs; those left out take their defaults.
    #[serde(default)]
    settings: Option<Settings>,
    #[serde(default)]
    max_errors: Option<u64>,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    shard_files: Option<u32>,
    #[serde(default)]
    shard_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Path(String),
    WithValues(FileWithValues),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWithValues {
    path: String,
    #[serde(default)]
    attributes: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnEntry {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

impl JobRequest {
    fn into_spec(self) -> ApiResult<pb::JobSpec> {
        use pb::manifest::Source;
        let source = match (self.files.is_empty(), self.prefix, self.manifest) {
            (false, None, None) => {
                let mut list = pb::InlineList::default();
                for f in self.files {
                    match f {
                        FileEntry::Path(uri) => list.files.push(pb::InlineFile { uri, attributes: None }),
                        FileEntry::WithValues(FileWithValues { path, attributes }) => {
                            let attributes = (!attributes.is_empty()).then(|| sluice_common::insert::json_to_struct(attributes));
                            list.files.push(pb::InlineFile { uri: path, attributes });
                        }
                    }
                }
                Source::Inline(list)
            }
            (true, Some(prefix), None) => Source::Prefix(prefix),
            (true, None, Some(manifest)) => Source::ManifestUri(manifest),
            _ => return Err(bad("give exactly one of files, prefix or manifest")),
        };
        let settings = self.settings.unwrap_or_default();
        settings.validate()?;
        Ok(pb::JobSpec {
            table: Some(pb::TableRef { uri: self.table, storage_options: Default::default() }),
            manifest: Some(pb::Manifest { source: Some(source) }),
            settings: Some(pb::PipelineSettings::from(&settings)),
            max_errors: self.max_errors,
            job_id: self.job_id.unwrap_or_default(),
            shard_files: self.shard_files.unwrap_or_default(),
            shard_bytes: self.shard_bytes.unwrap_or_default(),
            columns: self.columns.into_iter().map(|c| pb::ColumnDef { name: c.name, r#type: c.ty, required: false }).collect(),
        })
    }
}

async fn submit_job(State(cluster): State<Arc<Cluster>>, body: Result<Bytes, BytesRejection>) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: JobRequest = parse_body(&body?)?;
    let job_id = cluster.submit(request.into_spec()?).await?;
    Ok((StatusCode::CREATED, Json(json!({ "job_id": job_id }))))
}

/// A job's status as JSON.
#[derive(Serialize)]
struct JobView {
    job_id: String,
    /// planning, running, succeeded, completed_with_errors, aborted, failed, cancelled
    state: String,
    message: String,
    table_uri: String,
    submitted_ms: i64,
    seconds: f64,
    /// Times a new leader took the job over and resumed it.
    takeovers: u32,
    progress: pb::JobProgress,
    /// Files finished a second: over about the last 30 seconds while the
    /// job runs, over the whole job once it ended (jobs run by this
    /// coordinator).
    files_per_second: Option<f64>,
    /// Seconds left at that rate, once every file is planned.
    eta_seconds: Option<f64>,
}

impl From<pb::JobStatus> for JobView {
    fn from(s: pb::JobStatus) -> Self {
        let state = pb::JobState::try_from(s.state).unwrap_or(pb::JobState::Unspecified);
        let state = state.as_str_name().trim_start_matches("JOB_STATE_").to_ascii_lowercase();
        JobView {
            job_id: s.job_id,
            state,
            message: s.message,
            table_uri: s.table_uri,
            submitted_ms: s.submitted_ms,
            seconds: s.seconds,
            takeovers: s.takeovers,
            progress: s.progress.unwrap_or_default(),
            files_per_second: None,
            eta_seconds: None,
        }
    }
}

impl JobView {
    /// The status with the rate and time left of a job run here.
    fn of(status: pb::JobStatus, job: Option<&ClusterJob>) -> Self {
        let mut view = JobView::from(status);
        let rate = job.and_then(|j| match j.is_running() {
            true => j.watch.files_per_second(),
            false => {
                let p = &j.progress;
                let secs = j.elapsed().as_secs_f64();
                (secs > 0.0).then(|| p.files_finished() as f64 / secs)
            }
        });
        if let Some(rate) = rate {
            view.files_per_second = Some(rate);
            let p = &view.progress;
            let left = p.files_total.saturating_sub(p.files_done + p.files_failed + p.files_skipped);
            if view.state == "running" && p.planning_done && rate > 0.0 {
                view.eta_seconds = Some(left as f64 / rate);
            }
        }
        view
    }
}

fn status_of(cluster: &Cluster, id: &str) -> ApiResult<pb::JobStatus> {
    match cluster.job(id) {
        Some(job) => Ok(cluster.status_of(&job)),
        None => cluster.archived(id).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

async fn list_jobs(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    let mut jobs: Vec<JobView> = cluster.statuses().into_iter().map(|s| {
        let job = cluster.job(&s.job_id);
        JobView::of(s, job.as_deref())
    }).collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_ms));
    Json(json!({ "jobs": jobs }))
}

async fn list_workers(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    Json(workers_json(&cluster.workers()))
}

/// The workers as JSON (HTTP API and `sluice workers --json`).
pub fn workers_json(list: &pb::ListWorkersResponse) -> Value {
    let workers: Vec<Value> = list
        .workers
        .iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "registered_ms": w.registered_ms,
                "seconds_since_seen": w.seconds_since_seen,
                "leased": w.leased,
                "shards_held": w.shards_held,
                "shards_taken": w.shards_taken,
                "checkpoints": w.checkpoints,
            })
        })
        .collect();
    json!({ "workers": workers, "workers_lost": list.workers_lost })
}

async fn get_job(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::of(status_of(&cluster, &id)?, cluster.job(&id).as_deref())))
}

async fn cancel_job(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    if let Some(job) = cluster.job(&id).filter(|j| j.is_running()) {
        job.request_cancel();
    }
    Ok(Json(JobView::of(status_of(&cluster, &id)?, cluster.job(&id).as_deref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsQuery {
    limit: Option<usize>,
    /// Only failures whose file or reason holds this text (any case).
    contains: Option<String>,
}

/// The files a job could not ingest, with the reason (the table's error ledger).
async fn job_errors(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q: ErrorsQuery = query(q.as_deref())?;
    let limit = q.limit.unwrap_or(10_000);
    let status = status_of(&cluster, &id)?;
    let location = cluster.table_location(&status.table_uri, Default::default())?;
    let mut errors = sluice_common::ledger::ErrorLedger::new(&location)?.list(Some(&id)).await?;
    let total = errors.len();
    if let Some(text) = q.contains.map(|t| t.to_lowercase()).filter(|t| !t.is_empty()) {
        errors.retain(|e| e.uri.to_lowercase().contains(&text) || e.reason.to_lowercase().contains(&text));
    }
    let matching = errors.len();
    errors.truncate(limit);
    Ok(Json(json!({ "job_id": id, "total": total, "matching": matching, "errors": errors })))
}

/// A job run by this coordinator, or 404 (also for one that ended under an
/// earlier leader: its history was not kept).
fn watched(cluster: &Cluster, id: &str) -> ApiResult<Arc<ClusterJob>> {
    cluster.job(id).ok_or_else(|| match cluster.archived(id) {
        Some(_) => ApiError(StatusCode::NOT_FOUND, format!("job {id} ran under an earlier leader; its history was not kept")),
        None => ApiError(StatusCode::NOT_FOUND, format!("no job {id}")),
    })
}

/// The job's counters over time (cumulative; rates are their differences).
async fn job_history(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = watched(&cluster, &id)?;
    let (every, samples) = job.watch.history();
    Ok(Json(json!({ "job_id": id, "every_seconds": every, "samples": samples })))
}

/// Each worker's part in the job.
async fn job_workers(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = watched(&cluster, &id)?;
    Ok(Json(json!({ "job_id": id, "workers": cluster.job_workers(&job) })))
}

/// The table versions the job committed (the newest ones kept).
async fn job_versions(State(cluster): State<Arc<Cluster>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = watched(&cluster, &id)?;
    let (commits, versions) = job.watch.commits();
    Ok(Json(json!({ "job_id": id, "commits": commits, "versions": versions })))
}
