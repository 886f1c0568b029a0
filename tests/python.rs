//! The Python package as users get it: `pip install ./python` into a fresh
//! virtualenv (offline, from the wheels `scripts/setup.sh` keeps; the
//! binary comes from this build's target directory), then the guide's
//! Python code and the client's checks (`tests/python/*.py`), on this
//! machine and against a coordinator with two workers.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::services::{free_port, http_get, wait_port, Proc};
use support::*;

/// Where `scripts/setup.sh` downloads the package's build and run-time wheels.
fn wheels() -> PathBuf {
    std::env::var_os("SLUICE_WHEELS").map_or_else(|| PathBuf::from("/opt/sluice-wheels"), PathBuf::from)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The target directory and cargo profile of this test run's binary: the
/// package builds use them, so cargo finds everything up to date.
fn build_env() -> (PathBuf, &'static str) {
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let profile = if profile_dir.file_name().unwrap() == "debug" { "dev" } else { "release" };
    (profile_dir.parent().unwrap().to_path_buf(), profile)
}

/// The environment for builds started from this test: the caller's, minus
/// the `CARGO_*` variables and `OUT_DIR` the test runner sets for tests
/// (build scripts watch some of them: ring's watches `OUT_DIR`, and cargo
/// rebuilt it and every crate above it, Lance included, whenever a build
/// ran with it and the next without).
fn build_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let keep = !(k.starts_with("CARGO_") || k.starts_with("NEXTEST") || k.starts_with("RUST_") || k == "CARGO" || k == "OUT_DIR")
            || k == "CARGO_HOME";
        if keep {
            cmd.env(&key, &value);
        }
    }
    cmd
}

/// A fresh venv with `package` (a source tree or a wheel) installed by pip.
fn venv_with(dir: &Path, name: &str, package: &Path, find_links: &[&Path]) -> PathBuf {
    let venv = dir.join(name);
    assert!(Command::new("python3").arg("-m").arg("venv").arg(&venv).status().unwrap().success());
    let (target, profile) = build_env();
    let mut pip = build_command(venv.join("bin/pip"));
    pip.args(["install", "--no-index"]);
    for dir in find_links {
        pip.arg("--find-links").arg(dir);
    }
    pip.arg(package)
        .env("CARGO_TARGET_DIR", target)
        .env("MATURIN_PEP517_ARGS", format!("--profile {profile} --features testing"))
        .env_remove("VIRTUAL_ENV");
    let out = run(&mut pip);
    assert!(out.status.success(), "pip install {} failed (are the wheels in {}? run scripts/setup.sh)", package.display(), wheels().display());
    // The package gave both the command and the module.
    let version = Command::new(venv.join("bin/sluice")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sluice "), "{version:?}");
    // With the normalizer processes' own binaries beside it.
    for normalizer in ["sluice-normalizer", "sluice-normalizer-media"] {
        assert!(venv.join("bin").join(normalizer).is_file(), "{normalizer} is not installed in {}", venv.display());
    }
    venv
}

/// `pip install ./python`, as the README says.
fn install_from_source(dir: &Path) -> PathBuf {
    venv_with(dir, "venv-source", &repo().join("python"), &[&wheels()])
}

/// `scripts/build-wheel.sh`, then `pip install` of the wheel it made.
fn install_from_wheel(dir: &Path) -> PathBuf {
    let out = dir.join("dist");
    let (target, profile) = build_env();
    let mut build = build_command(repo().join("scripts/build-wheel.sh"));
    // With the test hooks, as the rest of the tests build the binary (the
    // test slows files down to act mid-job).
    build.args(["--profile", profile, "--features", "testing"]).env("SLUICE_WHEEL_DIR", &out).env("CARGO_TARGET_DIR", target);
    // The maturin next to the tests' Python, if there is one; else the
    // script looks on PATH and in the setup venv.
    let maturin = Path::new(&python()).with_file_name("maturin");
    if maturin.is_file() {
        build.env("MATURIN", &maturin);
    }
    let built = run(&mut build);
    assert!(built.status.success(), "scripts/build-wheel.sh failed");
    let wheel = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "whl")).unwrap();
    venv_with(dir, "venv-wheel", &wheel, &[&wheels()])
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).status().expect("ffmpeg CLI must be installed");
    assert!(ok.success(), "ffmpeg {args:?}");
}

/// `data/`: four short H.264 videos, four PDFs (4, 3, 2, 1 pages), a
/// broken PDF, and 200 small text files for the Ctrl-C check.
fn fixtures(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("texts")).unwrap();
    for i in 0..4 {
        let seconds = (4 + 3 * i).to_string();
        let out = data.join(format!("video_{i}.mp4"));
        ffmpeg(&[
            "-f", "lavfi", "-i", "testsrc=size=160x120:rate=15", "-t", &seconds, "-c:v", "libx264", "-g", "30",
            "-pix_fmt", "yuv420p", out.to_str().unwrap(),
        ]);
        let pages: Vec<String> = (0..4 - i).map(|p| format!("document {i} page {p}")).collect();
        let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
        std::fs::write(data.join(format!("doc_{i}.pdf")), make_pdf(&pages, (612.0, 792.0), "doc")).unwrap();
    }
    std::fs::write(data.join("broken.pdf"), b"%PDF-1.4\nnot really a pdf").unwrap();
    for i in 0..200 {
        std::fs::write(data.join(format!("texts/t{i:03}.txt")), format!("text file number {i}\n")).unwrap();
    }
    data
}

fn python_in(venv: &Path, dir: &Path, script: &Path, args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(script).args(args).current_dir(dir).env_remove("SLUICE_STORAGE_URI").env_remove("SLUICE_TOKEN");
    cmd.env("SLUICE_TEST_FILE_DELAY_MS", "20");
    run(&mut cmd)
}

/// The guide's script with its client line pointed at a coordinator.
fn guide_for(url: Option<&str>, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("tests/python/guide_ingest.py")).unwrap();
    let text = match url {
        None => text,
        Some(url) => {
            assert!(text.contains("\nclient = Client()\n"));
            text.replace("\nclient = Client()\n", &format!("\nclient = Client(url=\"{url}\")\n"))
        }
    };
    let path = dir.join("guide.py");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_guides_python_runs_on_this_machine_and_against_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let venv = install_from_source(dir.path());
    let checks = repo().join("tests/python/client_checks.py");

    // On this machine: tables under ./sluice-lake of the working directory.
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let data = fixtures(&local);
    let out = python_in(&venv, &local, &guide_for(None, &local), &[]);
    assert!(out.status.success(), "the guide's script failed on this machine");
    assert!(local.join("sluice-lake/massive_video_lake/_versions").is_dir());
    let out = python_in(&venv, &local, &checks, &[&data]);
    assert!(out.status.success(), "client checks failed on this machine");

    // A coordinator (HTTP API, tables under its storage root) with two
    // workers, driven from a venv that installed the wheel the script built.
    let venv = install_from_wheel(dir.path());
    let remote = dir.path().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let data = fixtures(&remote);
    let (grpc, http) = (free_port(), free_port());
    let mut coordinator = sluice();
    coordinator
        .args(["coordinator", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--storage-uri")
        .arg(remote.join("lake"))
        .arg("--allowed-root")
        .arg(&remote)
        .args(["--heartbeat-ms", "200"]);
    let _coordinator = Proc::spawn(coordinator, &dir.path().join("coordinator.log"));
    wait_port(http, "coordinator HTTP");
    let worker_metrics = [free_port(), free_port()];
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut w = sluice();
            w.args(["worker", "--coordinator", &format!("http://127.0.0.1:{grpc}"), "--name", &format!("w{i}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{}", worker_metrics[i])])
                .env("SLUICE_TEST_FILE_DELAY_MS", "20");
            Proc::spawn(w, &dir.path().join(format!("worker-{i}.log")))
        })
        .collect();
    let url = format!("http://127.0.0.1:{http}");
    let out = python_in(&venv, &remote, &guide_for(Some(&url), &remote), &[]);
    assert!(out.status.success(), "the guide's script failed against the cluster");
    let mut checks_cmd = Command::new(venv.join("bin/python"));
    checks_cmd.arg(&checks).arg(&data).current_dir(&remote).env("SLUICE_URL", &url).env("SLUICE_TEST_FILE_DELAY_MS", "20");
    let out = run(&mut checks_cmd);
    assert!(out.status.success(), "client checks failed against the cluster");
    // Both workers took part: each normalized files.
    for (i, port) in worker_metrics.into_iter().enumerate() {
        let (code, metrics) = http_get(port, "/metrics");
        assert_eq!(code, 200);
        let files: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("sluice_worker_files_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(files > 0.0, "worker {i} normalized no file:\n{metrics}");
    }
}
