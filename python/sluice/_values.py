"""Python values as sluice column types and JSON values."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import PurePath
from typing import Any, Dict, Iterable, List, Mapping, Optional

#: Schema type names (Deeplake's and SQL spellings) -> sluice column types.
SCHEMA_TYPES: Dict[str, str] = {
    "TEXT": "string",
    "STRING": "string",
    "STR": "string",
    "VARCHAR": "string",
    "JSON": "json",
    "JSONB": "json",
    "INT": "int64",
    "INT64": "int64",
    "BIGINT": "int64",
    "INT32": "int32",
    "INTEGER": "int32",
    "INT16": "int16",
    "SMALLINT": "int16",
    "FLOAT": "float64",
    "FLOAT64": "float64",
    "DOUBLE": "float64",
    "DOUBLE PRECISION": "float64",
    "FLOAT32": "float32",
    "REAL": "float32",
    "BOOL": "bool",
    "BOOLEAN": "bool",
    "BINARY": "binary",
    "BYTEA": "binary",
    "BYTES": "binary",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamp",
    "DATE": "date",
}

#: Schema types that mark a column of file paths to ingest.
FILE_TYPES = {"FILE", "VIDEO", "IMAGE", "AUDIO", "PDF", "DOCUMENT"}

#: sluice column types -> the SQL spelling used in CREATE TABLE.
SQL_TYPES: Dict[str, str] = {
    "string": "TEXT",
    "json": "JSONB",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int16": "SMALLINT",
    "float64": "DOUBLE PRECISION",
    "float32": "REAL",
    "bool": "BOOLEAN",
    "binary": "BYTEA",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}


def schema_type(name: str, column: str) -> str:
    """The sluice type a schema entry names, or ``ValueError``."""
    key = " ".join(str(name).strip().upper().split())
    if key in SCHEMA_TYPES:
        return SCHEMA_TYPES[key]
    raise ValueError(
        f"schema type {name!r} of column {column!r} is not supported here "
        f"(use FILE for paths to ingest, or one of {', '.join(sorted(SCHEMA_TYPES))})"
    )


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and hasattr(value, "shape"):
        return tolist()
    return value


def kind_of(value: Any) -> Optional[str]:
    """The column type a value suggests; ``None`` for null."""
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, (str, PurePath)):
        return "string"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, _dt.datetime):
        return "timestamp"
    if isinstance(value, _dt.date):
        return "date"
    if isinstance(value, (dict, list, tuple)):
        return "json"
    raise TypeError(f"values of type {type(value).__name__} cannot be stored")


def infer_type(values: Iterable[Any], column: str) -> str:
    """One column type for all of ``values``: integers and floats make
    float64, other mixes make json, all-null makes text."""
    seen: Optional[str] = None
    for v in values:
        try:
            kind = kind_of(v)
        except TypeError as e:
            raise ValueError(f"column {column!r}: {e}") from None
        if kind is None or kind == seen:
            continue
        if seen is None:
            seen = kind
        elif {seen, kind} == {"int64", "float64"}:
            seen = "float64"
        else:
            seen = "json"
    return seen or "string"


def to_json(value: Any, as_type: Optional[str] = None) -> Any:
    """A value as JSON for a column of ``as_type``: bytes as hex (Postgres'
    ``\\x`` form when ``as_type`` is None), dates and times in ISO 8601
    (naive times are UTC), numpy values as Python ones."""
    value = _plain(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        hexed = bytes(value).hex()
        return hexed if as_type == "binary" else "\\x" + hexed
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_json(v, "json") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, "json") for v in value]
    raise TypeError(f"values of type {type(value).__name__} cannot be stored")


def columns_of(rows: List[Mapping[str, Any]]) -> List[str]:
    """Column names of ``rows`` in first-seen order."""
    names: Dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(str(key), None)
    return list(names)


def quote_ident(name: str) -> str:
    """A SQL identifier, quoted (so its case and characters are kept)."""
    return '"' + name.replace('"', '""') + '"'
