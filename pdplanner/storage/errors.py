"""Exceptions raised by the storage layer.

    StorageError                  base of everything the store raises; nothing from SQLAlchemy leaks
    ├── NotFoundError             no plan, sweep or catalog entry with that id or name
    ├── AlreadyExistsError        a catalog name or sweep scenario index is already taken
    ├── InvalidPageTokenError     a page token that this store did not issue for this query
    ├── InvalidValueError         a value that cannot be stored (NaN, a non-JSON object)
    └── UnavailableError          the database cannot be reached or is busy; retrying may succeed

A repeated ``request_id`` is not an error: it returns what the first call stored.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of the storage layer's errors."""


class NotFoundError(StorageError, LookupError):
    """The record asked for does not exist; ``kind`` and ``key`` say which one."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class AlreadyExistsError(StorageError):
    """A record with this unique key already exists; ``kind`` and ``key`` say which one."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key


class InvalidPageTokenError(StorageError, ValueError):
    """A page token is malformed, or was issued for a listing with different filters."""


class InvalidValueError(StorageError, ValueError):
    """A value cannot be stored, e.g. a dict that is not JSON-serialisable or holds NaN."""


class UnavailableError(StorageError):
    """The database could not be reached or stayed locked; the write did not happen."""
