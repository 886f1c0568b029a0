//! PDF ingestion: pages become rows with text, a render and a thumbnail;
//! encrypted, corrupt and oversized input fails with a clear reason.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[test]
fn pdf_pages_become_rows_and_bad_pdfs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("pdfs");
    std::fs::create_dir_all(&corpus).unwrap();
    let texts = ["First page of the report", "Second page says hello", "Third and last page"];
    std::fs::write(corpus.join("report.pdf"), make_pdf(&texts, (612.0, 792.0), "Quarterly report")).unwrap();
    std::fs::write(corpus.join("red.pdf"), sluice_common::samples::filled_pdf([0.86, 0.08, 0.08], (612.0, 792.0), "Red")).unwrap();
    // 200 x 200 inches: 30000 x 30000 pixels at 150 DPI, far above the render cap.
    std::fs::write(corpus.join("huge-page.pdf"), make_pdf(&["A very large page"], (14_400.0, 14_400.0), "Huge")).unwrap();
    let plain = dir.path().join("secret-plain.pdf");
    std::fs::write(&plain, make_pdf(&["Secret"], (612.0, 792.0), "Secret")).unwrap();
    let enc = corpus.join("encrypted.pdf");
    let ok = Command::new("qpdf").args(["--encrypt", "user-pw", "owner-pw", "256", "--"]).arg(&plain).arg(&enc).status();
    assert!(ok.expect("qpdf must be installed").success());
    // Encrypted with an owner password only: it opens, and says it is encrypted.
    let restricted = corpus.join("restricted.pdf");
    let ok = Command::new("qpdf").args(["--encrypt", "", "owner-pw", "256", "--"]).arg(&plain).arg(&restricted).status();
    assert!(ok.unwrap().success());
    let mut corrupt = b"%PDF-1.7\n".to_vec();
    corrupt.extend((0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8));
    std::fs::write(corpus.join("corrupt.pdf"), corrupt).unwrap();

    let table = dir.path().join("lake");
    let (code, s) = ingest_json(&table, &[&corpus], &["--pdf-dpi", "72", "--max-render-pixels", "4000000"]);
    assert_eq!(code, 2, "bad PDFs fail, good ones land");
    let reason = |name: &str| failure_reason(&s, name);
    assert!(reason("encrypted.pdf").unwrap().contains("encrypted PDF"), "{:?}", reason("encrypted.pdf"));
    assert!(reason("corrupt.pdf").unwrap().contains("corrupt PDF"), "{:?}", reason("corrupt.pdf"));
    assert_eq!(s["files_failed"], 2);

    let export = dir.path().join("export");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/export_blobs.py");
    let out = run(Command::new(python()).arg(script).arg(&table).arg(&export));
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();

    let mut report: Vec<_> = rows.iter().filter(|r| r["source_uri"].as_str().unwrap().ends_with("report.pdf")).collect();
    report.sort_by_key(|r| r["chunk_index"].as_u64());
    assert_eq!(report.len(), 3, "pages = rows");
    for (i, row) in report.iter().enumerate() {
        assert_eq!(row["kind"], "pdf");
        assert_eq!(row["metadata"]["page_count"], 3);
        assert_eq!(row["metadata"]["title"], "Quarterly report");
        assert_eq!(row["metadata"]["encrypted"], false);
        // 612 x 792 points at 72 DPI.
        assert_eq!((row["width"].as_u64(), row["height"].as_u64()), (Some(612), Some(792)));
        let img = image::open(row["path"].as_str().unwrap()).expect("the render is a JPEG");
        assert_eq!((img.width(), img.height()), (612, 792));
        assert!(row["thumbnail_bytes"].as_u64().unwrap() > 0);
        assert_eq!(row["chunk_index"].as_u64(), Some(i as u64));
    }
    let table_rows = read_texts(&table, "report.pdf");
    for (page, text) in texts.iter().enumerate() {
        assert!(table_rows[page].contains(text), "page {} text: {:?}", page + 1, table_rows[page]);
    }

    // Colors stay where they are, in the render and in the thumbnail.
    let red = rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with("red.pdf")).unwrap();
    for path in [&red["path"], &red["thumbnail_path"]] {
        let img = image::open(path.as_str().unwrap()).unwrap().to_rgb8();
        let [r, g, b] = img.get_pixel(img.width() / 2, img.height() - 4).0;
        assert!(r > 180 && g < 60 && b < 60, "{path}: a red page reads as ({r}, {g}, {b})");
    }
    // A page of black text on white is a grayscale JPEG.
    assert_eq!(image::open(report[0]["path"].as_str().unwrap()).unwrap().color(), image::ColorType::L8);

    let restricted = rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with("restricted.pdf")).unwrap();
    assert_eq!(restricted["metadata"]["encrypted"], true);

    let huge = rows.iter().find(|r| r["source_uri"].as_str().unwrap().ends_with("huge-page.pdf")).unwrap();
    let pixels = huge["width"].as_u64().unwrap() * huge["height"].as_u64().unwrap();
    assert!(pixels <= 4_000_000 && pixels > 3_000_000, "huge page rendered under the cap: {pixels}");
}

/// Page texts of one source file, by page order, through the Lance API.
fn read_texts(table: &Path, name: &str) -> Vec<String> {
    use arrow_array::{Array, StringArray, UInt32Array};
    use futures::TryStreamExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ds = lance::Dataset::open(table.to_str().unwrap()).await.unwrap();
        let mut scan = ds.scan();
        scan.project(&["source_uri", "page", "text"]).unwrap();
        let batches: Vec<_> = scan.try_into_stream().await.unwrap().try_collect().await.unwrap();
        let mut pages = Vec::new();
        for b in batches {
            let uri = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let page = b.column(1).as_any().downcast_ref::<UInt32Array>().unwrap();
            let text = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                if uri.value(i).ends_with(name) && !page.is_null(i) {
                    pages.push((page.value(i), text.value(i).to_string()));
                }
            }
        }
        pages.sort();
        pages.into_iter().map(|(_, t)| t).collect()
    })
}

#[test]
fn without_libpdfium_pdfs_fail_with_install_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("doc.pdf"), make_pdf(&["hello"], (612.0, 792.0), "t")).unwrap();
    std::fs::write(corpus.join("note.txt"), "still ingested").unwrap();
    let mut cmd = sluice();
    cmd.env("SLUICE_PDFIUM_PATH", dir.path().join("missing.so")).env("SLUICE_VENV", dir.path().join("no-venv")).env_remove("VIRTUAL_ENV");
    cmd.arg("ingest").arg("--table").arg(dir.path().join("t")).arg(&corpus).arg("--json");
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["files_ingested"], 1);
    let reason = s["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("pip install pypdfium2==5.15.2"), "{reason}");
}

/// A PDF of many pages is spread over PDF processes by page range (one
/// file keeps more than one busy, at most one per core and normalizer),
/// and its rows come out once each, numbered as in the document; with one
/// normalizer it is not split and reads the same.
#[test]
fn a_big_pdf_is_spread_over_processes_and_its_pages_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    let pages: Vec<Vec<String>> = (1..=150)
        .map(|p| (0..40).map(|l| format!("Page {p} line {l}: the quick brown fox jumps over the lazy dog")).collect())
        .collect();
    std::fs::write(corpus.join("big.pdf"), sluice_common::samples::text_pdf(&pages, (612.0, 792.0), "Big")).unwrap();

    let check = |table: &Path, workers: &str| -> serde_json::Value {
        let (code, s) = ingest_json(table, &[&corpus], &["--pdf-dpi", "36", "--normalization-workers", workers]);
        assert_eq!(code, 0, "{s}");
        assert_eq!((s["files_ingested"].as_u64(), s["rows"].as_u64()), (Some(1), Some(150)), "{s}");
        let texts = read_texts(table, "big.pdf");
        assert_eq!(texts.len(), 150, "one row per page, none twice");
        for (i, text) in texts.iter().enumerate() {
            assert!(text.starts_with(&format!("Page {} line 0", i + 1)), "page {}: {text:.40}", i + 1);
        }
        s
    };
    let cores = std::thread::available_parallelism().unwrap().get().min(4) as u64;
    let split = check(&dir.path().join("four"), "4");
    let procs = split["peak_pdf_normalizations"].as_u64().unwrap();
    assert!((2.min(cores)..=cores).contains(&procs), "one file used {procs} PDF processes on {cores} cores");
    assert_eq!(split["peak_concurrent_normalizations"], 1, "helpers are not files");
    let whole = check(&dir.path().join("one"), "1");
    assert_eq!(whole["peak_pdf_normalizations"], 1, "one normalizer: no helpers");
}

/// PDFs are rendered in at most one process per core and normalizer at
/// once, however many normalizers take files; every page lands either way.
#[test]
fn pdf_processes_are_one_per_core_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    for f in 0..8 {
        let pages: Vec<Vec<String>> = (1..=10).map(|p| vec![format!("File {f} page {p}")]).collect();
        std::fs::write(corpus.join(format!("doc{f}.pdf")), sluice_common::samples::text_pdf(&pages, (612.0, 792.0), "Doc")).unwrap();
    }
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    for workers in [1, 4] {
        let table = dir.path().join(format!("t{workers}"));
        let (code, s) = ingest_json(&table, &[&corpus], &["--pdf-dpi", "100", "--normalization-workers", &workers.to_string()]);
        assert_eq!(code, 0, "{s}");
        assert_eq!((s["files_ingested"].as_u64(), s["rows"].as_u64()), (Some(8), Some(80)), "{s}");
        assert_eq!(read_rows(&table).len(), 80);
        let peak = s["peak_pdf_normalizations"].as_u64().unwrap();
        let most = cores.min(workers);
        assert!((2.min(most)..=most).contains(&peak), "{workers} normalizers rendered {peak} PDFs at once on {cores} cores");
        assert!(s["peak_concurrent_normalizations"].as_u64().unwrap() <= workers, "{s}");
    }
}

/// A page image of three lines of text, at 300 dpi (US letter), as a
/// scanner makes it; two of them wrapped into a PDF without a text layer
/// (img2pdf), and the image on its own.
fn make_scans(dir: &Path) {
    let script = format!(
        "from PIL import Image, ImageDraw, ImageFont\n\
         import img2pdf\n\
         font = ImageFont.load_default(size=40)\n\
         img = Image.new('L', (2550, 3300), 255)\n\
         d = ImageDraw.Draw(img)\n\
         for i, line in enumerate(['Quarterly report of the river sluice', 'The harbour gates opened at dawn', 'Invoice number 48213 was paid in full']):\n\
         \x20   d.text((200, 300 + i * 120), line, fill=0, font=font)\n\
         img.save('{d}/scan.png', dpi=(300, 300))\n\
         open('{d}/scan.pdf', 'wb').write(img2pdf.convert(['{d}/scan.png', '{d}/scan.png']))\n",
        d = dir.display()
    );
    let out = run(Command::new(python()).arg("-c").arg(&script));
    assert!(out.status.success(), "Pillow and img2pdf make the scan: {}", String::from_utf8_lossy(&out.stderr));
}

/// (file name, page, text, metadata) of every row, through pylance.
fn rows_with_metadata(table: &Path) -> Vec<(String, Option<u64>, String, serde_json::Value)> {
    let script = format!(
        "import json, lance\n\
         rows = lance.dataset('{t}').to_table(columns=['source_uri', 'page', 'text', 'metadata']).to_pylist()\n\
         print(json.dumps([[r['source_uri'].rsplit('/', 1)[1], r['page'], r['text'] or '', json.loads(r['metadata'] or 'null')] for r in rows]))\n",
        t = table.display()
    );
    let out = run(Command::new(python()).arg("-c").arg(&script));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<(String, Option<u64>, String, serde_json::Value)> = serde_json::from_slice(&out.stdout).unwrap();
    rows
}

/// Scanned pages (no text layer) are read with Tesseract in the normalizer
/// processes and can be found by SQL; pages with a text layer keep it and
/// are not read again; `--ocr off` reads nothing; `--ocr always` reads
/// images and every page.
#[test]
fn scanned_pages_are_read_with_ocr_and_found_by_sql() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("docs");
    std::fs::create_dir_all(&corpus).unwrap();
    make_scans(&corpus);
    std::fs::write(corpus.join("typed.pdf"), make_pdf(&["a typed page about sluice gates"], (612.0, 792.0), "typed")).unwrap();
    let words = |text: &str| {
        let t = text.to_lowercase();
        ["quarterly report", "harbour gates", "48213"].iter().all(|w| t.contains(w))
    };

    let auto = dir.path().join("auto");
    let (code, s) = ingest_json(&auto, &[&corpus], &[]);
    assert_eq!(code, 0, "{s}");
    let rows = rows_with_metadata(&auto);
    let scans: Vec<_> = rows.iter().filter(|r| r.0 == "scan.pdf").collect();
    assert_eq!(scans.len(), 2);
    for (_, page, text, meta) in &scans {
        assert!(words(text), "page {page:?}: OCR text {text:?}");
        assert_eq!(meta["text_source"], "ocr");
        assert!(meta["ocr_confidence"].as_i64().unwrap() >= 70, "{meta}");
        assert_eq!((meta["ocr_dpi"].as_u64(), meta["ocr_languages"].as_str()), (Some(300), Some("eng")));
        assert!(meta["ocr_cpu_seconds"].as_f64().unwrap() > 0.0, "{meta}");
    }
    let typed = rows.iter().find(|r| r.0 == "typed.pdf").unwrap();
    assert_eq!(typed.2.trim(), "a typed page about sluice gates");
    assert_eq!(typed.3["text_source"], "text_layer");
    assert!(typed.3.get("ocr_confidence").is_none(), "a page with a text layer is not read again");
    let png = rows.iter().find(|r| r.0 == "scan.png").unwrap();
    assert!(png.2.is_empty(), "images are read only with --ocr always");
    // Found by SQL.
    let out = run(sluice().args(["query", "--json", "--table"]).arg(&auto).arg("SELECT page FROM auto WHERE text LIKE '%harbour gates%' ORDER BY page"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(found.iter().map(|r| r["page"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);

    let off = dir.path().join("off");
    let (code, _) = ingest_json(&off, &[&corpus], &["--ocr", "off"]);
    assert_eq!(code, 0);
    for (name, _, text, meta) in rows_with_metadata(&off).iter().filter(|r| r.0 == "scan.pdf") {
        assert!(text.trim().is_empty() && meta["text_source"] == "none" && meta.get("ocr_confidence").is_none(), "{name}: {meta}");
    }

    let always = dir.path().join("always");
    let (code, _) = ingest_json(&always, &[&corpus], &["--ocr", "always"]);
    assert_eq!(code, 0);
    let rows = rows_with_metadata(&always);
    let png = rows.iter().find(|r| r.0 == "scan.png").unwrap();
    assert!(words(&png.2) && png.3["text_source"] == "ocr", "the image is read: {:?} {}", png.2, png.3);
    let typed = rows.iter().find(|r| r.0 == "typed.pdf").unwrap();
    assert!(typed.2.to_lowercase().contains("typed page") && typed.3["text_source"] == "ocr", "{:?} {}", typed.2, typed.3);

    // Languages without data installed: the pages land, and say why they have no text.
    let missing = dir.path().join("missing");
    let (code, _) = ingest_json(&missing, &[&corpus.join("scan.pdf")], &["--ocr-languages", "qqq"]);
    assert_eq!(code, 0, "a missing OCR language costs the text, not the file");
    for (_, _, text, meta) in rows_with_metadata(&missing) {
        assert!(text.is_empty() && meta["ocr_error"].as_str().unwrap().contains("tesseract-ocr-"), "{meta}");
    }
}
