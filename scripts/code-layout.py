#!/usr/bin/env python3
"""Lay out the code an ingest runs together in sluice's binaries.

The kernel maps a program's code 64 KB at a time around each page it runs
(fault-around), so a process's resident code is the 64 KB windows its
functions fall in, not the functions themselves. Left to the compiler's
order, the ~11 MB of code an ingest runs in `sluice` is spread over ~640 of
them: ~42 MB resident. This script records which pages an ingest runs (an
LD_PRELOAD library, scripts/pagetrace.c), maps them to the functions on
them, and writes those functions' names in first-run order to
cli/layout/<profile>/<binary>.order.gz. cli/build.rs hands them to the
linker (lld's --symbol-ordering-file), which puts those functions first,
together.

A round: build the profile (with the layout files there are), trace ingests
of a mixed corpus, write the files. Functions that share a page with one that
ran are taken too; the next round, laid out with those, finds fewer of them,
so two or three rounds are worth it (the first starts from the build there
is unless --build-first).

Symbol names carry a hash of the crate's build settings (profile, features,
dependencies, compiler), not of its code: a layout stays valid across code
changes and goes stale after toolchain upgrades or a change to a crate's
dependencies, which renames the functions of every crate above it too
(functions it no longer names are laid out as the compiler ordered them).
Rerun it then. Code changes rename a few: functions LLVM made local to a
part of a crate carry a hash of that part (`.llvm.<n>`).

Each round also ingests --small-files small files (text, 96 px images,
binaries; 10,000 by default, as `sluice bench` makes them): the code only
long jobs run (commits between flushes, more shards) is then laid out
with the rest.

Usage: scripts/code-layout.py [--profile dist] [--rounds 2] [--corpus DIR]
       [--small-files N] [--run 'ARGS ...']  (more sluice commands to
       trace, as in a shell)
       scripts/code-layout.py --bin-dir DIR --out DIR  (trace those binaries
       once, no build; write the files to --out)
"""

import argparse
import bisect
import gzip
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARIES = ("sluice", "sluice-normalizer", "sluice-normalizer-media")
PAGE = 4096


def build(profile: str):
    subprocess.run(["cargo", "build", "--profile", profile, "-p", "sluice"], cwd=ROOT, check=True)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def functions(binary: Path):
    """(file offset, end, name) of the binary's functions, by offset."""
    segments = []
    for line in subprocess.run(["readelf", "-lW", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segments.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
    out = []
    nm = subprocess.run(["nm", "-n", "-S", "--defined-only", str(binary)], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        f = line.split()
        if len(f) != 4 or f[2] not in "tTwW":
            continue
        addr, size = int(f[0], 16), int(f[1], 16)
        for offset, vaddr, filesz in segments:
            if vaddr <= addr < vaddr + filesz:
                start = addr - vaddr + offset
                out.append((start, start + max(size, 1), f[3]))
                break
    out.sort()
    return out


def names_on_pages(pages, funcs):
    """The functions on each page, pages in the order given, each name once."""
    starts = [f[0] for f in funcs]
    seen, names = set(), []
    for page in pages:
        hits = []
        # The function running into the page (and its aliases)...
        j = bisect.bisect_right(starts, page) - 1
        if j >= 0:
            first = starts[j]
            while j >= 0 and starts[j] == first:
                if funcs[j][1] > page:
                    hits.append(funcs[j])
                j -= 1
        # ...and those starting on it.
        k = bisect.bisect_right(starts, page)
        while k < len(funcs) and funcs[k][0] < page + PAGE:
            hits.append(funcs[k])
            k += 1
        for _, _, name in sorted(hits):
            if name not in seen:
                seen.add(name)
                names.append(name)
    return names


def read_traces(trace_dir: Path):
    """Per binary, its pages in first-run order over all its traced processes."""
    pages = {}
    for path in sorted(trace_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        name = path.name.rsplit(".", 1)[0]
        seen, order = pages.setdefault(name, (set(), []))
        for (offset,) in struct.iter_unpack("<Q", path.read_bytes()):
            if offset not in seen:
                seen.add(offset)
                order.append(offset)
    return {name: order for name, (_, order) in pages.items()}


def make_corpus(root: Path, sluice: Path):
    """Every kind an ingest reads: text, images, PDFs, videos (with the
    ffmpeg CLI) and a few broken files, for their error paths."""
    if shutil.which("ffmpeg") is None:
        print("note: no ffmpeg CLI, so the corpus has no videos; the media normalizer's layout misses them", file=sys.stderr)
    subprocess.run([str(sluice), "sample-corpus", str(root), "--files", "400", "--with-media", "--with-bad-files",
                    "--text-pdfs", "20", "--image-side", "640"], check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="dist")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build-first", action="store_true", help="build before the first round's trace too")
    ap.add_argument("--corpus", type=Path, help="files to ingest (default: a generated mixed corpus)")
    ap.add_argument("--runs", type=int, default=2, help="ingests traced a round")
    ap.add_argument("--small-files", type=int, default=10000, help="small files ingested a round besides (0: none)")
    ap.add_argument("--run", action="append", default=[], help="another sluice command line to trace")
    ap.add_argument("--bin-dir", type=Path, help="trace the binaries there, one round, no build")
    ap.add_argument("--out", type=Path, help="where to write the files (default: cli/layout/<profile>)")
    args = ap.parse_args()
    if args.bin_dir is not None:
        args.rounds, args.build_first = 1, False

    # The names hash the compiler's version: cli/build.rs uses a file only
    # with the rustc it was made with (its first line).
    rustc = subprocess.run([os.environ.get("RUSTC", "rustc"), "--version"], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="sluice-layout-"))
    tracer = work / "pagetrace.so"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tracer), str(ROOT / "scripts" / "pagetrace.c")], check=True)
    out_dir = args.out or ROOT / "cli" / "layout" / args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for round_no in range(1, args.rounds + 1):
            if round_no > 1 or args.build_first:
                build(args.profile)
            bins = work / "bin"
            shutil.rmtree(bins, ignore_errors=True)
            bins.mkdir()
            for name in BINARIES:
                shutil.copy2((args.bin_dir or target_dir() / args.profile) / name, bins / name)
            corpus = args.corpus
            if corpus is None:
                corpus = work / "corpus"
                if not corpus.exists():
                    make_corpus(corpus, bins / "sluice")
            traces = work / "traces"
            shutil.rmtree(traces, ignore_errors=True)
            traces.mkdir()
            env = dict(os.environ, LD_PRELOAD=str(tracer), PAGETRACE_OUT=str(traces), PAGETRACE_BIN=str(bins))
            # Fresh tables: an ingest into one that has the files skips them.
            tables = [work / f"table-{i}" for i in range(args.runs)]
            for table in tables:
                shutil.rmtree(table, ignore_errors=True)
            commands = [[str(bins / "sluice"), "ingest", "--table", str(t), str(corpus)] for t in tables]
            if args.small_files > 0:
                small = work / "small-files"
                if not small.exists():
                    subprocess.run([str(bins / "sluice"), "sample-corpus", str(small), "--files", str(args.small_files)],
                                   check=True, stdout=subprocess.DEVNULL)
                shutil.rmtree(work / "table-small", ignore_errors=True)
                commands.append([str(bins / "sluice"), "ingest", "--table", str(work / "table-small"), str(small)])
            commands += [[str(bins / "sluice")] + shlex.split(extra) for extra in args.run]
            for command in commands:
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                # 2: the ingest finished with some files failed (the broken ones).
                if done.returncode not in (0, 2):
                    sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr.decode(errors='replace')[-3000:]}")
            for name, pages in sorted(read_traces(traces).items()):
                names = names_on_pages(pages, functions(bins / name))
                with open(out_dir / f"{name}.order.gz", "wb") as raw:
                    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as z:
                        z.write((f"# {rustc}\n" + "\n".join(names) + "\n").encode())
                print(f"round {round_no}: {name}: ran {len(pages) * PAGE / 1e6:.1f} MB of code on {len(pages)} pages, "
                      f"{len(names)} functions laid out first")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out_dir}/; build the profile again to link with them")


if __name__ == "__main__":
    main()
