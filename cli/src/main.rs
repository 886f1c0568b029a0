//! `sluice`: ingest files into a versioned Lance table, on one machine or a cluster.

mod bench;
mod bench_coordinator;
mod bench_media;
mod bench_storage;
mod cluster;
mod corpus;
mod embedded;
mod gc;
mod ingest;
mod inspect;
mod knobs;
mod logs;
mod query;
mod sql;
mod storage_args;
mod table;
mod telemetry;

use clap::{Parser, Subcommand};

/// The version, and whether this build carries the test hooks.
#[cfg(feature = "testing")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (with test hooks)");
#[cfg(not(feature = "testing"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(name = "sluice", version = VERSION, about = "Ingest files of every kind into one versioned Lance table")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files (directories, globs, paths or a manifest) into a table, on this machine.
    Ingest(ingest::IngestArgs),
    /// Show a table: schema, versions, rows per kind, samples, failed files.
    Inspect(inspect::InspectArgs),
    /// SQL over a table: `sluice query --table ./lake "SELECT kind, count(*) FROM lake GROUP BY kind"`.
    Query(query::QueryArgs),
    /// One SQL statement, Postgres spelling (CREATE TABLE, INSERT with $n parameters, SELECT, DELETE, DROP TABLE), as JSON.
    Sql(sql::SqlArgs),
    /// Append rows (JSON lines, columns by name) to a table, creating it with `--columns` if absent.
    Insert(table::InsertArgs),
    /// List the tables under a directory or URI, or a coordinator's.
    Tables(table::TablesArgs),
    /// Remove unreferenced data files (uncommitted fragments of killed runs) and optionally old versions.
    Gc(gc::GcArgs),
    /// Generate a sample corpus of mixed files (text, images, binary, bad files).
    SampleCorpus(corpus::CorpusArgs),
    /// Generate a corpus and measure an ingest of it: files/s, rows/s, MB/s, peak RSS.
    Bench(bench::BenchArgs),
    /// Video and PDF throughput against bare ffmpeg/pdfium on the same files.
    BenchMedia(bench_media::BenchMediaArgs),
    /// Upload throughput: an ingest to object storage against a bare object_store upload of the same bytes.
    BenchStorage(bench_storage::BenchStorageArgs),
    /// The coordinator alone: plan a big manifest, absorb simulated workers' checkpoints.
    BenchCoordinator(bench_coordinator::BenchCoordinatorArgs),
    /// Run a coordinator: job API, worker protocol, leader election (with etcd).
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker that takes shards from the leading coordinator.
    Worker(cluster::WorkerArgs),
    /// Submit a job to a cluster.
    Submit(cluster::SubmitArgs),
    /// One line of a job's status.
    Status(cluster::JobArgs),
    /// Follow a job until it ends (exit code as `ingest`).
    Watch(cluster::JobArgs),
    /// Cancel a job: files in flight finish, complete files are committed.
    Cancel(cluster::JobArgs),
    /// List the cluster's jobs.
    Jobs(cluster::ClientArgs),
    /// List the workers the leading coordinator knows.
    Workers(cluster::WorkersArgs),
    /// Serve normalization of PDFs and images on stdin/stdout (started by
    /// workers where `sluice-normalizer` is not installed).
    #[command(hide = true)]
    NormalizeServer,
}

#[global_allocator]
static ALLOC: sluice_worker::alloc::HugePages = sluice_worker::alloc::HugePages;

fn main() {
    sluice_worker::limit_malloc_arenas();
    sluice_worker::map_large_allocations();
    sluice_worker::size_uploads();
    sluice_worker::alloc::HugePages::enable();
    let cli = Cli::parse();
    // Long-running roles log their work; one-shot commands only problems.
    let default = match cli.command {
        Command::Coordinator(_) | Command::Worker(_) => "info,lance=warn",
        _ => "warn,lance=error",
    };
    logs::init(default);
    if let Command::NormalizeServer = cli.command {
        sluice_worker::isolation::serve_stdio();
    }
    sluice_common::tls::install_crypto_provider();
    // The blocking pool serves the files normalized at once: the ingest's
    // knob, or for a worker (whose jobs bring their own) one per core and
    // at least the default.
    let normalizers = match &cli.command {
        Command::Ingest(a) => a.knobs.normalization_workers,
        _ => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            sluice_common::settings::Settings::DEFAULT.normalization_workers.max(cores)
        }
    };
    let runtime = sluice_worker::runtime(normalizers).expect("tokio runtime");
    let code = runtime.block_on(async {
        let result = match cli.command {
            Command::Ingest(a) => ingest::run(a).await,
            Command::Inspect(a) => inspect::run(a).await.map(|()| 0),
            Command::Query(a) => query::run(a).await,
            Command::Sql(a) => sql::run(a).await,
            Command::Insert(a) => table::insert(a).await,
            Command::Tables(a) => table::tables(a).await,
            Command::Gc(a) => gc::run(a).await.map(|()| 0),
            Command::SampleCorpus(a) => corpus::run(a).map(|()| 0),
            Command::Bench(a) => bench::run(a).await.map(|()| 0),
            Command::BenchMedia(a) => bench_media::run(a).map(|()| 0),
            Command::BenchStorage(a) => bench_storage::run(a).await.map(|()| 0),
            Command::BenchCoordinator(a) => bench_coordinator::run(a).await.map(|()| 0),
            Command::Coordinator(a) => cluster::coordinator(a).await,
            Command::Worker(a) => cluster::worker(a).await,
            Command::Submit(a) => cluster::submit(a).await,
            Command::Status(a) => cluster::status(a).await,
            Command::Watch(a) => cluster::watch(a).await,
            Command::Cancel(a) => cluster::cancel(a).await,
            Command::Jobs(a) => cluster::jobs(a).await,
            Command::Workers(a) => cluster::workers(a).await,
            Command::NormalizeServer => unreachable!("handled before the runtime starts"),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    // Leave at once: background tasks of a finished job have nothing left to do.
    std::process::exit(code);
}
