//! Helpers shared by the integration tests: run the real `sluice` binary and
//! read what it wrote back through the Lance API.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow_array::{Array, StringArray, UInt32Array, UInt64Array};
use futures::TryStreamExt;

pub mod services;

pub fn sluice() -> Command {
    static HOOKS: std::sync::Once = std::sync::Once::new();
    HOOKS.call_once(|| {
        let version = Command::new(env!("CARGO_BIN_EXE_sluice")).arg("--version").output().expect("run sluice --version");
        assert!(
            String::from_utf8_lossy(&version.stdout).contains("test hooks"),
            "the tests need the binary's test hooks: cargo nextest run --workspace --features sluice/testing"
        );
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_FAILPOINTS");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run sluice");
    eprintln!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

pub fn ingest_json(table: &Path, inputs: &[&Path], extra: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = sluice();
    cmd.arg("ingest").arg("--table").arg(table).arg("--json");
    for i in inputs {
        cmd.arg(i);
    }
    cmd.args(extra);
    let out = run(&mut cmd);
    let code = out.status.code().unwrap_or(-1);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code, summary)
}

pub fn corpus(dir: &Path, files: usize, bad: bool) {
    let mut cmd = sluice();
    cmd.arg("sample-corpus").arg(dir).arg("--files").arg(files.to_string());
    if bad {
        cmd.arg("--with-bad-files");
    }
    assert!(run(&mut cmd).status.success());
}

/// One row as read back: (id, source_uri, chunk_index, kind, source_size).
#[derive(Debug, Clone)]
pub struct RowKey {
    pub id: String,
    pub uri: String,
    pub chunk: u32,
    pub kind: String,
    pub size: u64,
}

pub fn read_rows(table: &Path) -> Vec<RowKey> {
    read_rows_at(table.to_str().unwrap(), HashMap::new())
}

/// Rows of a table anywhere (`s3://...` with its storage options).
pub fn read_rows_at(uri: &str, options: HashMap<String, String>) -> Vec<RowKey> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ds = lance::dataset::builder::DatasetBuilder::from_uri(uri)
            .with_storage_options(options)
            .load()
            .await
            .expect("open table");
        let mut scan = ds.scan();
        scan.project(&["id", "source_uri", "chunk_index", "kind", "source_size"]).unwrap();
        let batches: Vec<_> = scan.try_into_stream().await.unwrap().try_collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let s = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().unwrap().clone();
            let chunk = b.column(2).as_any().downcast_ref::<UInt32Array>().unwrap().clone();
            let size = b.column(4).as_any().downcast_ref::<UInt64Array>().unwrap().clone();
            let (id, uri, kind) = (s(0), s(1), s(3));
            for i in 0..b.num_rows() {
                assert!(!id.is_null(i));
                out.push(RowKey {
                    id: id.value(i).into(),
                    uri: uri.value(i).into(),
                    chunk: chunk.value(i),
                    kind: kind.value(i).into(),
                    size: size.value(i),
                });
            }
        }
        out
    })
}

pub fn rows_per_kind(rows: &[RowKey]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r.kind.clone()).or_insert(0) += 1;
    }
    m
}

/// Rows a text of `chars` characters makes with chunk size/overlap 1000/200.
pub fn text_chunks(chars: usize) -> usize {
    if chars <= 1000 { 1 } else { (chars - 200).div_ceil(800) }
}

/// Expected rows per file of a corpus directory, computed independently of
/// the normalizers: text by chunk arithmetic, everything else one row.
pub fn expected_rows(dir: &Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if entry.components().any(|c| c.as_os_str() == "bad") {
            continue;
        }
        let n = if name.ends_with(".txt") {
            text_chunks(String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).chars().count())
        } else {
            1
        };
        out.insert(format!("file://{}", std::path::absolute(&entry).unwrap().display()), n);
    }
    out
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

/// Every expected file present with exactly its rows; no id twice.
pub fn assert_exactly_once(table: &Path, expected: &HashMap<String, usize>) {
    assert_rows_exactly_once(read_rows(table), expected);
}

pub fn assert_rows_exactly_once(rows: Vec<RowKey>, expected: &HashMap<String, usize>) {
    let mut ids = std::collections::HashSet::new();
    for r in &rows {
        assert!(ids.insert(r.id.clone()), "duplicated row {} ({} chunk {})", r.id, r.uri, r.chunk);
    }
    let mut per_file: HashMap<&str, Vec<u32>> = HashMap::new();
    for r in &rows {
        per_file.entry(&r.uri).or_default().push(r.chunk);
    }
    for (uri, n) in expected {
        let mut chunks = per_file.get(uri.as_str()).cloned().unwrap_or_default();
        chunks.sort();
        assert_eq!(chunks, (0..*n as u32).collect::<Vec<_>>(), "rows of {uri}");
    }
    assert_eq!(per_file.len(), expected.len(), "files in table");
}

pub fn versions(table: &Path) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { lance::Dataset::open(table.to_str().unwrap()).await.unwrap().version().version })
}

pub fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[allow(unused_imports)]
pub use sluice_common::samples::minimal_pdf as make_pdf;

/// The reason an ingest summary gives for the failed file whose URI ends
/// with `name`.
pub fn failure_reason(summary: &serde_json::Value, name: &str) -> Option<String> {
    summary["errors"].as_array()?.iter().find(|e| e["uri"].as_str().is_some_and(|u| u.ends_with(name)))?["reason"].as_str().map(str::to_string)
}
