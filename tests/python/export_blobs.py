"""Write every row's `data` blob (and thumbnail) of a table to a directory (one file a row)
and print the rows' positions and metadata as JSON, for checks with other
tools (e.g. the ffmpeg CLI)."""
import json
import os
import sys

import lance

table, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)
ds = lance.dataset(table)
rows = ds.to_table(columns=["source_uri", "kind", "mime_type", "chunk_index", "start_seconds",
                            "end_seconds", "width", "height", "metadata", "thumbnail"]).to_pylist()
ext = {"video/mp4": "mp4", "video/webm": "webm", "video/x-matroska": "mkv", "video/h264": "h264", "video/h265": "hevc",
       "image/jpeg": "jpg", "image/png": "png", "audio/mp4": "m4a", "audio/mpeg": "mp3", "audio/ogg": "ogg",
       "audio/flac": "flac", "audio/ac3": "ac3", "audio/wav": "wav", "audio/x-matroska": "mka"}
report = []
blobs = ds.read_blobs("data", indices=list(range(len(rows))))
for (_, data), r in zip(blobs, rows):
    name = os.path.basename(r["source_uri"])
    path = os.path.join(out_dir, f"{name}.{r['chunk_index']:04d}.{ext.get(r['mime_type'], 'bin')}")
    with open(path, "wb") as f:
        f.write(data or b"")
    thumbnail_path = None
    if r["thumbnail"]:
        thumbnail_path = path + ".thumbnail.jpg"
        with open(thumbnail_path, "wb") as f:
            f.write(r["thumbnail"])
    report.append({k: r[k] for k in ("source_uri", "kind", "mime_type", "chunk_index", "start_seconds",
                                     "end_seconds", "width", "height")}
                  | {"metadata": json.loads(r["metadata"]) if r["metadata"] else None,
                     "path": path, "thumbnail_bytes": len(r["thumbnail"] or b""),
                     "thumbnail_path": thumbnail_path})
print(json.dumps(report))
