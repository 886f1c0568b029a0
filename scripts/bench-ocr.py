#!/usr/bin/env python3
"""What OCR costs: CPU seconds per scanned page, and whether PDFs with a text
layer are any slower with OCR on.

Makes two corpora with Pillow and img2pdf (the sluice venv has both):
scanned PDFs (US letter pages at 300 dpi, 44 lines of 10-point text each,
no text layer) and the same text typed into PDFs with a text layer (sluice's
own sample PDFs, `sample-corpus --text-pdfs 40`). Then runs `sluice ingest` on each, alternating `--ocr auto`
and `--ocr off`. OCR runs on one thread a page (OMP_THREAD_LIMIT=1), so the
`ocr_cpu_seconds` each scanned page's row records (its thread's CPU time)
is what OCR costs; `ocr_seconds` is its wall time, longer when the
normalizer processes outnumber the cores. Whole-ingest wall times too. Needs pylance (the sluice venv's Python).

    scripts/bench-ocr.py --sluice target/release/sluice [--pages 40] [--runs 3]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

WORDS = ("river sluice harbour gate report quarter invoice number paid full water level table "
         "commit version fragment page scan letter morning evening north south account").split()


def make_scans(out: Path, pages: int, per_pdf: int) -> None:
    from PIL import Image, ImageDraw, ImageFont
    import img2pdf

    rng = random.Random(7)
    font = ImageFont.load_default(size=42)  # 10 pt at 300 dpi
    images = []
    for p in range(pages):
        img = Image.new("L", (2550, 3300), 255)
        d = ImageDraw.Draw(img)
        for line in range(44):
            d.text((225, 225 + line * 64), " ".join(rng.choice(WORDS) for _ in range(11)), fill=0, font=font)
        path = out / f"page-{p:04}.png"
        img.save(path, dpi=(300, 300))
        images.append(path)
    out.joinpath("scans").mkdir()
    for i in range(0, pages, per_pdf):
        with open(out / "scans" / f"scan-{i // per_pdf:03}.pdf", "wb") as f:
            f.write(img2pdf.convert([str(p) for p in images[i:i + per_pdf]]))
    for p in images:
        p.unlink()


def ingest(sluice: str, corpus: Path, ocr: str) -> dict:
    import lance

    table = Path(tempfile.mkdtemp(prefix="bench-ocr-"))
    start = time.monotonic()
    out = subprocess.run([sluice, "ingest", "--json", "--ocr", ocr, "--table", str(table / "t"), str(corpus)],
                         capture_output=True, check=True)
    wall = time.monotonic() - start
    metas = [json.loads(m) for m in lance.dataset(str(table / "t")).to_table(columns=["metadata"]).column(0).to_pylist()]
    shutil.rmtree(table)
    summary = json.loads(out.stdout)
    ocr_cpu = [m["ocr_cpu_seconds"] for m in metas if "ocr_cpu_seconds" in m]
    ocr_wall = [m["ocr_seconds"] for m in metas if "ocr_seconds" in m]
    return {"wall": wall, "ocr_cpu": ocr_cpu, "ocr_wall": ocr_wall, "rows": summary["rows"], "failed": summary["files_failed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ocr-corpus-"))
    try:
        make_scans(work, args.pages, 10)
        typed = work / "typed"
        subprocess.run([args.sluice, "sample-corpus", str(typed), "--files", "1", "--text-pdfs", "40"], check=True,
                       capture_output=True)
        results = {"scanned": {"auto": [], "off": []}, "typed": {"auto": [], "off": []}}
        for run in range(args.runs):
            for corpus in ("scanned", "typed"):
                # Alternate which goes first, so neither always runs on a cold cache.
                for ocr in ("auto", "off") if run % 2 == 0 else ("off", "auto"):
                    path = work / "scans" if corpus == "scanned" else typed / "pdfs"
                    results[corpus][ocr].append(ingest(args.sluice, path, ocr))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        per_page = [s for r in results["scanned"]["auto"] for s in r["ocr_cpu"]]
        wall_per_page = [s for r in results["scanned"]["auto"] for s in r["ocr_wall"]]
        report = {
            "scanned_pages": args.pages,
            "pages_read_by_ocr": [len(r["ocr_cpu"]) for r in results["scanned"]["auto"]],
            "ocr_cpu_seconds_per_page_median": med(per_page),
            "ocr_cpu_seconds_per_page_mean": sum(per_page) / len(per_page),
            "ocr_wall_seconds_per_page_median": med(wall_per_page),
            "typed_pages_read_by_ocr": sum(len(r["ocr_cpu"]) for r in results["typed"]["auto"]),
            "scanned_wall_auto": med([r["wall"] for r in results["scanned"]["auto"]]),
            "scanned_wall_off": med([r["wall"] for r in results["scanned"]["off"]]),
            "typed_pages": results["typed"]["off"][0]["rows"],
            "typed_wall_auto": [round(r["wall"], 3) for r in results["typed"]["auto"]],
            "typed_wall_off": [round(r["wall"], 3) for r in results["typed"]["off"]],
            "typed_auto_vs_off": med([r["wall"] for r in results["typed"]["auto"]]) / med([r["wall"] for r in results["typed"]["off"]]),
            "failed": sum(r["failed"] for c in results.values() for rs in c.values() for r in rs),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
