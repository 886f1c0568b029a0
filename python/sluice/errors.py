"""Exceptions sluice raises.

Every error is a :class:`SluiceError`. Bad files never raise: an ingest
lists them in ``result["failed"]`` with the reason. The names Deeplake's
client uses (``ManagedServiceError``, ``IngestError``, ``TableError``,
``AuthError``) are here too, so ``except`` clauses keep working.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class SluiceError(Exception):
    """Base class of every sluice error.

    ``status`` is the HTTP status the failure maps to (400 a bad request,
    404 a missing table, ...), when there is one.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


#: Deeplake's name for the base class.
ManagedServiceError = SluiceError


class AuthError(SluiceError):
    """No token, or a token the coordinator does not accept (HTTP 401)."""


class IngestError(SluiceError):
    """The ingest could not run, or stopped (bad settings, missing inputs,
    more failed files than ``max_errors``, a failed job).

    ``result`` holds what was done before it stopped (committed rows stay
    in the table; running the same ingest again resumes).
    """

    def __init__(self, message: str, status: Optional[int] = None, result: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message, status)
        self.result = result


class QueryError(SluiceError):
    """A SQL statement failed: bad SQL, an unknown column, a value of the
    wrong type (HTTP 400), or a timeout (408)."""


class TableError(SluiceError):
    """A table-level problem: absent (404) or already there (409)."""


class TableNotFoundError(TableError, QueryError):
    """The table does not exist (HTTP 404)."""


class TableExistsError(TableError, QueryError):
    """``CREATE TABLE`` of a table that exists (HTTP 409)."""


class BusyError(SluiceError):
    """Every query slot of the coordinator is busy (HTTP 429); retry later."""


class ServiceError(SluiceError):
    """The coordinator or the sluice binary failed, or cannot be reached."""


def for_status(status: Optional[int], message: str) -> SluiceError:
    """The exception for a statement that failed with an HTTP ``status``."""
    if status == 401:
        return AuthError(message, status)
    if status == 404:
        return TableNotFoundError(message, status)
    if status == 409:
        return TableExistsError(message, status)
    if status == 429:
        return BusyError(message, status)
    if status is not None and 400 <= status < 500:
        return QueryError(message, status)
    return ServiceError(message, status)
