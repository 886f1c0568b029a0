# The Python code of the massive-ingestion guide our users come from, as
# they wrote it: only the import line and the file list differ (the test
# points it at generated videos and PDFs under ./data), and the knobs the
# guide leaves commented out are on. The checks after it are the test's.
from sluice import Client
# 1. Setup
client = Client()
# 2. Performance-Tuned Ingestion
# We can tune normalization and buffering to release CPU/Network bottlenecks.
# Generate a list of paths (e.g., from a cloud bucket or local RAID)
file_list = [f"data/video_{i}.mp4" for i in range(4)] + [f"data/doc_{i}.pdf" for i in range(4)]
print(f"Starting massive ingestion of {len(file_list)} files...")
result = client.ingest(
table_name="massive_video_lake",
data={"path": file_list},
schema={"path": "FILE"},
# Performance Overrides:
# normalization_workers: parallel threads for ffmpeg/PDF rendering (default 4)
# flush_every: rows buffered in memory before disk write (default 200)
# commit_every: rows between ds.commit() checkpoints (default 2000)
normalization_workers=8,
flush_every=1000,
commit_every=10000
)
print(f"Ingested {result['row_count']} segments into the lake.")

# --- checks ---
import json

import lance

table = lance.dataset(result["dataset_path"])
assert result["row_count"] > 0 and table.count_rows() == result["row_count"], (table.count_rows(), result)
kinds = table.to_table(columns=["kind"]).column("kind").to_pylist()
assert {k: kinds.count(k) for k in set(kinds)}["pdf"] == 4 + 3 + 2 + 1, kinds  # doc_i has 4 - i pages
assert set(kinds) == {"video", "pdf"}, kinds
assert result["files_ingested"] == 8 and result["files_failed"] == 0 and result["failed"] == [], result
print(json.dumps(result))
