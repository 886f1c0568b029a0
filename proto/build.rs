use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sluice_descriptor.bin"))
        // Job progress in the HTTP API.
        .type_attribute(".sluice.v1.JobProgress", "#[derive(serde::Serialize)]")
        .compile_protos(&["sluice/v1/worker.proto", "sluice/v1/job.proto"], &["."])?;
    println!("cargo:rerun-if-changed=sluice");
    Ok(())
}
