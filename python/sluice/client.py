"""The sluice client: ingest files, run SQL, open tables.

``Client()`` works on this machine: it drives the ``sluice`` binary the
package installed, with tables under ``storage_uri``. ``Client(url=...)``
sends the same calls to a sluice coordinator's HTTP API (its
``--http-listen`` address), which runs them on the cluster's workers.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _values
from ._binary import find_sluice_bin
from .errors import IngestError, QueryError, ServiceError, SluiceError, TableError, for_status

#: ``on_progress(done, total)``: files finished (ingested, failed or
#: skipped as already in the table) and files in the job.
ProgressCallback = Callable[[int, int], None]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

#: Rows sent in one INSERT request by :meth:`Client.insert`.
INSERT_BATCH_ROWS = 5000

#: Knobs of ``ingest`` and the binary's flags for them.
_KNOBS = {
    "normalization_workers": "--normalization-workers",
    "media_processes": "--media-processes",
    "flush_every": "--flush-every",
    "flush_bytes": "--flush-bytes",
    "flush_interval": "--flush-interval",
    "memory_budget": "--memory-budget",
    "commit_every": "--commit-every",
    "storage_concurrency": "--storage-concurrency",
    "chunk_size": "--chunk-size",
    "chunk_overlap": "--chunk-overlap",
    "pdf_dpi": "--pdf-dpi",
    "segment_seconds": "--segment-seconds",
    "file_timeout": "--file-timeout",
    "max_file_size": "--max-file-size",
    "max_image_pixels": "--max-image-pixels",
    "max_pdf_pages": "--max-pdf-pages",
    "ocr": "--ocr",
    "ocr_languages": "--ocr-languages",
}

#: The same knobs as the coordinator's JSON API names them.
_SETTINGS = {
    "normalization_workers": "normalization_workers",
    "media_processes": "media_processes",
    "flush_every": "flush_every",
    "flush_bytes": "flush_bytes",
    "flush_interval": "flush_interval_secs",
    "memory_budget": "memory_budget_bytes",
    "commit_every": "commit_every",
    "storage_concurrency": "storage_concurrency",
    "chunk_size": "chunk_size",
    "chunk_overlap": "chunk_overlap",
    "pdf_dpi": "pdf_dpi",
    "segment_seconds": "segment_seconds",
    "file_timeout": "file_timeout_secs",
    "max_file_size": "max_file_bytes",
    "max_image_pixels": "max_image_pixels",
    "max_pdf_pages": "max_pdf_pages",
    "ocr": "ocr",
    "ocr_languages": "ocr_languages",
}


class Client:
    """Ingest files into tables, query them with SQL, open them for training.

    Args:
        url: A sluice coordinator's HTTP address (``http://host:8080``).
            Without it everything runs on this machine.
        token: Bearer token for the coordinator (default ``$SLUICE_TOKEN``).
        storage_uri: Where tables live on this machine's runs: a directory
            or ``s3://bucket/prefix`` (default ``$SLUICE_STORAGE_URI``, else
            ``./sluice-lake``). With ``url`` the coordinator's own
            ``--storage-uri`` is used.
        storage_options: Object-store options (``aws_endpoint``,
            ``aws_access_key_id``, ...) for tables and for
            :meth:`open_table`. Passed to the binary through its
            environment, never on its command line.
        workspace: A namespace for table names: table ``t`` is then
            ``<storage_uri>/<workspace>/t``, as in SQL over HTTP
            (``"workspace"."t"``). Default ``$SLUICE_WORKSPACE``, else none.
        timeout: Seconds an HTTP request to the coordinator may take.

    Example:
        >>> client = Client()
        >>> result = client.ingest("videos", {"path": ["a.mp4"]}, schema={"path": "FILE"})
        >>> client.query("SELECT count(*) AS n FROM videos")
        [{'n': 3}]
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        storage_uri: Optional[str] = None,
        storage_options: Optional[Mapping[str, str]] = None,
        *,
        workspace: Optional[str] = None,
        timeout: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token or os.environ.get("SLUICE_TOKEN") or None
        self.workspace = workspace or os.environ.get("SLUICE_WORKSPACE") or None
        if self.workspace is not None and not _NAME.match(self.workspace):
            raise ValueError(f"workspace {self.workspace!r}: letters, digits, '-', '_' and '.' only")
        root = storage_uri or os.environ.get("SLUICE_STORAGE_URI") or ("./sluice-lake" if url is None else None)
        if root is not None and "://" not in root:
            root = os.path.abspath(os.path.expanduser(root))
        self.storage_uri = root.rstrip("/") if root else None
        self.storage_options = {str(k): str(v) for k, v in (storage_options or {}).items()}
        self.timeout = timeout

    def __repr__(self) -> str:
        where = self.url or self.storage_uri
        return f"Client({where!r}, workspace={self.workspace!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release; kept for Deeplake's client interface."""

    # ------------------------------------------------------------------
    # Ingest
    # ------------------------------------------------------------------

    def ingest(
        self,
        table_name: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        format: Optional[Any] = None,
        schema: Optional[Mapping[str, str]] = None,
        index: Optional[Union[Sequence[str], Mapping[str, Any]]] = None,
        on_progress: Optional[ProgressCallback] = None,
        chunk_size: int = 1000,
        chunk_overlap: int = 200,
        pdf_dpi: int = 150,
        normalization_workers: int = 4,
        flush_every: int = 200,
        commit_every: int = 2000,
        storage_concurrency: int = 32,
        max_errors: Optional[int] = None,
        media_processes: Optional[int] = None,
        flush_bytes: Optional[int] = None,
        flush_interval: Optional[int] = None,
        memory_budget: Optional[int] = None,
        segment_seconds: Optional[float] = None,
        file_timeout: Optional[int] = None,
        max_file_size: Optional[int] = None,
        max_image_pixels: Optional[int] = None,
        max_pdf_pages: Optional[int] = None,
        ocr: Optional[str] = None,
        ocr_languages: Optional[str] = None,
        job_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Ingest files (or plain values) into ``table_name``, creating it if needed.

        With ``schema={"path": "FILE"}``, ``data["path"]`` lists files,
        directories, globs or object-store URIs; every file is normalized
        by kind (video segments, PDF pages, images, text chunks, other
        bytes) into rows. The other keys of ``data`` are per-file values,
        one per path, stored in columns of their own on every row of that
        file (``{"path": files, "label": labels}``); their types come from
        ``schema`` (``"TEXT"``, ``"INT"``, ``"FLOAT"``, ``"BOOL"``,
        ``"JSON"``, ...) or from the values.

        Without a FILE column, ``data`` is a table of values
        (``{"text": [...], "score": [...]}``) appended as rows; a
        ``format`` object's ``normalize()`` batches are appended the same way.

        Exactly once: a file already in the table (same size and
        modification time) is skipped, so running the same call again after
        a crash or Ctrl-C finishes the job without duplicating anything.
        Bad files do not raise: they are in ``result["failed"]``.

        Args:
            table_name: The table (letters, digits, ``_ . -``).
            data: Columns of values; see above.
            format: An object with ``normalize()`` yielding ``{column: [values]}``
                batches (and optionally ``schema()``).
            schema: Column types; ``"FILE"`` marks the columns of paths.
            index: Columns to index after the ingest (a list, or
                ``{column: type}`` with ``"bm25"``/``"inverted"`` for full-text
                search, ``"btree"``/``"bitmap"`` for scalar lookups).
                Failures are warnings: the rows are already committed.
            on_progress: ``on_progress(done, total)`` in files, called as
                work advances; the last call has ``done == total``.
            chunk_size, chunk_overlap: Text chunking, in characters.
            pdf_dpi: PDF page render resolution.
            normalization_workers: Files normalized in parallel.
            media_processes: Most video/audio normalizer processes (with
                FFmpeg) at once (default: one per two cores, at least one,
                at most ``normalization_workers``).
            flush_every: Rows buffered before a fragment is written.
            commit_every: Rows between table commits (versions).
            storage_concurrency: Object-store requests in flight.
            max_errors: Stop (raising :class:`IngestError`) once more files
                than this have failed. Default: never.
            flush_bytes, flush_interval, memory_budget, segment_seconds, file_timeout, max_file_size,
            max_image_pixels, max_pdf_pages: Further knobs (see ``sluice ingest --help``).
            ocr: ``"auto"`` (default: OCR PDF pages without a text layer),
                ``"off"``, or ``"always"`` (every PDF page and every image).
            ocr_languages: Tesseract languages joined by ``+`` (default ``"eng"``).
            job_id: The job's id (default: a new one).

        Returns:
            ``table_name``, ``row_count`` (rows this call wrote),
            ``dataset_path`` (the table's URI), ``version``, ``job_id``,
            ``files_ingested``, ``files_failed``, ``files_skipped``,
            ``failed`` (``[{"path", "reason"}]``), ``seconds``.

        Raises:
            ValueError: ``data`` is malformed (lengths differ, no paths).
            IngestError: The ingest could not run or was aborted.
        """
        self._check_name(table_name)
        if format is not None:
            if not hasattr(format, "normalize"):
                raise IngestError("format must have a normalize() method")
            schema = {**(format.schema() if callable(getattr(format, "schema", None)) else {}), **(schema or {})}
            result = self._ingest_values(table_name, format.normalize(), schema, on_progress)
            if index:
                self._create_indexes(table_name, index)
            return result
        if data is None:
            raise IngestError("Either data or format must be provided.")
        if not isinstance(data, Mapping):
            raise IngestError(f"data must be a dict, got {type(data).__name__}.")
        if not data:
            raise IngestError("data must not be empty.")
        if "_huggingface" in data:
            raise IngestError(
                "loading from the Hugging Face hub is not supported: download the dataset's files "
                "and ingest their paths (or their values as a dict)"
            )
        schema = dict(schema or {})
        file_columns = [c for c, t in schema.items() if str(t).strip().upper() in _values.FILE_TYPES]
        if not file_columns:
            result = self._ingest_values(table_name, [dict(data)], schema, on_progress)
            if index:
                self._create_indexes(table_name, index)
            return result

        files, attributes, columns = self._plan_files(data, schema, file_columns)
        knobs = {
            "normalization_workers": normalization_workers,
            "media_processes": media_processes,
            "flush_every": flush_every,
            "commit_every": commit_every,
            "storage_concurrency": storage_concurrency,
            "chunk_size": chunk_size,
            "chunk_overlap": chunk_overlap,
            "pdf_dpi": pdf_dpi,
            "flush_bytes": flush_bytes,
            "flush_interval": flush_interval,
            "memory_budget": memory_budget,
            "segment_seconds": segment_seconds,
            "file_timeout": file_timeout,
            "max_file_size": max_file_size,
            "max_image_pixels": max_image_pixels,
            "max_pdf_pages": max_pdf_pages,
            "ocr": ocr,
            "ocr_languages": ocr_languages,
        }
        knobs = {k: v for k, v in knobs.items() if v is not None}
        progress = _Progress(on_progress, len(files))
        plan = _IngestPlan(table_name, files, attributes, columns, knobs, max_errors, job_id)
        result = self._ingest_remote(plan, progress) if self.url else self._ingest_local(plan, progress)
        if index:
            self._create_indexes(table_name, index)
        return result

    @staticmethod
    def _plan_files(
        data: Mapping[str, Any], schema: Mapping[str, str], file_columns: List[str]
    ) -> Tuple[List[str], List[Dict[str, Any]], List[Dict[str, str]]]:
        """Paths, each path's values, and the value columns; ``ValueError``
        on anything malformed, before any work."""
        lists: Dict[str, List[Any]] = {}
        for column, values in data.items():
            if isinstance(values, (str, bytes, os.PathLike)) or not isinstance(values, Iterable):
                values = [values]
            lists[str(column)] = list(values)
        missing = [c for c in file_columns if c not in lists]
        if missing:
            raise ValueError(f"schema declares {missing[0]!r} as FILE but data has no such column")
        lengths = {len(lists[c]) for c in file_columns}
        value_columns = [c for c in lists if c not in file_columns]
        for c in value_columns:
            if len(lengths) > 1 or len(lists[c]) != len(lists[file_columns[0]]):
                raise ValueError(
                    f"data[{c!r}] has {len(lists[c])} values for {len(lists[file_columns[0]])} paths: "
                    "per-file values need one value per path"
                )
        files: List[str] = []
        attributes: List[Dict[str, Any]] = []
        declared = {c: _values.schema_type(schema[c], c) for c in value_columns if c in schema}
        column_types = {c: declared.get(c) or _values.infer_type(lists[c], c) for c in value_columns}
        for c in file_columns:
            for i, path in enumerate(lists[c]):
                if path is None or str(path).strip() == "":
                    raise ValueError(f"data[{c!r}][{i}] is empty: every entry must be a path")
                text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
                if "://" not in text:
                    text = os.path.abspath(os.path.expanduser(text))
                files.append(text)
                values = {}
                for v in value_columns:
                    value = lists[v][i]
                    try:
                        value = _values.to_json(value, column_types[v])
                    except TypeError as e:
                        raise ValueError(f"data[{v!r}][{i}]: {e}") from None
                    if value is not None:
                        values[v] = value
                attributes.append(values)
        if not files:
            raise ValueError("the FILE columns hold no paths")
        columns = [{"name": c, "type": column_types[c]} for c in value_columns]
        return files, attributes, columns

    def _ingest_local(self, plan: "_IngestPlan", progress: "_Progress") -> Dict[str, Any]:
        table, files, attributes, columns = plan.table, plan.files, plan.attributes, plan.columns
        knobs, max_errors, job_id = plan.knobs, plan.max_errors, plan.job_id
        uri = self._table_uri(table)
        with tempfile.TemporaryDirectory(prefix="sluice-") as tmp:
            manifest = os.path.join(tmp, "files.jsonl")
            exclude = None if "://" in uri else os.path.abspath(uri)
            listed = 0
            with open(manifest, "w", encoding="utf-8") as out:
                for path, values in _local_files(files, attributes, exclude):
                    out.write(json.dumps({"path": path, **values}) + "\n")
                    listed += 1
            progress.listed = listed
            cmd = [find_sluice_bin(), "ingest", "--table", uri, "--manifest", manifest, "--events"]
            for knob, value in knobs.items():
                cmd += [_KNOBS[knob], str(value)]
            if columns:
                cmd += ["--columns", ", ".join(f"{c['name']} {c['type']}" for c in columns)]
            if max_errors is not None:
                cmd += ["--max-errors", str(max_errors)]
            if job_id:
                cmd += ["--job-id", job_id]
            code, events, stderr = _run_events(cmd, self._env(), progress)
        summary = events.get("summary")
        if summary is None:
            error = events.get("error") or {}
            message = error.get("error") or (stderr.strip().splitlines() or ["the sluice binary failed"])[-1]
            raise IngestError(message.removeprefix("error: "), error.get("status"))
        progress.finish(int((events.get("progress") or {}).get("files_total", 0)))
        result = _result(
            table,
            summary["table"],
            summary["job_id"],
            {**summary, "files_done": summary["files_ingested"]},
            summary.get("errors", []),
            summary["seconds"],
        )
        if summary.get("status") == "aborted":
            raise IngestError(f"the ingest stopped: {summary.get('abort_reason')}", result=result)
        return result

    def _ingest_remote(self, plan: "_IngestPlan", progress: "_Progress") -> Dict[str, Any]:
        table, files, attributes, columns = plan.table, plan.files, plan.attributes, plan.columns
        knobs, max_errors, job_id = plan.knobs, plan.max_errors, plan.job_id
        body: Dict[str, Any] = {
            "table": f"{self.workspace}/{table}" if self.workspace else table,
            "files": [{"path": p, "attributes": a} if a else p for p, a in zip(files, attributes)],
            "settings": {_SETTINGS[k]: v for k, v in knobs.items()},
        }
        if columns:
            body["columns"] = columns
        if max_errors is not None:
            body["max_errors"] = max_errors
        if job_id:
            body["job_id"] = job_id
        try:
            job = self._http("POST", "/v1/jobs", body)["job_id"]
        except SluiceError as e:
            raise IngestError(e.message, e.status) from None
        try:
            status = self._watch(job, progress)
        except KeyboardInterrupt:
            # Stop the job: files in flight finish and are committed.
            self._http("POST", f"/v1/jobs/{job}/cancel", None)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and self._http("GET", f"/v1/jobs/{job}", None)["state"] in ("planning", "running"):
                time.sleep(0.25)
            raise
        state = status["state"]
        p = status["progress"]
        errors = self._http("GET", f"/v1/jobs/{job}/errors?limit=100000", None)["errors"]
        result = _result(table, status["table_uri"], job, p, errors, status["seconds"])
        if state in ("succeeded", "completed_with_errors"):
            progress.finish(int(p.get("files_total", 0)))
            return result
        raise IngestError(f"job {job} {state}: {status['message']}", result=result)

    def _watch(self, job: str, progress: "_Progress") -> Dict[str, Any]:
        while True:
            status = self._http("GET", f"/v1/jobs/{job}", None)
            p = status["progress"]
            finished = int(p.get("files_done", 0)) + int(p.get("files_failed", 0)) + int(p.get("files_skipped", 0))
            progress.update(finished, int(p.get("files_total", 0)), bool(p.get("planning_done")))
            if status["state"] not in ("planning", "running"):
                return status
            time.sleep(0.25)

    def _ingest_values(
        self, table: str, batches: Iterable[Mapping[str, Any]], schema: Mapping[str, str], on_progress: Optional[ProgressCallback]
    ) -> Dict[str, Any]:
        """Columns of values appended as rows (no files to normalize)."""
        started = time.monotonic()
        written, version = 0, 0
        for batch in batches:
            lists = {str(k): (list(v) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else [v]) for k, v in batch.items()}
            lengths = {len(v) for v in lists.values()}
            if len(lengths) > 1:
                raise ValueError(f"data columns have different lengths: {sorted(lengths)}")
            n = lengths.pop() if lengths else 0
            rows = [{c: _values._plain(lists[c][i]) for c in lists} for i in range(n)]
            if not rows:
                continue
            done = self.insert(table, rows, schema=schema)
            written += done["row_count"]
            version = done["version"]
            if on_progress:
                on_progress(written, written)
        return {
            "table_name": table,
            "row_count": written,
            "dataset_path": self._table_uri(table) if not self.url else self._describe(table)["table_uri"],
            "version": version,
            "job_id": None,
            "files_ingested": 0,
            "files_failed": 0,
            "files_skipped": 0,
            "failed": [],
            "seconds": time.monotonic() - started,
        }

    def _create_indexes(self, table: str, index: Union[Sequence[str], Mapping[str, Any]]) -> None:
        spec: Dict[str, Any] = {c: None for c in index} if not isinstance(index, Mapping) else dict(index)
        try:
            ds = self.open_table(table)
        except Exception as e:  # noqa: BLE001 - the rows are committed; an index is extra
            warnings.warn(f"cannot open {table} to index it: {e}", stacklevel=3)
            return
        for column, kind in spec.items():
            if isinstance(kind, Mapping):
                kind = kind.get("index_type")
            kind = (kind or ("inverted" if column == "text" else "btree")).lower()
            lance_kind = {"bm25": "INVERTED", "inverted": "INVERTED", "inverted_index": "INVERTED", "btree": "BTREE",
                          "exact_text": "BTREE", "unique": "BTREE", "bitmap": "BITMAP"}.get(kind)
            try:
                if lance_kind is None:
                    raise ValueError(f"index type {kind!r} is not supported (bm25, inverted, btree, bitmap)")
                ds.create_scalar_index(column, lance_kind, replace=True)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"cannot index {table}.{column}: {e}", stacklevel=3)

    # ------------------------------------------------------------------
    # SQL
    # ------------------------------------------------------------------

    def execute(
        self,
        sql: str,
        params: Optional[Sequence[Any]] = None,
        *,
        params_batch: Optional[Sequence[Sequence[Any]]] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        max_rows: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Run one SQL statement and return the whole answer:
        ``command``, ``columns``, ``rows`` (lists), ``row_count`` and, for
        writes, ``version``. Statements and parameters as over HTTP:
        ``CREATE TABLE``, ``INSERT ... VALUES ($1, $2::jsonb)`` (with
        ``params_batch``: once per set, in one commit), ``SELECT``,
        ``DELETE``, ``DROP TABLE``. Parameters are values, never SQL text.

        Raises:
            QueryError: Bad SQL, an unknown column, a wrong type, a timeout.
            TableNotFoundError / TableExistsError: As the statement found the table.
        """
        body: Dict[str, Any] = {"query": sql}
        if params is not None and params_batch is not None:
            raise ValueError("give params or params_batch, not both")
        if params is not None:
            body["params"] = [_values.to_json(v) for v in params]
        if params_batch is not None:
            body["params_batch"] = [[_values.to_json(v) for v in row] for row in params_batch]
        if timeout is not None:
            body["timeout_ms"] = int(timeout * 1000)
        if max_rows is not None:
            body["max_rows"] = int(max_rows)
        if self.url:
            path = f"/workspaces/{urllib.parse.quote(self.workspace)}/tables/query" if self.workspace else "/tables/query"
            answer = self._http("POST", path, body, idempotency_key=idempotency_key, as_query=True)
        else:
            answer = self._sql_local(body, idempotency_key)
        if answer.get("truncated"):
            warnings.warn(
                f"the result was cut at {answer.get('row_count')} rows; add LIMIT or max_rows",
                stacklevel=3,
            )
        return answer

    def query(self, sql: str, params: Optional[Sequence[Any]] = None, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """Run a statement and return its rows as dicts (column -> value).

        Example:
            >>> client.query("SELECT source_uri FROM videos WHERE label = $1", ["cat"])
        """
        answer = self.execute(sql, params, timeout=timeout)
        columns = answer.get("columns", [])
        return [dict(zip(columns, row)) for row in answer.get("rows", [])]

    def insert(
        self,
        table_name: str,
        rows: Sequence[Mapping[str, Any]],
        idempotency_key: Optional[str] = None,
        *,
        schema: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        """Append ``rows`` (dicts, columns by name) to a table, creating it
        with columns typed from ``schema`` or the values if it does not exist.

        Rows go in batches of 5,000, each one commit. With an
        ``idempotency_key``, batch *n* is sent as ``key#n``: calling again
        with the same key and rows after a failure inserts only what did
        not land.

        Returns:
            ``table_name``, ``row_count`` (rows inserted now), ``version``,
            ``replayed`` (some batches had landed before).
        """
        self._check_name(table_name)
        rows = list(rows)
        if not rows:
            return {"table_name": table_name, "row_count": 0, "version": None, "replayed": False}
        columns = _values.columns_of(rows)
        types = {}
        for c in columns:
            types[c] = (
                _values.schema_type(schema[c], c)
                if schema and c in schema
                else _values.infer_type((r.get(c) for r in rows), c)
            )
        name = self._sql_name(table_name)
        create = ", ".join(f"{_values.quote_ident(c)} {_values.SQL_TYPES[types[c]]}" for c in columns)
        self.execute(f"CREATE TABLE IF NOT EXISTS {name} ({create})")
        placeholders = ", ".join(f"${i + 1}" + ("::bytea" if types[c] == "binary" else "") for i, c in enumerate(columns))
        statement = f"INSERT INTO {name} ({', '.join(_values.quote_ident(c) for c in columns)}) VALUES ({placeholders})"
        inserted, version, replayed = 0, None, False
        for n, start in enumerate(range(0, len(rows), INSERT_BATCH_ROWS)):
            chunk = rows[start : start + INSERT_BATCH_ROWS]
            batch = [[_values.to_json(r.get(c)) for c in columns] for r in chunk]
            key = f"{idempotency_key}#{n}" if idempotency_key else None
            answer = self.execute(statement, params_batch=batch, idempotency_key=key)
            inserted += int(answer.get("row_count", 0))
            version = answer.get("version", version)
            replayed |= bool(answer.get("replayed"))
        return {"table_name": table_name, "row_count": inserted, "version": version, "replayed": replayed}

    # ------------------------------------------------------------------
    # Tables
    # ------------------------------------------------------------------

    def open_table(self, table_name: str, version: Optional[int] = None) -> Any:
        """The table as a ``lance.LanceDataset`` (pylance), for training
        loops and DataFrame work: ``ds.to_table()``, ``ds.scanner(...)``,
        ``ds.take(...)``, ``lance.torch`` loaders."""
        import lance

        self._check_name(table_name)
        uri = self._describe(table_name)["table_uri"] if self.url else self._table_uri(table_name)
        options = self.storage_options or None
        try:
            return lance.dataset(uri, version=version, storage_options=options)
        except (ValueError, OSError) as e:
            raise TableError(f"cannot open table {table_name} at {uri}: {e}", 404) from None

    def list_tables(self) -> List[str]:
        """Names of the tables (in the client's workspace)."""
        if self.url:
            path = f"/workspaces/{urllib.parse.quote(self.workspace)}/tables" if self.workspace else "/tables"
            return [t["table_name"] for t in self._http("GET", path, None)["tables"]]
        root = self._table_uri("x").rsplit("/", 1)[0]
        out = subprocess.run(
            [find_sluice_bin(), "tables", root, "--json"], capture_output=True, text=True, env=self._env(), check=False
        )
        if out.returncode != 0:
            raise ServiceError(out.stderr.strip() or "sluice tables failed")
        return [t["name"] for t in json.loads(out.stdout)]

    def drop_table(self, table_name: str, if_exists: bool = True) -> None:
        """Delete a table and all its versions."""
        self._check_name(table_name)
        exists = "IF EXISTS " if if_exists else ""
        self.execute(f"DROP TABLE {exists}{self._sql_name(table_name)}")

    # ------------------------------------------------------------------
    # Plumbing
    # ------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"table name {name!r}: letters, digits, '_', '.' and '-' only (128 at most)")

    def _sql_name(self, table: str) -> str:
        return _values.quote_ident(table)

    def _table_uri(self, table: str) -> str:
        assert self.storage_uri is not None
        parts = [self.storage_uri] + ([self.workspace] if self.workspace else []) + [table]
        return "/".join(parts)

    def _describe(self, table: str) -> Dict[str, Any]:
        path = f"/workspaces/{urllib.parse.quote(self.workspace)}/tables/{table}" if self.workspace else f"/tables/{table}"
        return self._http("GET", path, None, as_query=True)

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        if self.storage_options:
            env["SLUICE_STORAGE_OPTIONS"] = json.dumps(self.storage_options)
        if "SLUICE_PDFIUM_PATH" not in env:
            try:
                import pypdfium2_raw

                lib = os.path.join(os.path.dirname(pypdfium2_raw.__file__), "libpdfium.so")
                if os.path.isfile(lib):
                    env["SLUICE_PDFIUM_PATH"] = lib
            except ImportError:
                pass
        return env

    def _sql_local(self, body: Dict[str, Any], key: Optional[str]) -> Dict[str, Any]:
        cmd = [find_sluice_bin(), "sql", "-", "--storage-uri", self.storage_uri or "./sluice-lake"]
        if self.workspace:
            cmd += ["--workspace", self.workspace]
        if key:
            cmd += ["--idempotency-key", key]
        out = subprocess.run(cmd, input=json.dumps(body), capture_output=True, text=True, env=self._env(), check=False)
        try:
            answer = json.loads(out.stdout)
        except ValueError:
            raise ServiceError(out.stderr.strip() or f"sluice sql exited with {out.returncode}") from None
        if "error" in answer:
            raise for_status(answer.get("status"), answer["error"])
        return answer

    def _http(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]],
        *,
        idempotency_key: Optional[str] = None,
        as_query: bool = False,
    ) -> Dict[str, Any]:
        assert self.url is not None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                return json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", str(e))
            except ValueError:
                message = str(e)
            if as_query or e.code in (401, 404, 409, 429):
                raise for_status(e.code, message) from None
            raise ServiceError(f"HTTP {e.code}: {message}", e.code) from None
        except urllib.error.URLError as e:
            raise ServiceError(f"cannot reach the coordinator at {self.url}: {e.reason}") from None


def _local_files(
    paths: Sequence[str], attributes: Sequence[Dict[str, Any]], exclude: Optional[str]
) -> Iterable[Tuple[str, Dict[str, Any]]]:
    """The files named by ``paths`` on this machine, each with its path's
    values: directories are walked (hidden entries and the table itself
    skipped, as ``sluice ingest`` does) and globs expanded; a pattern that
    matches nothing is passed on, to be reported as a failed file."""
    for path, values in zip(paths, attributes):
        if "://" in path:
            yield path, values
            continue
        matches = sorted(glob.glob(path, recursive=True)) if any(c in path for c in "*?[") else []
        for match in matches or [path]:
            if not os.path.isdir(match):
                yield match, values
                continue
            for root, dirs, names in os.walk(match):
                dirs[:] = sorted(
                    d for d in dirs if not d.startswith(".") and os.path.abspath(os.path.join(root, d)) != exclude
                )
                for name in sorted(names):
                    if not name.startswith("."):
                        yield os.path.join(root, name), values


@dataclass
class _IngestPlan:
    """What one file ingest runs: the table, the files with their per-file
    values and value columns, and the job's knobs."""

    table: str
    files: List[str]
    attributes: List[Dict[str, Any]]
    columns: List[Dict[str, str]]
    knobs: Dict[str, Any]
    max_errors: Optional[int]
    job_id: Optional[str]


def _result(
    table: str, dataset_path: str, job_id: str, counts: Mapping[str, Any], errors: Iterable[Mapping[str, Any]], seconds: float
) -> Dict[str, Any]:
    """An ingest's answer, from a job's counters (``rows``, ``files_done``,
    ``files_failed``, ``files_skipped``, ``table_version``) and its errors."""
    return {
        "table_name": table,
        "row_count": int(counts.get("rows", 0)),
        "dataset_path": dataset_path,
        "version": int(counts.get("table_version", 0)),
        "job_id": job_id,
        "files_ingested": int(counts.get("files_done", 0)),
        "files_failed": int(counts.get("files_failed", 0)),
        "files_skipped": int(counts.get("files_skipped", 0)),
        "failed": [{"path": _path(e["uri"]), "reason": e["reason"]} for e in errors],
        "seconds": float(seconds),
    }


def _path(uri: str) -> str:
    """A failed file's path as the caller gave it (local files without ``file://``)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


class _Progress:
    """Calls ``on_progress(done, total)`` when either changes, with ``done``
    never going back and ``total`` never below ``done``."""

    def __init__(self, callback: Optional[ProgressCallback], listed: int) -> None:
        self.callback = callback
        self.listed = listed
        self.last: Optional[Tuple[int, int]] = None

    def update(self, done: int, total: int, planning_done: bool) -> None:
        if self.callback is None:
            return
        if not planning_done:
            total = max(total, self.listed)
        if self.last is not None:
            done = max(done, self.last[0])
        total = max(total, done)
        if (done, total) != self.last:
            self.last = (done, total)
            self.callback(done, total)

    def event(self, event: Dict[str, Any]) -> None:
        finished = event["files_done"] + event["files_failed"] + event["files_skipped"]
        self.update(finished, event["files_total"], event["planning_done"])

    def finish(self, total: int) -> None:
        """The job ended with every one of its ``total`` files finished."""
        total = max(total, self.last[0] if self.last else 0)
        self.update(total, total, True)


def _run_events(cmd: List[str], env: Dict[str, str], progress: _Progress) -> Tuple[int, Dict[str, Any], str]:
    """Run ``sluice ingest --events``: progress lines go to ``progress``;
    returns the exit code, the last event of each kind, and stderr's tail.

    The binary runs in its own session so a terminal's Ctrl-C reaches only
    Python, which then asks the binary to stop once (it commits the files
    in flight) and waits; a second Ctrl-C kills it. If Python dies, the
    binary notices that its parent is gone and stops the same way.
    """
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    tail: Deque[str] = deque(maxlen=200)
    reader = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    events: Dict[str, Any] = {}

    def consume() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            events[kind] = event
            if kind == "progress":
                progress.event(event)

    try:
        consume()
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            consume()
            proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
        raise
    reader.join(timeout=5)
    return code, events, "".join(tail)
