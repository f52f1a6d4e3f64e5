"""SQLite plumbing shared by the store's modules: explicit transactions and the one error translation.

Connections run in autocommit mode (``isolation_level=None``) so that every transaction is spelled
out: ``BEGIN IMMEDIATE`` takes the write lock up front, which makes SQLite's busy timeout apply to
the whole unit of work and lets a check-and-take (the lease) be atomic across processes.

Every :class:`sqlite3.Error` or :class:`OSError` that leaves the store passes through
:func:`translate`, which sorts it into the :class:`~orchestrator.store.base.StoreError` tree by the
SQLite primary result code and keeps the original as ``__cause__``::

    StoreError                  anything else (a constraint, a misuse): a bug or a caller error
    ├── StoreUnavailableError   READONLY, FULL, CANTOPEN, IOERR, BUSY, LOCKED, PERM, NOMEM, OSError
    └── StoreCorruptError       NOTADB, CORRUPT, FORMAT
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from orchestrator.store.base import StoreCorruptError, StoreError, StoreUnavailableError

__all__ = ["read_transaction", "translate", "write_transaction"]

_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_AUTH,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_FORMAT})
_PRIMARY_CODE_MASK = 0xFF
"""Extended result codes (``SQLITE_IOERR_WRITE``) carry their primary code in the low byte."""


def translate(error: sqlite3.Error | OSError, path: Path) -> StoreError:
    """The store's error for a driver or file-system error, its message naming the journal's path."""
    if isinstance(error, OSError):
        return StoreUnavailableError(f"journal {path} cannot be opened: {error}")
    code = getattr(error, "sqlite_errorcode", None)
    name = getattr(error, "sqlite_errorname", None)
    detail = f"{error} ({name})" if name else str(error)
    primary = code & _PRIMARY_CODE_MASK if isinstance(code, int) else None
    if primary in _UNAVAILABLE_CODES:
        return StoreUnavailableError(f"journal {path} cannot be used: {detail}")
    if primary in _CORRUPT_CODES:
        return StoreCorruptError(
            f"{path} is not a readable cph-orchestrator journal (not SQLite, or damaged): {detail}"
        )
    return StoreError(f"journal {path} refused the operation: {detail}")


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR); the first error is the one to report.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction: committed if it returns, else rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run several reads on one snapshot (a header and its counts agree even while others write)."""
    conn.execute("BEGIN DEFERRED")
    try:
        yield conn
    finally:
        _rollback_quietly(conn)
