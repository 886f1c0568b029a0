//! `sluice gc`: remove data files no table version references (fragments of
//! killed runs or lost workers that were never committed), and optionally
//! old versions. Lance's cleanup does the work: an unreferenced file is
//! removed once it is 7 days old (it could belong to a write in progress),
//! or at once with `--orphans-now` when nothing is writing the table.

use anyhow::Result;
use lance::dataset::cleanup::CleanupPolicy;
use serde_json::json;

use crate::storage_args::StorageArgs;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Table location
    pub table: String,
    /// Also remove versions older than this (e.g. 30d); by default every version is kept
    #[arg(long, value_parser = humantime::parse_duration)]
    pub versions_older_than: Option<std::time::Duration>,
    /// Remove unreferenced files now, not only those 7 days old. Only safe
    /// while no job (and no other writer) is writing this table.
    #[arg(long)]
    pub orphans_now: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: GcArgs) -> Result<()> {
    let location = args.storage.location(&args.table)?;
    let table = sluice_common::table::TableHandle::new(location, 32);
    let dataset = table.open().await?;
    let policy = match args.versions_older_than {
        Some(age) => CleanupPolicy {
            before_timestamp: Some(chrono::Utc::now() - chrono::Duration::from_std(age)?),
            delete_unverified: args.orphans_now,
            ..Default::default()
        },
        // No version is older than version 0: only unreferenced files go.
        None => CleanupPolicy { before_version: Some(0), delete_unverified: args.orphans_now, ..Default::default() },
    };
    let stats = dataset.cleanup_with_policy(policy).await.map_err(sluice_common::Error::from)?;
    let report = json!({
        "data_files_removed": stats.data_files_removed,
        "old_versions_removed": stats.old_versions,
        "bytes_removed": stats.bytes_removed,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "removed {} data files and {} old versions ({} bytes)",
            stats.data_files_removed, stats.old_versions, stats.bytes_removed
        );
    }
    Ok(())
}
