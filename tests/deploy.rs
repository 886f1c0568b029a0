//! The deployment, checked offline: the Helm chart lints, renders and
//! validates for several values combinations, bad values are refused, every
//! command line and environment the chart gives the `sluice` binary is
//! accepted by it (`--check-config`), and the image's install script works
//! on this machine.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn chart_lints_renders_validates_and_matches_the_binary() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(python())
        .arg(repo().join("tests/python/check_chart.py"))
        .arg(repo().join("deploy/helm/sluice"))
        .arg(out_dir.path()));
    assert!(out.status.success(), "chart check failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let combos = report["combinations"].as_array().unwrap();
    assert_eq!(combos.len(), 4);
    for combo in combos {
        let name = combo["name"].as_str().unwrap();
        assert_eq!(combo["lint"], serde_json::json!([]), "{name}: helm lint --strict");
        assert_eq!(combo["invalid"], serde_json::json!([]), "{name}: kubernetes-validate --strict");
        let kinds: Vec<&str> = combo["kinds"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        for kind in ["StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"] {
            assert!(kinds.contains(&kind), "{name}: no {kind}");
        }
        assert_eq!(kinds.contains(&"HorizontalPodAutoscaler"), name == "hpa", "{name}");
        assert_eq!(kinds.contains(&"ServiceMonitor"), name == "etcd-3-nodes", "{name}");
        let etcd_sets = kinds.iter().filter(|k| **k == "StatefulSet").count();
        assert_eq!(etcd_sets, if name == "external-etcd" { 1 } else { 2 }, "{name}: bundled etcd or not");

        // What the chart runs, the binary accepts.
        let containers = combo["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "{name}: coordinator and worker");
        for c in containers {
            let secrets = if name == "hpa" { serde_json::json!(["source-stores"]) } else { serde_json::json!([]) };
            assert_eq!(c["env_secrets"], secrets, "{name}: source-store credentials reach every process");
            let args: Vec<String> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
            let mut cmd = sluice();
            cmd.env_clear().env("PATH", std::env::var("PATH").unwrap()).args(&args).arg("--check-config");
            for (k, v) in c["env"].as_object().unwrap() {
                cmd.env(k, v.as_str().unwrap());
            }
            let out = run(&mut cmd);
            assert!(out.status.success(), "{name}: sluice {args:?} refused the chart's configuration");
            let printed = String::from_utf8_lossy(&out.stdout);
            if args[0] == "coordinator" {
                assert!(printed.contains("s3://bucket/lake"), "{name}: the storage root reaches the coordinator");
                // Authentication and local roots, where the values ask for them.
                assert_eq!(printed.contains("job API tokens from /etc/sluice/auth/tokens"), name == "hpa", "{name}: {printed}");
                assert_eq!(printed.contains("\"/data\""), name == "hpa", "{name}: {printed}");
                assert_eq!(printed.contains("/etc/sluice/tls/ca.crt"), name == "external-etcd", "{name}: mutual TLS");
            }
            assert!(printed.contains("etcd"), "{name}: {printed}");
        }
    }
    for (what, error) in report["bad_values"].as_object().unwrap() {
        assert!(error.as_str().is_some_and(|e| e.contains("schema")), "bad values accepted: {what}");
    }

    // --check-config is not a rubber stamp.
    let out = run(sluice().env_clear().args(["worker", "--check-config"]));
    assert!(!out.status.success(), "a worker with no way to find a coordinator is refused");
    let out = run(sluice().env_clear().args(["coordinator", "--check-config", "--storage-uri", "relative/path"]));
    assert!(!out.status.success());
}

#[test]
fn image_install_script_works_here() {
    let script = repo().join("deploy/docker/install.sh");
    let prefix = tempfile::tempdir().unwrap();
    // Runtime libraries (already present where the tests build), libpdfium
    // from the pypdfium2 the test environment has (no download), and the
    // check the image build runs.
    assert!(run(Command::new(&script).arg("runtime")).status.success());
    assert!(run(Command::new(&script).arg("pdfium").arg(prefix.path()).env("PYTHON", python())).status.success());
    assert!(run(Command::new(&script).arg("check").arg(env!("CARGO_BIN_EXE_sluice")).arg(prefix.path())).status.success());

    // sluice uses the libpdfium the script installed.
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("doc.pdf");
    std::fs::write(&pdf, make_pdf(&["first page", "second page"], (612.0, 792.0), "doc")).unwrap();
    let mut cmd = sluice();
    cmd.env("SLUICE_PDFIUM_PATH", prefix.path().join("lib/libpdfium.so")).env("SLUICE_VENV", "/nonexistent");
    cmd.args(["ingest", "--json", "--table"]).arg(dir.path().join("t")).arg(&pdf);
    let out = run(&mut cmd);
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows"], 2, "two pages rendered through the installed libpdfium");
}
