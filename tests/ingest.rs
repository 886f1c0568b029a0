//! End-to-end tests of `sluice ingest` on a local table, read back through
//! the Lance API and, independently, through pylance.

mod support;

use std::path::Path;

use support::*;

#[test]
fn mixed_directory_lands_with_rows_per_kind_and_a_ledger_of_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    corpus_with_extras(&corpus);
    let table = dir.path().join("lake");

    let (code, s) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 2, "some files failed, so the exit code says so");
    assert_eq!(s["status"], "completed_with_errors");
    assert_eq!(s["files_failed"], 4);

    let expected = expected_rows(&corpus);
    assert_exactly_once(&table, &expected);
    let rows = read_rows(&table);
    let kinds = rows_per_kind(&rows);
    let text_rows: usize = expected.iter().filter(|(u, _)| u.ends_with(".txt")).map(|(_, n)| n).sum();
    assert_eq!(kinds["text"], text_rows);
    assert_eq!(kinds["image"], 10 + 1, "10 corpus images + the UTF-8-named one");
    assert_eq!(kinds["other"], 10);
    assert_eq!(s["rows"].as_u64().unwrap() as usize, rows.len());

    let reason = |name: &str| failure_reason(&s, name);
    assert!(reason("binary.txt").unwrap().contains("NUL byte"));
    assert!(reason("bomb.png").unwrap().contains("decompression bomb"));
    assert!(reason("truncated.jpg").unwrap().contains("image"));
    assert!(reason("not-really.png").unwrap().contains("image"));

    // inspect shows the same through its JSON report.
    let out = run(sluice().arg("inspect").arg(&table).arg("--json"));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"].as_u64().unwrap() as usize, rows.len());
    assert_eq!(report["rows_per_kind"]["other"], 10);
    assert_eq!(report["failed_files"], 4);
    assert!(report["columns"].as_array().unwrap().iter().any(|c| c["name"] == "data" && c["type"] == "blob"));
    assert_eq!(report["samples"].as_array().unwrap().len(), 5);
    let versions = report["versions"].as_array().unwrap();
    assert!(versions.iter().any(|v| v["operation"] == "Append" && !v["job_id"].as_str().unwrap().is_empty()), "{versions:?}");
}

/// The sample corpus plus files that exercise transcoding and naming.
fn corpus_with_extras(corpus: &Path) {
    support::corpus(corpus, 40, true);
    let extra = corpus.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "UTF-16 text, ünïcödé".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    std::fs::write(extra.join("utf16.txt"), utf16).unwrap();
    std::fs::write(extra.join("latin1.txt"), b"caf\xe9 cr\xe8me br\xfbl\xe9e et na\xefvet\xe9 d\xe9j\xe0 vue").unwrap();
    std::fs::write(extra.join("empty.txt"), b"").unwrap();
    let img = image::RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8, y as u8, 9]));
    img.save(extra.join("фото 写真.png")).unwrap();
}

#[test]
fn rerun_skips_unchanged_files_and_replaces_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    support::corpus(&corpus, 24, false);
    let table = dir.path().join("t");
    let (code, first) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 0);
    let v1 = versions(&table);

    let (code, second) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 0);
    assert_eq!(second["files_skipped"], 24);
    assert_eq!(second["rows"], 0);
    assert_eq!(versions(&table), v1, "nothing new, no new version");

    // Change one text file: its old rows go, its new rows come, once.
    let doc = walk(&corpus).into_iter().find(|p| p.extension().is_some_and(|e| e == "txt")).unwrap();
    std::fs::write(&doc, "x".repeat(2500)).unwrap();
    let (code, third) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 0);
    assert_eq!(third["files_ingested"], 1);
    assert_eq!(third["files_skipped"], 23);
    assert_exactly_once(&table, &expected_rows(&corpus));
    assert_eq!(first["files_ingested"], 24);
}

#[test]
fn missing_paths_and_bad_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let out = run(sluice().arg("ingest").arg("--table").arg(&table).arg(dir.path().join("nope")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = run(sluice().args(["ingest", "--chunk-size", "10", "--chunk-overlap", "10", "--table"]).arg(&table).arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk_overlap"));

    // A manifest that names a directory and a missing file: recorded, not fatal.
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "hello").unwrap();
    let manifest = dir.path().join("list.txt");
    std::fs::write(&manifest, format!("{}\n{}\n{}\n", good.display(), dir.path().display(), dir.path().join("gone.txt").display())).unwrap();
    let out = run(sluice().arg("ingest").arg("--table").arg(&table).arg("--manifest").arg(&manifest).arg("--json"));
    assert_eq!(out.status.code(), Some(2));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["files_ingested"], 1);
    let reasons: Vec<_> = s["errors"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap().to_string()).collect();
    assert!(reasons.contains(&"is a directory, not a file".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"no such file".to_string()), "{reasons:?}");
}

#[test]
fn max_errors_aborts_but_keeps_what_was_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..30 {
        std::fs::write(corpus.join(format!("bad-{i:02}.txt")), b"\x00binary").unwrap();
    }
    let table = dir.path().join("t");
    let (code, s) = ingest_json(&table, &[&corpus], &["--max-errors", "5", "--normalization-workers", "1", "--flush-every", "1"]);
    assert_eq!(code, 3, "aborted");
    assert_eq!(s["status"], "aborted");
    let failed = s["files_failed"].as_u64().unwrap();
    assert!(failed > 5 && failed < 30, "stopped early: {failed} failed");
}

/// `sluice bench --files A,B` ingests one generated corpus per size, from
/// the fewest files up, and compares each one's peak RSS with the fewest's.
#[test]
fn bench_compares_peak_rss_across_corpus_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(sluice().arg("bench").arg("--files").arg("40,12").arg("--workdir").arg(dir.path()).args(["--", "--flush-every", "7", "--commit-every", "7"]));
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "a line per size and a comparison");
    assert_eq!(lines[0]["files"], 12);
    assert_eq!(lines[1]["files"], 40);
    // 100 rows in one fragment by default; a fragment about every 7 rows
    // (a file's rows stay together) with the arguments passed on.
    assert!(lines[1]["fragments"].as_u64().unwrap() >= 10, "ingest arguments passed on");
    let peaks: Vec<f64> = lines[..2].iter().map(|l| l["peak_rss_mb"].as_f64().unwrap()).collect();
    assert!(peaks.iter().all(|&p| p > 1.0), "{peaks:?}");
    let summary = &lines[2];
    assert_eq!(summary["files"], serde_json::json!([12, 40]));
    let ratios: Vec<f64> = summary["peak_rss_vs_fewest_files"].as_array().unwrap().iter().map(|r| r.as_f64().unwrap()).collect();
    assert_eq!(ratios[0], 1.0);
    assert!((ratios[1] - peaks[1] / peaks[0]).abs() < 1e-9, "{ratios:?} {peaks:?}");
    assert_eq!(summary["largest_peak_rss_vs_fewest_files"].as_f64().unwrap(), ratios[0].max(ratios[1]));
    assert!(dir.path().join("corpus-12").is_dir() && dir.path().join("corpus-40").is_dir());
}

/// Rows of slow files wait at most `--flush-interval` seconds in the
/// worker's buffer, however far `--flush-every` is; a fragment gathers
/// flushes for at most 5 s.
#[test]
fn rows_wait_at_most_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..8 {
        std::fs::write(corpus.join(format!("f-{i}.txt")), format!("file {i}")).unwrap();
    }
    // 8 files at 400 ms each, one at a time: about 3.2 s of work.
    let ingest_with = |table: &str, interval: &str, flush_every: &str, delay_ms: &str| {
        let mut cmd = sluice();
        cmd.env("SLUICE_TEST_FILE_DELAY_MS", delay_ms).arg("ingest").arg("--table").arg(dir.path().join(table)).arg(&corpus);
        cmd.args(["--json", "--normalization-workers", "1", "--flush-every", flush_every, "--flush-interval", interval]);
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let ingest = |table: &str, interval: &str| ingest_with(table, interval, "1000", "400");
    let s = ingest("slow", "1");
    assert_eq!(s["rows"], 8);
    let by_interval = s["flushes"]["interval"].as_u64().unwrap_or(0);
    assert!((2..=4).contains(&by_interval), "a flush about every second: {s}");
    let fragments = s["fragments"].as_u64().unwrap();
    assert!((by_interval..=by_interval + 1).contains(&fragments), "{s}");

    let s = ingest("default", "30");
    assert_eq!(s["flushes"], serde_json::json!({"shards_done": 1}), "{s}");
    assert_eq!(s["fragments"], 1);

    // A flush per file goes into the open fragment, which is closed once
    // it has been open 5 s: 6.4 s of work make two fragments, not eight.
    let s = ingest_with("gathered", "30", "1", "800");
    assert_eq!(s["rows"], 8);
    assert_eq!(s["flushes"]["rows"], 8, "{s}");
    assert_eq!(s["fragments"], 2, "{s}");
    assert_eq!(s["commits"], 1, "{s}");
}

#[test]
fn knobs_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..60 {
        std::fs::write(corpus.join(format!("f-{i:02}.txt")), format!("file {i}")).unwrap();
    }
    // 60 one-row files: a flush every 7 rows, into a fragment that is
    // closed once it holds 20 rows (commit every 20): fragments of 21, 21
    // and the last 18 rows, each committed as it is closed.
    let table = dir.path().join("t1");
    let (code, s) = ingest_json(&table, &[&corpus], &["--flush-every", "7", "--commit-every", "20", "--normalization-workers", "1"]);
    assert_eq!(code, 0);
    assert_eq!(s["fragments"], 3);
    assert_eq!(s["commits"], 3);
    // Eight flushes at 7 rows; the last 4 rows go when the shard is done.
    assert_eq!(s["flushes"], serde_json::json!({"rows": 8, "shards_done": 1}), "{s}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rows: Vec<usize> = rt.block_on(async {
        let ds = lance::Dataset::open(table.to_str().unwrap()).await.unwrap();
        ds.get_fragments().iter().map(|f| f.metadata().physical_rows.unwrap()).collect()
    });
    assert_eq!(rows, [21, 21, 18], "fragments gather flushes");
    assert_eq!(s["peak_concurrent_normalizations"], 1);

    let table = dir.path().join("t2");
    let (code, s) = ingest_json(&table, &[&corpus], &["--flush-every", "1000", "--commit-every", "1000", "--normalization-workers", "4"]);
    assert_eq!(code, 0);
    assert_eq!(s["fragments"], 1);
    assert_eq!(s["commits"], 1);
    assert!(s["peak_concurrent_normalizations"].as_u64().unwrap() <= 4);

    // Every knob has an environment variable: chunking from the environment.
    let long = dir.path().join("long");
    std::fs::create_dir_all(&long).unwrap();
    std::fs::write(long.join("a.txt"), "x".repeat(1000)).unwrap();
    let mut cmd = sluice();
    cmd.env("SLUICE_CHUNK_SIZE", "100").env("SLUICE_CHUNK_OVERLAP", "0").env("SLUICE_MAX_FILE_SIZE", "999");
    cmd.arg("ingest").arg("--table").arg(dir.path().join("t-env")).arg(&long).arg("--json");
    let out = run(&mut cmd);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["files_failed"], 1, "SLUICE_MAX_FILE_SIZE refuses the 1000-byte file: {s}");
    cmd.env("SLUICE_MAX_FILE_SIZE", "1000");
    let out = run(&mut cmd);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s["files_ingested"].as_u64(), s["rows"].as_u64()), (Some(1), Some(10)), "100-character chunks: {s}");

    // Images take long enough to decode that a pool of 4 runs them side by side.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..16u32 {
        let img = image::RgbImage::from_fn(700, 700, |x, y| image::Rgb([(x ^ i) as u8, (y * i) as u8, (x + y) as u8]));
        img.save(images.join(format!("i{i:02}.png"))).unwrap();
    }
    for (workers, table) in [(1, "t3"), (4, "t4")] {
        let (code, s) = ingest_json(&dir.path().join(table), &[&images], &["--normalization-workers", &workers.to_string()]);
        assert_eq!(code, 0);
        let peak = s["peak_concurrent_normalizations"].as_u64().unwrap();
        if workers == 1 {
            assert_eq!(peak, 1);
        } else {
            assert!((2..=4).contains(&peak), "4 workers ran {peak} files at once");
        }
    }

    // The row budget: rows in flight never exceed it, and a small budget
    // makes the flusher write by bytes long before --flush-bytes.
    let (code, s) = ingest_json(&dir.path().join("t5"), &[&images], &["--memory-budget", "2097152", "--flush-every", "1000"]);
    assert_eq!(code, 0);
    assert_eq!(s["files_ingested"], 16);
    let peak = s["peak_rows_in_flight_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak <= 2 << 20, "rows in flight peaked at {peak} bytes");
    assert!(s["flushes"]["bytes"].as_u64().unwrap_or(0) >= 2, "a third of the budget buffered means a write: {s}");
    let (_, s) = ingest_json(&dir.path().join("t6"), &[&images], &["--flush-every", "1000"]);
    assert!(s["peak_rows_in_flight_bytes"].as_u64().unwrap() > 2 << 20, "the default budget holds more: {s}");
}

#[test]
fn pylance_reads_what_the_cli_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    support::corpus(&corpus, 40, false);
    let table = dir.path().join("t");
    let (code, s) = ingest_json(&table, &[&corpus], &["--flush-every", "10", "--commit-every", "30"]);
    assert_eq!(code, 0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/read_table.py");
    let out = run(std::process::Command::new(python()).arg(script).arg(&table));
    assert!(out.status.success(), "pylance must be installed (SLUICE_PYTHON) and read the table");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = expected_rows(&corpus);
    let total: usize = expected.values().sum();
    assert_eq!(r["rows"].as_u64().unwrap() as usize, total);
    assert_eq!(r["distinct_ids"].as_u64().unwrap() as usize, total);
    assert_eq!(r["files"].as_u64().unwrap() as usize, expected.len());
    assert_eq!(r["kinds"]["image"], 10);
    assert_eq!(r["kinds"]["other"], 10);
    assert_eq!(r["version"], s["table_version"]);
    assert!(r["blob_checks"].as_u64().unwrap() >= 20);
    assert_eq!(r["blob_mismatches"].as_array().unwrap().len(), 0, "blob bytes equal the source files");
}

#[test]
fn sql_queries_over_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 60, true);
    let table = dir.path().join("lake");
    let (code, _) = ingest_json(&table, &[&corpus], &[]);
    assert_eq!(code, 2);
    let truth = rows_per_kind(&read_rows(&table));

    let query = |sql: &str, extra: &[&str]| {
        let out = run(sluice().args(["query", "--json", "--table"]).arg(&table).args(extra).arg(sql));
        let rows: Vec<serde_json::Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (out.status.code(), rows, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, rows, _) = query("SELECT kind, count(*) AS n FROM lake GROUP BY kind", &[]);
    assert_eq!(code, Some(0));
    let counted: std::collections::HashMap<String, usize> =
        rows.iter().map(|r| (r["kind"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap() as usize)).collect();
    assert_eq!(counted, truth, "SQL counts match the rows read through the Lance API");
    // Filters on fields of the JSON metadata column.
    let (_, rows, err) = query("SELECT count(*) AS n FROM lake WHERE kind = 'other' AND json_get_int(metadata, 'bytes') >= 0", &[]);
    assert_eq!(rows, [serde_json::json!({"n": truth["other"]})], "{err}");

    // Blob bytes only when asked for; rows capped by --limit.
    let (_, rows, _) = query("SELECT data FROM lake WHERE kind = 'image'", &["--limit", "3"]);
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["data"].is_object(), "a description, not the bytes: {}", rows[0]);
    let (_, rows, _) = query("SELECT data FROM lake WHERE kind = 'image'", &["--limit", "1", "--blobs"]);
    assert!(!rows[0]["data"].is_object(), "the bytes: {}", rows[0]);

    // Bad SQL and unknown columns are clear errors.
    let (code, _, err) = query("SELEC 1", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("SQL error"), "{err}");
    let (code, _, err) = query("SELECT nope FROM lake", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("No field named nope"), "{err}");
}

#[test]
fn insert_rows_into_a_local_table_query_and_inspect_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("labels");
    let rows_file = dir.path().join("labels.jsonl");
    let lines: String = (0..250)
        .map(|i| format!("{{\"filename\":\"img_{i}.png\",\"label\":\"{}\",\"score\":{}.5,\"metadata\":{{\"w\":{}}}}}\n", ["cat", "dog"][i % 2], i % 5, 100 + i % 3))
        .collect();
    std::fs::write(&rows_file, lines).unwrap();
    let insert = |extra: &[&str]| {
        run(sluice()
            .args(["insert", "--json", "--table"])
            .arg(&table)
            .arg("--rows")
            .arg(&rows_file)
            .args(["--columns", "filename TEXT NOT NULL, label TEXT, score DOUBLE, metadata JSONB"])
            .args(extra))
    };
    let out = insert(&["--batch-rows", "100", "--idempotency-key", "labels-v1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((done["rows_inserted"].as_u64(), done["created"].as_bool()), (Some(250), Some(true)), "{done}");
    let again: serde_json::Value = serde_json::from_slice(&insert(&["--batch-rows", "100", "--idempotency-key", "labels-v1"]).stdout).unwrap();
    assert_eq!((again["rows_inserted"].as_u64(), again["replayed"].as_bool()), (Some(0), Some(true)), "{again}");

    let query = |sql: &str| {
        let out = run(sluice().args(["query", "--json", "--table"]).arg(&table).arg(sql));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(
        query("SELECT label, count(*) AS n, max(score) AS top FROM labels WHERE json_get_int(metadata, 'w') = 101 GROUP BY label ORDER BY label"),
        [r#"{"label":"cat","n":41,"top":4.5}"#, r#"{"label":"dog","n":42,"top":4.5}"#]
    );

    // JSON columns come back as JSON.
    assert_eq!(query("SELECT filename, metadata FROM labels LIMIT 1"), [r#"{"filename":"img_0.png","metadata":{"w":100}}"#]);

    // A bad row stops its batch only; earlier batches stay, and the error names the row.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"filename\":\"a\"}\n{\"filename\":\"b\",\"score\":\"high\"}\n").unwrap();
    let out = run(sluice().args(["insert", "--table"]).arg(&table).arg("--rows").arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("row 1") && err.contains("batch 0 (lines 1 to 2)"), "{err}");
    assert_eq!(query("SELECT count(*) AS n FROM labels"), [r#"{"n":250}"#]);

    let out = run(sluice().args(["inspect", "--json"]).arg(&table));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 250);
    assert_eq!(report["versions"].as_array().unwrap().len(), 4, "created, then three batches: {report}");
    assert_eq!(report["samples"][0]["filename"], "img_0.png");
    let out = run(sluice().arg("tables").arg(dir.path()).arg("--json"));
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tables[0]["name"], "labels", "{tables}");
}

/// A plain web server on 127.0.0.1 serving `dir`.
struct WebServer(std::process::Child, u16);

impl WebServer {
    fn start(dir: &Path) -> Self {
        let port = support::services::free_port();
        let child = std::process::Command::new(python())
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        support::services::wait_port(port, "http.server");
        Self(child, port)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sources_on_a_web_server_by_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    support::corpus(&corpus, 30, false);
    let web = WebServer::start(&corpus);
    let local = format!("file://{}/", std::path::absolute(&corpus).unwrap().display());
    let base = format!("http://127.0.0.1:{}/", web.1);
    let expected: std::collections::HashMap<String, usize> =
        expected_rows(&corpus).into_iter().map(|(uri, n)| (uri.replace(&local, &base), n)).collect();
    let mut manifest: String = expected.keys().map(|u| format!("{u}\n")).collect();
    manifest.push_str(&format!("{base}missing.txt\n"));
    let manifest_file = dir.path().join("urls.txt");
    std::fs::write(&manifest_file, manifest).unwrap();

    let table = dir.path().join("web");
    let out = run(sluice().args(["ingest", "--json", "--table"]).arg(&table).arg("--manifest").arg(&manifest_file));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "the missing URL is a failed file: {summary}");
    assert_eq!(summary["files_failed"], 1);
    assert_rows_exactly_once(read_rows(&table), &expected);

    // A second run finds every file unchanged.
    let out = run(sluice().args(["ingest", "--json", "--table"]).arg(&table).arg("--manifest").arg(&manifest_file));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["files_skipped"].as_u64(), Some(expected.len() as u64), "{again}");

    // A web "prefix" cannot be listed: a clear error, not a hang.
    let out = run(sluice().args(["ingest", "--table"]).arg(&table).arg(&base));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("WebDAV"), "{err}");
}
