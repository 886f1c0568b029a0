use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sluice_descriptor.bin"))
        // Table descriptions print as JSON in the CLI.
        .type_attribute(".sluice.v1.TableDescription", "#[derive(serde::Serialize)]")
        .type_attribute(".sluice.v1.ColumnInfo", "#[derive(serde::Serialize)]")
        .type_attribute(".sluice.v1.FailedFile", "#[derive(serde::Serialize)]")
        .type_attribute(".sluice.v1.TableVersion", "#[derive(serde::Serialize)]")
        .type_attribute(".sluice.v1.ListVersionsResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".sluice.v1.TableInfo", "#[derive(serde::Serialize)]")
        // Job progress in the HTTP API.
        .type_attribute(".sluice.v1.JobProgress", "#[derive(serde::Serialize)]")
        .compile_protos(&["sluice/v1/worker.proto", "sluice/v1/job.proto"], &["."])?;
    println!("cargo:rerun-if-changed=sluice");
    Ok(())
}
