//! `scripts/code-layout.py`, which writes the symbol ordering files the
//! shipped binaries are linked with (`cli/layout/`), run on this build: the
//! page tracer must leave the program working, and what it writes must name
//! functions the binaries have, under half of them (those on the pages an
//! optimized build's ingest runs are 7-12 % of its functions; a debug
//! build's, ~30 %), `main` among them, after a first line naming the compiler.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use support::*;

/// The names of a binary's functions (`nm`).
fn functions(binary: &Path) -> HashSet<String> {
    let out = Command::new("nm").arg("--defined-only").arg(binary).output().expect("nm (binutils) must be installed");
    assert!(out.status.success(), "nm {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then(|| name.to_string())
        })
        .collect()
}

fn unpacked(file: &Path) -> Vec<String> {
    let out = Command::new("gzip").arg("-dc").arg(file).output().expect("gzip");
    assert!(out.status.success(), "gzip -dc {}", file.display());
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn code_layout_orders_the_functions_an_ingest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    // Text, images, a PDF and a few broken files: the lean normalizer
    // processes run too.
    let mut cmd = sluice();
    cmd.arg("sample-corpus").arg(&corpus).args(["--files", "60", "--with-media", "--with-bad-files"]);
    assert!(run(&mut cmd).status.success());
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice"));
    let out = dir.path().join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/code-layout.py");
    let done = run(Command::new("python3")
        .arg(&script)
        .arg("--bin-dir")
        .arg(bin.parent().unwrap())
        .arg("--out")
        .arg(&out)
        .arg("--corpus")
        .arg(&corpus)
        .args(["--runs", "1", "--small-files", "100"]));
    assert!(done.status.success(), "code-layout.py failed");

    let rustc = Command::new("rustc").arg("--version").output().expect("rustc --version");
    let rustc = String::from_utf8(rustc.stdout).unwrap().trim().to_string();
    for (binary, ran) in [("sluice", "sluice_worker"), ("sluice-normalizer", "sluice_worker")] {
        let mut order = unpacked(&out.join(format!("{binary}.order.gz")));
        // cli/build.rs takes a file only from the compiler it names first.
        assert_eq!(order.first(), Some(&format!("# {rustc}")), "{binary}: the layout does not say which compiler it is for");
        order.remove(0);
        let all = functions(&bin.with_file_name(binary));
        assert!(order.iter().any(|n| n == "main"), "{binary}: main is not in its layout");
        assert!(order.iter().any(|n| n.contains(ran)), "{binary}: no {ran} function in its layout");
        let unknown: Vec<&String> = order.iter().filter(|n| !all.contains(*n)).take(5).collect();
        assert!(unknown.is_empty(), "{binary}: the layout names functions the binary lacks: {unknown:?}");
        let distinct: HashSet<&String> = order.iter().collect();
        assert_eq!(distinct.len(), order.len(), "{binary}: a function named twice");
        assert!(
            order.len() * 2 < all.len(),
            "{binary}: {} of its {} functions laid out first: the trace is not telling run code from the rest",
            order.len(),
            all.len()
        );
    }
}
