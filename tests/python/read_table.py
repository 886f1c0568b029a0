"""Independent reader check: open a table sluice wrote with pylance and report
what it holds, as JSON. Blob bytes of image and binary rows are compared with
the source files on disk."""
import collections
import json
import os
import sys

import lance

path = sys.argv[1]
# Object-store tables: SLUICE_STORAGE_OPTIONS holds the storage options as JSON.
ds = lance.dataset(path, storage_options=json.loads(os.environ.get("SLUICE_STORAGE_OPTIONS") or "{}") or None)
table = ds.to_table(columns=["id", "source_uri", "source_size", "kind", "chunk_index", "text", "width", "height", "metadata"])
rows = table.to_pylist()
kinds = collections.Counter(r["kind"] for r in rows)
per_file = collections.Counter(r["source_uri"] for r in rows)

blob_checks = 0
blob_mismatches = []
indices = [i for i, r in enumerate(rows) if r["kind"] in ("image", "other")][:20]
if indices:
    for i, (_, data) in zip(indices, ds.read_blobs("data", indices=indices)):
        uri = rows[i]["source_uri"]
        with open(uri.removeprefix("file://"), "rb") as f:
            original = f.read()
        blob_checks += 1
        if data != original:
            blob_mismatches.append(uri)

for r in rows:
    if r["metadata"] is not None:
        json.loads(r["metadata"])

print(json.dumps({
    "version": ds.version,
    "rows": ds.count_rows(),
    "distinct_ids": len({r["id"] for r in rows}),
    "kinds": dict(kinds),
    "files": len(per_file),
    "per_file": dict(per_file),
    "blob_checks": blob_checks,
    "blob_mismatches": blob_mismatches,
    "schema": [f.name for f in ds.schema],
}))
