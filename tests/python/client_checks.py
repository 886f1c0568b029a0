"""What the sluice client promises, checked against a real run: per-file
values as columns, progress, failed files with reasons, SQL with
parameters, inserts with idempotency keys, typed errors, resume after a
rerun and after Ctrl-C. Runs on this machine, or against a coordinator
when SLUICE_URL is set. Usage: client_checks.py DATA_DIR"""

import collections
import glob
import os
import signal
import sys

import lance

import sluice
from sluice import Client, IngestError, QueryError, TableNotFoundError

url = os.environ.get("SLUICE_URL")
client = Client(url=url) if url else Client()
data = sys.argv[1]
videos = sorted(glob.glob(f"{data}/video_*.mp4"))
pdfs = sorted(glob.glob(f"{data}/doc_*.pdf"))
broken = f"{data}/broken.pdf"
missing = f"{data}/missing.mp4"
files = videos + pdfs + [broken, missing]
labels = ["cat" if i % 2 else "dog" for i in range(len(files))]
splits = ["train" if i < 5 else "test" for i in range(len(files))]
scores = [i / 4 for i in range(len(files))]

# Mismatched per-file values: a ValueError before any work.
try:
    client.ingest("labeled", data={"path": files, "label": labels[:-1]}, schema={"path": "FILE"})
    raise AssertionError("mismatched lengths were accepted")
except ValueError as e:
    assert "one value per path" in str(e), e
try:
    client.query("SELECT * FROM labeled")
    raise AssertionError("a table appeared from a refused ingest")
except TableNotFoundError:
    pass

seen = []
result = client.ingest(
    "labeled",
    data={"path": files, "label": labels, "split": splits, "score": scores},
    schema={"path": "FILE", "label": "TEXT"},
    on_progress=lambda done, total: seen.append((done, total)),
    flush_every=20,
)
assert seen, "on_progress was never called"
assert seen[-1] == (len(files), len(files)), seen
assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:])), seen
assert result["files_ingested"] == len(videos) + len(pdfs), result
assert result["files_failed"] == 2, result
failed = {f["path"]: f["reason"] for f in result["failed"]}
assert set(failed) == {broken, missing} and all(failed.values()), failed

table = lance.dataset(result["dataset_path"], storage_options=client.storage_options or None)
assert table.count_rows() == result["row_count"], (table.count_rows(), result)
rows = table.to_table(columns=["source_uri", "label", "split", "score"]).to_pylist()
per_file = collections.Counter(r["source_uri"] for r in rows)
for r in rows:
    i = files.index(r["source_uri"].removeprefix("file://"))
    assert (r["label"], r["split"], r["score"]) == (labels[i], splits[i], scores[i]), r

# Per-file values are columns: SQL filters and groups on them, with $n.
got = client.query("SELECT label, count(*) AS n FROM labeled WHERE split = $1 GROUP BY label ORDER BY label", ["train"])
want = collections.Counter()
for uri, n in per_file.items():
    i = files.index(uri.removeprefix("file://"))
    if splits[i] == "train":
        want[labels[i]] += n
assert got == [{"label": k, "n": v} for k, v in sorted(want.items())], (got, want)
assert client.query("SELECT count(*) AS n FROM labeled WHERE score > $1", [100.0]) == [{"n": 0}]

# Running it again resumes: nothing is ingested twice.
again = client.ingest("labeled", data={"path": files, "label": labels, "split": splits, "score": scores}, schema={"path": "FILE"})
assert again["row_count"] == 0 and again["files_skipped"] == len(videos) + len(pdfs), again
assert lance.dataset(result["dataset_path"]).count_rows() == result["row_count"]

# Typed errors with the reason.
for sql, params, kind, text in [
    ("SELEC 1", None, QueryError, "syntax"),
    ("SELECT nope FROM labeled", None, QueryError, "nope"),
    ("SELECT * FROM no_such_table", None, TableNotFoundError, "does not exist"),
]:
    try:
        client.query(sql, params)
        raise AssertionError(f"{sql} did not fail")
    except kind as e:
        assert text in str(e), (sql, e)
try:
    client.ingest("labeled", data={"path": files}, schema={"path": "FILE"}, chunk_overlap=5000)
    raise AssertionError("bad settings were accepted")
except IngestError as e:
    assert "chunk_overlap" in str(e), e
# OCR settings reach the binary (or the coordinator) and are checked there.
try:
    client.ingest("labeled", data={"path": files}, schema={"path": "FILE"}, ocr_languages="eng+../etc")
    raise AssertionError("bad OCR languages were accepted")
except IngestError as e:
    assert "ocr_languages" in str(e), e

# Inserts: typed columns from the values, one landing per idempotency key.
meta = [{"filename": os.path.basename(f), "metadata": {"fps": 30 if i % 2 else 60}, "size": i} for i, f in enumerate(videos)]
first = client.insert("meta", meta, idempotency_key="meta-1")
retry = client.insert("meta", meta, idempotency_key="meta-1")
assert first["row_count"] == len(meta) and retry["row_count"] == 0 and retry["replayed"], (first, retry)
fps60 = client.query("SELECT filename FROM meta WHERE json_get_int(metadata, 'fps') = $1 ORDER BY filename", [60])
assert fps60 == [{"filename": m["filename"]} for m in meta if m["metadata"]["fps"] == 60], fps60
assert "meta" in client.list_tables() and "labeled" in client.list_tables()
assert client.open_table("meta").count_rows() == len(meta)

# Plain values (no FILE column) are rows, as in Deeplake's dict ingest;
# `index` builds a full-text index on text.
docs = client.ingest("docs", {"text": ["red fox", "blue whale"], "n": [1, 2]}, index=["text"])
assert docs["row_count"] == 2, docs
assert client.query("SELECT text FROM docs WHERE n = $1", [2]) == [{"text": "blue whale"}]
indices = client.open_table("docs").describe_indices()
assert any(i.field_names == ["text"] and "Inverted" in i.type_url for i in indices), indices

# Ctrl-C mid-ingest: the files in flight finish, what was committed stays,
# and running the same call again completes the table exactly once.
texts = sorted(glob.glob(f"{data}/texts/*.txt"))
interrupted = []

def stop_once(done, total):
    if done > 0 and not interrupted:
        interrupted.append(done)
        os.kill(os.getpid(), signal.SIGINT)

try:
    client.ingest("texts", data={"path": texts}, schema={"path": "FILE"}, on_progress=stop_once, flush_every=10, commit_every=20)
    raise AssertionError("Ctrl-C did not stop the ingest")
except KeyboardInterrupt:
    pass
try:
    partial = client.open_table("texts").count_rows()
except sluice.TableError:
    partial = 0
assert partial < len(texts), f"the interrupted ingest finished anyway ({partial} rows)"
done = client.ingest("texts", data={"path": texts}, schema={"path": "FILE"})
table = client.open_table("texts").to_table(columns=["id", "source_uri"]).to_pylist()
assert len(table) == len(texts) == len({r["id"] for r in table}) == len({r["source_uri"] for r in table}), len(table)
assert done["files_skipped"] == partial, (done, partial)
# A directory and a glob are walked where the files are (each file once);
# the directory's values go to every file below it.
walked = client.ingest(
    "walked",
    data={"path": [f"{data}/texts", f"{data}/texts/t00*.txt", f"{data}/nomatch/*.mp4"], "origin": ["dir", "glob", "none"]},
    schema={"path": "FILE"},
)
assert walked["files_ingested"] == len(texts), walked
assert all(f["path"].endswith("nomatch/*.mp4") for f in walked["failed"]), walked["failed"]
assert client.query("SELECT count(*) AS n FROM walked WHERE origin = $1", ["dir"]) == [{"n": len(texts)}]
print(f"ok: {result['row_count']} rows, {len(seen)} progress calls, {partial} text files before Ctrl-C")
