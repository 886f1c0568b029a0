"""sluice: ingest files of every kind (video, PDF, images, audio, text,
anything) into one versioned, queryable Lance table, exactly once.

    >>> from sluice import Client
    >>> client = Client()                       # this machine
    >>> client = Client(url="http://coordinator:8080")   # a sluice cluster
    >>> result = client.ingest("videos", {"path": files}, schema={"path": "FILE"})
    >>> client.query("SELECT count(*) AS n FROM videos")

The package carries the ``sluice`` binary; :func:`find_sluice_bin` says
where it is.
"""

from importlib.metadata import PackageNotFoundError, version

from ._binary import find_sluice_bin
from .client import Client, ProgressCallback
from .errors import (
    AuthError,
    BusyError,
    IngestError,
    ManagedServiceError,
    QueryError,
    ServiceError,
    SluiceError,
    TableError,
    TableExistsError,
    TableNotFoundError,
)

try:
    __version__ = version("sluice")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AuthError",
    "BusyError",
    "Client",
    "IngestError",
    "ManagedServiceError",
    "ProgressCallback",
    "QueryError",
    "ServiceError",
    "SluiceError",
    "TableError",
    "TableExistsError",
    "TableNotFoundError",
    "__version__",
    "find_sluice_bin",
]
