//! The coordinator's gRPC endpoint: `sluice.v1.JobService` (users),
//! `sluice.v1.CoordinatorService` (workers), `grpc.health.v1` and server
//! reflection (v1 and v1alpha, so grpcurl 1.8 can list and call).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_common::protocol::{Checkpoint, CoordinatorApi};
use sluice_common::{pb, Error};
use tonic::{Request, Response, Status};

use super::Cluster;
use pb::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use pb::job_service_server::{JobService, JobServiceServer};
use pb::table_service_server::{TableService, TableServiceServer};

/// Largest request accepted (a job spec with a long inline list).
const MAX_REQUEST_BYTES: usize = 16 << 20;

fn status(e: Error) -> Status {
    match e {
        Error::InvalidInput(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::Conflict(m) => Status::already_exists(m),
        Error::Busy(m) => Status::resource_exhausted(m),
        Error::Timeout(m) => Status::deadline_exceeded(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        e @ Error::InvalidSettings(_) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// Longest a query may run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// A page of query results ends at this size (clients' default limit is 4 MiB).
const PAGE_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct Api(Arc<Cluster>);

impl Api {
    /// The worker protocol under mutual TLS: a verified client certificate.
    fn worker<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.0.requires_worker_certs() && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(status(Error::Unauthenticated("workers must present a client certificate signed by the cluster CA".into())));
        }
        self.lead()
    }

    fn lead(&self) -> Result<(), Status> {
        self.0.check_leading().map_err(status)
    }

    /// A table named in a request (URI, absolute path, or name under the storage root).
    fn table(&self, given: &str) -> Result<sluice_common::table::TableHandle, Status> {
        if given.trim().is_empty() {
            return Err(status(Error::InvalidInput("table is required".into())));
        }
        let location = self.0.table_location(given, Default::default()).map_err(status)?;
        Ok(sluice_common::table::TableHandle::new(location, 32))
    }

    fn job(&self, id: &str) -> Result<Arc<super::ClusterJob>, Status> {
        if id.is_empty() {
            return Err(status(Error::InvalidInput("job_id is required".into())));
        }
        self.0.job(id).ok_or_else(|| status(Error::NotFound(format!("no job {id}"))))
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_job(&self, req: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        self.lead()?;
        let spec = req.into_inner().spec.ok_or_else(|| status(Error::InvalidInput("spec is required".into())))?;
        let job_id = self.0.submit(spec).await.map_err(status)?;
        Ok(Response::new(pb::SubmitJobResponse { job_id }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        self.lead()?;
        let id = req.into_inner().job_id;
        if let Some(status) = self.0.job(&id).is_none().then(|| self.0.archived(&id)).flatten() {
            return Ok(Response::new(status));
        }
        let job = self.job(&id)?;
        Ok(Response::new(self.0.status_of(&job)))
    }

    type WatchJobStream = StatusStream;

    async fn watch_job(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<StatusStream>, Status> {
        self.lead()?;
        let id = req.into_inner().job_id;
        if let Some(status) = self.0.job(&id).is_none().then(|| self.0.archived(&id)).flatten() {
            return Ok(Response::new(async_stream(move |tx| async move {
                let _ = tx.send(Ok(status)).await;
            })));
        }
        let job = self.job(&id)?;
        let cluster = self.0.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let status = cluster.status_of(&job);
                let done = !job.is_running();
                if tx.send(Ok(status)).await.is_err() || done {
                    return;
                }
                job.wait_change(Duration::from_millis(500)).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.lead()?;
        Ok(Response::new(pb::ListJobsResponse { jobs: self.0.statuses() }))
    }

    async fn list_workers(&self, _: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.lead()?;
        Ok(Response::new(self.0.workers()))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        self.lead()?;
        let job = self.job(&req.into_inner().job_id)?;
        if job.is_running() {
            job.request_cancel();
        }
        Ok(Response::new(self.0.status_of(&job)))
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<pb::QueryPage, Status>> + Send>>;

#[tonic::async_trait]
impl TableService for Api {
    type QueryStream = PageStream;

    async fn execute(&self, req: Request<pb::ExecuteRequest>) -> Result<Response<pb::ExecuteResponse>, Status> {
        self.lead()?;
        let req = req.into_inner();
        let to_json = sluice_common::insert::value_to_json;
        let request = sluice_common::sql::Request {
            query: req.query,
            params: req.params.into_iter().map(to_json).collect(),
            params_batch: (!req.params_batch.is_empty())
                .then(|| req.params_batch.into_iter().map(|l| l.values.into_iter().map(to_json).collect()).collect()),
            timeout_ms: (req.timeout_ms > 0).then_some(u64::from(req.timeout_ms)),
            max_rows: (req.max_rows > 0).then_some(req.max_rows as usize),
        };
        let workspace = Some(req.workspace.as_str()).filter(|w| !w.is_empty());
        let done = self.0.execute_sql(workspace, request, Some(req.idempotency_key)).await.map_err(status)?;
        Ok(Response::new(done.into_pb()))
    }

    async fn insert_rows(
        &self,
        req: Request<pb::InsertRowsRequest>,
    ) -> Result<Response<pb::InsertRowsResponse>, Status> {
        self.lead()?;
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let mut rows: Vec<_> = req.rows.into_iter().map(sluice_common::insert::struct_to_json).collect();
        rows.extend(sluice_common::insert::parse_json_rows(req.json_rows.iter().map(String::as_str)).map_err(status)?);
        let insert = sluice_common::insert::InsertRequest {
            rows,
            create_columns: req.create_columns.into_iter().map(Into::into).collect(),
            idempotency_key: Some(req.idempotency_key),
        };
        let done = sluice_common::insert::insert_rows(&table, insert).await.map_err(status)?;
        tracing::info!(table = %done.table_uri, rows = done.rows_inserted, version = done.version, replayed = done.replayed, "rows inserted");
        Ok(Response::new(done.into()))
    }

    async fn describe_table(
        &self,
        req: Request<pb::DescribeTableRequest>,
    ) -> Result<Response<pb::TableDescription>, Status> {
        self.lead()?;
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let job = Some(req.job_id.as_str()).filter(|j| !j.is_empty());
        let max_errors = if req.max_errors == 0 { 100 } else { req.max_errors as usize };
        let ds = sluice_common::describe::open(&table).await.map_err(status)?;
        let described = sluice_common::describe::describe(&table, &ds, job, max_errors).await.map_err(status)?;
        Ok(Response::new(described.into()))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        self.lead()?;
        let req = req.into_inner();
        let table = self.table(&req.table)?;
        let ds = sluice_common::describe::open(&table).await.map_err(status)?;
        let limit = if req.limit == 0 { 100 } else { req.limit as usize };
        let versions = sluice_common::describe::versions(&ds, limit).await.map_err(status)?;
        let versions = versions.into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListVersionsResponse { table_uri: table.location.uri.clone(), versions }))
    }

    async fn list_tables(&self, _: Request<pb::ListTablesRequest>) -> Result<Response<pb::ListTablesResponse>, Status> {
        self.lead()?;
        let root = self.0.storage_root().map_err(status)?;
        let mut others: Vec<String> = self.0.statuses().into_iter().map(|s| s.table_uri).filter(|u| !u.is_empty()).collect();
        others.sort();
        others.dedup();
        let tables = sluice_common::describe::list_tables(root.as_ref(), &others).await.map_err(status)?;
        Ok(Response::new(pb::ListTablesResponse { tables: tables.into_iter().map(Into::into).collect() }))
    }

    async fn query(&self, req: Request<pb::QueryRequest>) -> Result<Response<PageStream>, Status> {
        self.lead()?;
        let req = req.into_inner();
        if req.sql.trim().is_empty() {
            return Err(status(Error::InvalidInput("sql is required".into())));
        }
        let table = self.table(&req.table)?;
        let uri = table.location.uri.clone();
        let timeout = match req.timeout_seconds {
            0 => QUERY_TIMEOUT,
            n => Duration::from_secs(n.into()).min(QUERY_TIMEOUT),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = self.0.query_slot(deadline).await.map_err(status)?;
        let dataset = sluice_common::describe::open(&table).await.map_err(status)?;
        let limit = match req.limit {
            0 => 1000,
            n => n.min(100_000) as usize,
        };
        let name = sluice_common::query::table_name(&uri);
        let timed_out = move || status(Error::Timeout(format!("query timed out after {timeout:?}")));
        let mut batches = tokio::time::timeout_at(
            deadline,
            sluice_common::query::sql_stream(&dataset, &req.sql, &name, limit, req.include_blobs),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(status)?;
        let page_rows = if req.page_rows == 0 { 500 } else { req.page_rows as usize };
        // Pages go out as batches are computed; the small channel holds the
        // query back while the client is slow, and a client that leaves
        // ends it.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _slot = slot;
            let mut page = pb::QueryPage::default();
            let (mut bytes, mut sent) = (0usize, false);
            loop {
                let batch = match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut batches)).await {
                    Err(_) => Err(timed_out()),
                    Ok(None) => break,
                    Ok(Some(b)) => b.map_err(status),
                };
                let rows = batch.and_then(|b| {
                    if !sent && page.columns.is_empty() {
                        page.columns = sluice_common::query::column_names(std::slice::from_ref(&b));
                    }
                    sluice_common::query::json_rows(&[b]).map_err(status)
                });
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for row in rows {
                    bytes += row.len();
                    page.rows.push(row);
                    if page.rows.len() >= page_rows || bytes >= PAGE_BYTES {
                        if tx.send(Ok(std::mem::take(&mut page))).await.is_err() {
                            return;
                        }
                        (bytes, sent) = (0, true);
                    }
                }
            }
            if !page.rows.is_empty() || !sent {
                let _ = tx.send(Ok(page)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(f: F) -> StatusStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::JobStatus, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl CoordinatorService for Api {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        self.worker(&req)?;
        let admitted = CoordinatorApi::register(self.0.as_ref(), req.into_inner().into()).await.map_err(status)?;
        Ok(Response::new(admitted.into()))
    }

    async fn poll(&self, req: Request<pb::PollRequest>) -> Result<Response<pb::PollResponse>, Status> {
        self.worker(&req)?;
        let polled = CoordinatorApi::poll(self.0.as_ref(), req.into_inner().into()).await.map_err(status)?;
        Ok(Response::new(polled.into()))
    }

    async fn publish_checkpoint(&self, req: Request<pb::Checkpoint>) -> Result<Response<pb::CheckpointAck>, Status> {
        self.worker(&req)?;
        let checkpoint = Checkpoint::try_from(req.into_inner()).map_err(status)?;
        let ack = self.0.publish_checkpoint(checkpoint).await.map_err(status)?;
        Ok(Response::new(ack.into()))
    }

    async fn end_job(&self, req: Request<pb::JobEnded>) -> Result<Response<pb::JobEndedAck>, Status> {
        self.worker(&req)?;
        CoordinatorApi::end_job(self.0.as_ref(), req.into_inner().into()).await.map_err(status)?;
        Ok(Response::new(pb::JobEndedAck {}))
    }
}

/// The job API's authentication: `authorization: Bearer <token>`, one of
/// the configured tokens (when any are configured).
fn bearer_auth(cluster: Arc<Cluster>) -> impl tonic::service::Interceptor + Clone {
    move |req: Request<()>| {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        if cluster.authorized(token) {
            Ok(req)
        } else {
            Err(status(Error::Unauthenticated("a valid bearer token is required (authorization: Bearer <token>)".into())))
        }
    }
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// `shutdown` resolved.
    Shutdown,
    /// The leadership lease was lost: this process must stop so that no
    /// two coordinators act as leader (the caller exits; a restart stands by).
    LeadershipLost,
}

/// Requests in flight get this long to finish once leadership is lost.
const LOST_LEADERSHIP_GRACE: Duration = Duration::from_secs(2);

/// Serve until `shutdown` resolves or leadership is lost. Leadership is
/// campaigned for in the background; until this coordinator leads, the API
/// answers UNAVAILABLE and health says NOT_SERVING for the sluice services.
pub async fn serve(
    cluster: Arc<Cluster>,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> sluice_common::Result<Served> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<JobServiceServer<Api>>().await;
    health.set_not_serving::<CoordinatorServiceServer<Api>>().await;
    health.set_not_serving::<TableServiceServer<Api>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let api = Api(cluster.clone());
    let lost = tokio_util::sync::CancellationToken::new();
    let leading = {
        let (cluster, health, lost) = (cluster.clone(), health.clone(), lost.clone());
        tokio::spawn(async move {
            use backon::Retryable;
            let _ = (|| cluster.lead())
                .retry(sluice_common::retry::forever())
                .notify(|e, after| tracing::error!(error = %e, ?after, "cannot campaign for leadership; retrying"))
                .await;
            health.set_serving::<JobServiceServer<Api>>().await;
            health.set_serving::<CoordinatorServiceServer<Api>>().await;
            health.set_serving::<TableServiceServer<Api>>().await;
            if let Some(gone) = cluster.leadership_lost() {
                gone.cancelled().await;
                health.set_not_serving::<JobServiceServer<Api>>().await;
                health.set_not_serving::<CoordinatorServiceServer<Api>>().await;
                health.set_not_serving::<TableServiceServer<Api>>().await;
                lost.cancel();
            }
        })
    };
    let stop = {
        let lost = lost.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = lost.cancelled() => {}
            }
        }
    };
    tracing::info!(%listen, "coordinator listening");
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = cluster.tls().server()? {
        server = server.tls_config(tls).map_err(|e| Error::InvalidInput(format!("TLS: {e}")))?;
    }
    let server = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            JobServiceServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
            bearer_auth(cluster.clone()),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            TableServiceServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
            bearer_auth(cluster.clone()),
        ))
        .add_service(CoordinatorServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_shutdown(listen, stop);
    // Streams (WatchJob, worker polls) may hold a graceful shutdown open; a
    // coordinator that lost the lead does not wait for them long.
    let result = tokio::select! {
        r = server => r.map_err(|e| Error::Internal(format!("gRPC server: {e}"))),
        () = async { lost.cancelled().await; tokio::time::sleep(LOST_LEADERSHIP_GRACE).await } => Ok(()),
    };
    leading.abort();
    result?;
    Ok(if lost.is_cancelled() { Served::LeadershipLost } else { Served::Shutdown })
}
