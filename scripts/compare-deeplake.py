#!/usr/bin/env python3
"""Deeplake 4.7.4's `Client.ingest` against `sluice ingest`, back to back on
one generated corpus: wall time and peak resident memory of each (the whole
process tree, sampled the same way for both): the sum of the processes'
RSS (every 20 ms), and the sum of their PSS (every 100 ms), which counts a
page shared by several processes (a library's code in each of sluice's
normalizer processes) once in all instead of once in each. Each is run
twice a round: once with nothing watching it, for the wall time, and once
with its memory sampled (the sampler's reads of /proc take CPU from the
run; that run's wall time is reported as `seconds_sampled`).

    scripts/compare-deeplake.py [--sluice PATH] [--work DIR] [--per-kind N] [--runs N]

The corpus (made once under --work, default /var/tmp/sluice-compare):
N H.264/AAC videos of 10-30 s at 640x360, N text PDFs of 2-12 pages, N JPEG
and PNG images of 640x480 to 1920x1080, N text files of 2-40 KB (N=50).

Deeplake is installed from PyPI into its own venv (`deeplake==4.7.4
pymupdf`). Its FILE path runs locally once the four calls that need its
managed service are replaced: creating the table (the dataset is created
locally instead), opening it by `al://` path, the post-ingest
`deeplake_sync_table` query and the drop on failure. Everything else is its
own code, called as its guide shows, once per file type (a call with mixed
types fails). sluice ingests the whole corpus in one call, default knobs.

With --runs N both are run N times, alternating (the machine may be shared
and noisy): every run's figures are printed, with the median ratios.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DEEPLAKE = "deeplake==4.7.4"

# Runs inside Deeplake's venv: one ingest call per kind, as its guide does.
DEEPLAKE_RUN = r'''
import json, os, sys, time
import deeplake
from deeplake.managed.client import Client

root = sys.argv[1]
kinds = json.loads(sys.argv[2])

def open_local(self, table_name, al_path):
    ds = self._ds_cache.get(table_name)
    if ds is None:
        path = os.path.join(root, table_name)
        ds = deeplake.open(path) if os.path.exists(path) else deeplake.create(path)
        self._ds_cache[table_name] = ds
    return ds

Client._create_table_via_api = lambda self, *a, **k: True
Client._get_or_open_ds = open_local
Client.query = lambda self, *a, **k: []
Client.drop_table = lambda self, *a, **k: None

client = Client(token="local", org_id="local")
rows = 0
started = time.monotonic()
for kind, files in kinds.items():
    result = client.ingest(table_name=f"lake_{kind}", data={"path": files}, schema={"path": "FILE"})
    rows += result["row_count"]
print(json.dumps({"rows": rows, "seconds": time.monotonic() - started}))
'''


def tree_pids(pid):
    """`pid` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        pids.append(p)
    return pids


def tree_rss(pids):
    """Resident bytes of these processes: the sum of their RSS (a page shared
    by several, such as a library's code, counts once in each)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def tree_pss(pids):
    """The sum of these processes' PSS: a page shared by several counts as
    its share, so the memory they really hold together. Costlier to read
    than RSS (the kernel walks every mapping)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
    return total


def timed(cmd):
    """Run `cmd` with nothing watching it; its stdout and wall seconds."""
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 2):
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc.stdout.decode(), wall


def measured(cmd, env=None):
    """Run `cmd`; its stdout, wall seconds, and the peak RSS (sampled every
    20 ms) and peak PSS (every 100 ms, which reading it every 20 ms slowed
    the measured run by up to a fifth) of its tree. The sampler's reads of
    /proc take CPU from the run it watches, so wall times come from
    `timed` runs."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = [0, 0]

    def sample():
        n = 0
        while proc.poll() is None:
            pids = tree_pids(proc.pid)
            peak[0] = max(peak[0], tree_rss(pids))
            if n % 5 == 0:
                peak[1] = max(peak[1], tree_pss(pids))
            n += 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    wall = time.monotonic() - started
    if proc.returncode not in (0, 2):
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    return out.decode(), wall, peak


def make_corpus(root: Path, per_kind: int, sluice: str):
    done = root / "done"
    if done.exists():
        return
    rng = random.Random(7)
    for d in ("video", "pdf", "image", "text"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(per_kind):
        secs = rng.randint(10, 30)
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={secs}",
             "-f", "lavfi", "-i", f"sine=frequency={300 + 10 * i}:duration={secs}", "-c:v", "libx264",
             "-preset", "veryfast", "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
             str(root / "video" / f"clip-{i:03}.mp4")],
            check=True,
        )
        w, h = rng.choice([(640, 480), (1024, 768), (1280, 720), (1920, 1080)])
        ext = "jpg" if i % 2 else "png"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}", "-frames:v", "1",
             str(root / "image" / f"img-{i:03}.{ext}")],
            check=True,
        )
        words = ["river", "sluice", "table", "lake", "frame", "page", "chunk", "commit", "shard", "vector"]
        size = rng.randint(2_000, 40_000)
        text = []
        while sum(len(t) + 1 for t in text) < size:
            text.append(rng.choice(words))
        (root / "text" / f"doc-{i:03}.txt").write_text(" ".join(text))
    pdfs = root / "pdf-gen"
    subprocess.run([sluice, "sample-corpus", str(pdfs), "--files", "0", "--text-pdfs", str(per_kind)], check=True,
                   stdout=subprocess.DEVNULL)
    for p in sorted((pdfs / "pdfs").iterdir()):
        p.rename(root / "pdf" / p.name)
    done.write_text("ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sluice", default="sluice", help="the sluice binary (a release or dist build: cargo build --profile dist -p sluice, target/dist/sluice)")
    ap.add_argument("--work", default="/var/tmp/sluice-compare")
    ap.add_argument("--per-kind", type=int, default=50)
    ap.add_argument("--runs", type=int, default=1, help="rounds of both, alternating")
    args = ap.parse_args()
    work = Path(args.work)
    corpus = work / "corpus"
    make_corpus(corpus, args.per_kind, args.sluice)

    venv = work / "deeplake-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", DEEPLAKE, "pymupdf"], check=True)

    kinds = {k: sorted(str(p) for p in (corpus / k).iterdir()) for k in ("video", "pdf", "image", "text")}
    files = sum(len(v) for v in kinds.values())
    runs = [one_round(args, work, corpus, python, kinds) for _ in range(max(1, args.runs))]
    if len(runs) == 1:
        results = runs[0]
    else:
        median = lambda key: statistics.median(r[key] for r in runs)
        results = {"runs": runs, "median_sluice_speedup": median("sluice_speedup"),
                   "median_sluice_speedup_sampled": median("sluice_speedup_sampled"),
                   "median_sluice_memory_ratio": median("sluice_memory_ratio"),
                   "median_sluice_pss_ratio": median("sluice_pss_ratio")}
    results["files"] = files
    print(json.dumps(results, indent=2))


def one_round(args, work, corpus, python, kinds):
    """Deeplake, then sluice, on the corpus, each twice: a run with nothing
    watching it for the wall time, then one with its memory sampled (whose
    wall time is reported too, as `seconds_sampled`). Their figures and the
    ratios."""
    results = {}
    dl_root = work / "deeplake-tables"

    def deeplake(run):
        subprocess.run(["rm", "-rf", str(dl_root)], check=True)
        dl_root.mkdir(parents=True)
        return run([str(python), "-c", DEEPLAKE_RUN, str(dl_root), json.dumps(kinds)])

    _, wall = deeplake(timed)
    out, sampled_wall, peak = deeplake(measured)
    dl = json.loads(out.strip().splitlines()[-1])
    results["deeplake"] = {"seconds": wall, "seconds_sampled": sampled_wall, "peak_rss_mb": peak[0] / 1e6,
                           "peak_pss_mb": peak[1] / 1e6, "rows": dl["rows"]}

    table = work / "sluice-table"

    def sluice(run):
        subprocess.run(["rm", "-rf", str(table)], check=True)
        return run([args.sluice, "ingest", "--table", str(table), "--json", str(corpus / "video"),
                    str(corpus / "pdf"), str(corpus / "image"), str(corpus / "text")])

    _, wall = sluice(timed)
    out, sampled_wall, peak = sluice(measured)
    s = json.loads(out)
    results["sluice"] = {"seconds": wall, "seconds_sampled": sampled_wall, "peak_rss_mb": peak[0] / 1e6,
                         "peak_pss_mb": peak[1] / 1e6, "rows": s["rows"],
                         "files_ingested": s["files_ingested"], "files_failed": s["files_failed"]}
    results["sluice_speedup_sampled"] = results["deeplake"]["seconds_sampled"] / sampled_wall
    results["sluice_speedup"] = results["deeplake"]["seconds"] / results["sluice"]["seconds"]
    results["sluice_memory_ratio"] = results["sluice"]["peak_rss_mb"] / results["deeplake"]["peak_rss_mb"]
    results["sluice_pss_ratio"] = results["sluice"]["peak_pss_mb"] / results["deeplake"]["peak_pss_mb"]
    return results


if __name__ == "__main__":
    main()
