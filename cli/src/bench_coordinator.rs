//! `sluice bench-coordinator`: the coordinator alone, under a big manifest.
//! Creates N empty files and a manifest listing them, starts a coordinator
//! in this process, submits the job over gRPC, and lets simulated workers
//! (gRPC clients doing no normalization) poll shards and publish one clean
//! checkpoint per shard. Measures planning and checkpoint absorption: the
//! coordinator's own work, not the workers' and not table writes (the
//! checkpoints carry no fragments).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sluice_common::pb;
use sluice_coordinator::cluster::{Cluster, ClusterConfig};

#[derive(clap::Args, Debug)]
pub struct BenchCoordinatorArgs {
    /// Manifest entries (empty files are created for them)
    #[arg(long, default_value_t = 1_000_000)]
    pub files: usize,
    /// Simulated workers
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Files per shard
    #[arg(long, default_value_t = 256)]
    pub shard_files: u32,
    /// Working directory (files, manifest, table); reused if it holds the files
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn make_files(dir: &std::path::Path, n: usize) -> Result<PathBuf> {
    let manifest = dir.join(format!("manifest-{n}.txt"));
    if manifest.exists() {
        return Ok(manifest);
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&manifest)?);
    for i in 0..n {
        let sub = dir.join("files").join(format!("{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let path = sub.join(format!("{i:07}.bin"));
        std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut out, format!("{}\n", path.display()).as_bytes())?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(manifest)
}

async fn simulated_worker(addr: String, name: String) -> Result<u64> {
    use pb::coordinator_service_client::CoordinatorServiceClient;
    let mut client = CoordinatorServiceClient::connect(addr).await?;
    client.register_worker(pb::RegisterWorkerRequest { worker_id: name.clone(), ..Default::default() }).await?;
    let mut seq = 0;
    loop {
        let resp = client.poll(pb::PollRequest { worker_id: name.clone(), free_slots: 1 }).await?.into_inner();
        if resp.reregister {
            bail!("coordinator forgot {name}");
        }
        if resp.assignments.is_empty() && !resp.stop_jobs.is_empty() {
            return Ok(seq);
        }
        for a in resp.assignments {
            seq += 1;
            let completed = a
                .files
                .iter()
                .map(|f| pb::FileCompleted { uri: f.uri.clone(), shard_id: a.shard_id.clone(), kind: "other".into(), rows: 1, bytes: 0 })
                .collect();
            let ack = client
                .publish_checkpoint(pb::Checkpoint {
                    job_id: a.job_id.clone(),
                    worker_id: name.clone(),
                    seq,
                    rows: a.files.len() as u64,
                    completed,
                    clean: true,
                    shards_finished: vec![a.shard_id.clone()],
                    shard_generations: HashMap::from([(a.shard_id.clone(), a.generation)]),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if !ack.accepted {
                bail!("checkpoint refused: {}", ack.reason);
            }
        }
    }
}

pub async fn run(args: BenchCoordinatorArgs) -> Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("sluice-bench-coordinator"));
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let manifest = make_files(&dir, args.files).context("creating the files")?;
    let created = t.elapsed().as_secs_f64();
    let table = dir.join(format!("table-{}", std::process::id()));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::new(ClusterConfig {
        heartbeat: Duration::from_millis(200),
        worker_timeout: Duration::from_secs(60),
        etcd: vec![],
        etcd_prefix: "/sluice".into(),
        lease_ttl: Duration::from_secs(10),
        advertise: addr.clone(),
        storage_root: None,
        allowed_roots: vec![std::fs::canonicalize(&dir)?],
        tokens: Default::default(),
        tls: Default::default(),
    })
    .await?;
    let listen = format!("127.0.0.1:{port}").parse()?;
    tokio::spawn(sluice_coordinator::cluster::serve(cluster.clone(), listen, std::future::pending()));
    let mut jobs = loop {
        match pb::job_service_client::JobServiceClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let rss_before = sluice_coordinator::progress::peak_rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let spec = pb::JobSpec {
        table: Some(pb::TableRef { uri: table.display().to_string(), storage_options: Default::default() }),
        manifest: Some(pb::Manifest { source: Some(pb::manifest::Source::ManifestUri(manifest.display().to_string())) }),
        shard_files: args.shard_files,
        ..Default::default()
    };
    let job_id = loop {
        match jobs.submit_job(pb::SubmitJobRequest { spec: Some(spec.clone()) }).await {
            Ok(r) => break r.into_inner().job_id,
            Err(s) if s.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => bail!("submit: {}", s.message()),
        }
    };
    let workers: Vec<_> =
        (0..args.workers).map(|i| tokio::spawn(simulated_worker(addr.clone(), format!("sim-{i}")))).collect();
    let mut checkpoints = 0;
    for w in workers {
        checkpoints += w.await??;
    }
    let status = loop {
        let s = jobs.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await?.into_inner();
        if !matches!(pb::JobState::try_from(s.state), Ok(pb::JobState::Running | pb::JobState::Planning)) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let p = status.progress.unwrap_or_default();
    let peak = sluice_coordinator::progress::peak_rss_bytes().unwrap_or(0);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "files": args.files,
            "files_created_seconds": created,
            "simulated_workers": args.workers,
            "shard_files": args.shard_files,
            "state": status.state,
            "message": status.message,
            "files_done": p.files_done,
            "shards": p.shards_total,
            "checkpoints": checkpoints,
            "seconds": secs,
            "files_per_sec": p.files_done as f64 / secs,
            "checkpoints_per_sec": checkpoints as f64 / secs,
            "peak_rss_mb": peak as f64 / 1e6,
            "peak_rss_mb_before_job": rss_before as f64 / 1e6,
        }))?
    );
    let _ = std::fs::remove_dir_all(&table);
    Ok(())
}
