"""The journal's SQLite schema, its version history, and the checks that a file is ours.

The schema version lives in ``PRAGMA user_version`` and the file's identity in ``PRAGMA
application_id``, both in the database header, so they can be read without knowing any table and
they change atomically with the migration that sets them. Every migration step runs in its own
``BEGIN IMMEDIATE`` transaction and re-reads the version under the write lock, so two processes
opening a new journal at once migrate it exactly once.

To change the schema, append a step to :data:`MIGRATIONS`; never edit a released step.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.store.base import StoreCorruptError, StoreUnavailableError
from orchestrator.store.sql import write_transaction

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "Migration",
    "check_identity",
    "migrate",
    "require_current",
    "schema_version",
]

APPLICATION_ID = 0x43504830
"""``"CPH0"`` in ASCII: marks an SQLite file as a cph-orchestrator journal (``PRAGMA application_id``)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema's history: applying step ``n`` (1-based) brings a file to version ``n``."""

    description: str
    apply: Callable[[sqlite3.Connection], None]


_V1_STATEMENTS = (
    """
    CREATE TABLE rollouts (
        rollout_id       TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        status           TEXT NOT NULL,
        reason           TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        options_json     TEXT NOT NULL,
        plan_source      TEXT NOT NULL DEFAULT '',
        api_calls_json   TEXT NOT NULL DEFAULT '{}',
        lease_owner      TEXT,
        lease_expires_at REAL
    )
    """,
    "CREATE INDEX rollouts_by_created ON rollouts (created_at)",
    """
    CREATE TABLE phones (
        rollout_id           TEXT NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
        phone_id             TEXT NOT NULL,
        idx                  INTEGER NOT NULL,
        wave                 INTEGER NOT NULL,
        state                TEXT NOT NULL,
        stage                TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        job_id               TEXT,
        request_id           TEXT,
        batch_id             TEXT,
        error_code           TEXT,
        error_msg            TEXT,
        property             TEXT NOT NULL,
        custom_property_json TEXT,
        PRIMARY KEY (rollout_id, phone_id)
    )
    """,
    # No index on idx: reads in fleet order sort one rollout's rows (milliseconds for 100,000),
    # while an index would cost every insert of a 100,000-phone rollout (0.5 s of its start).
)


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1_STATEMENTS:
        conn.execute(statement)


_PHONES_BY_POSITION = """
    CREATE TABLE phones_by_position (
        rollout_id           TEXT NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
        idx                  INTEGER NOT NULL,
        phone_id             TEXT NOT NULL,
        wave                 INTEGER NOT NULL,
        state                TEXT NOT NULL,
        stage                TEXT NOT NULL,
        attempts             INTEGER NOT NULL,
        job_id               TEXT,
        request_id           TEXT,
        batch_id             TEXT,
        error_code           TEXT,
        error_msg            TEXT,
        property             TEXT NOT NULL,
        custom_property_json TEXT,
        PRIMARY KEY (rollout_id, idx)
    ) WITHOUT ROWID
"""
"""Phones stored in fleet order: a new rollout's rows are appended, not scattered through an index
by phone ID (nothing looks a row up by phone ID since saves go to the change log); half the cost
of creating a 100,000-phone rollout."""


def _create_v2(conn: sqlite3.Connection) -> None:
    conn.execute(_PHONES_BY_POSITION)
    conn.execute(
        "INSERT INTO phones_by_position (rollout_id, idx, phone_id, wave, state, stage, attempts,"
        " job_id, request_id, batch_id, error_code, error_msg, property, custom_property_json)"
        " SELECT rollout_id, idx, phone_id, wave, state, stage, attempts, job_id, request_id,"
        " batch_id, error_code, error_msg, property, custom_property_json FROM phones"
    )
    conn.execute("DROP TABLE phones")
    conn.execute("ALTER TABLE phones_by_position RENAME TO phones")
    conn.execute(
        """
        CREATE TABLE phone_changes (
            seq          INTEGER PRIMARY KEY,
            rollout_id   TEXT NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
            changes_json TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX phone_changes_by_rollout ON phone_changes (rollout_id, seq)")
    conn.execute(
        """
        CREATE TABLE rollout_counts (
            rollout_id  TEXT PRIMARY KEY REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
            generation  INTEGER NOT NULL,
            counts_json TEXT NOT NULL
        )
        """
    )
    _count_existing_phones(conn)


def _count_existing_phones(conn: sqlite3.Connection) -> None:
    """Counts rows for the rollouts a first-version journal holds, so readers need no other source."""
    counts: dict[str, dict[str, int]] = {}
    for rollout_id, state, count in conn.execute(
        "SELECT rollout_id, state, count(*) FROM phones GROUP BY rollout_id, state"
    ):
        counts.setdefault(rollout_id, {})[state] = count
    conn.executemany(
        "INSERT INTO rollout_counts (rollout_id, generation, counts_json) VALUES (?, 0, ?)",
        [(rollout_id, json.dumps(by_state)) for rollout_id, by_state in counts.items()],
    )


def _create_v3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE rollouts ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("rollouts and their phones", _create_v1),
    Migration("phones in fleet order, changes appended per save, per-state counts", _create_v2),
    Migration("a lease generation that fences a lapsed runner's writes", _create_v3),
)
"""The schema's history; ``len(MIGRATIONS)`` is the version this code writes."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's ``user_version``."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _application_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA application_id").fetchone()[0])


def _object_names(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    return [str(row[0]) for row in rows]


def check_identity(conn: sqlite3.Connection, path: Path, known_version: int) -> int:
    """Refuse a file that is not an empty database or a journal this code can read; return its version.

    An empty database (no marker, version 0, no tables) is a new journal. A file with our marker is
    ours, unless it is from a newer release. Anything else belongs to another program, and we must
    not touch it (not even switch it to WAL).
    """
    app_id = _application_id(conn)
    version = schema_version(conn)
    if app_id == APPLICATION_ID:
        if version > known_version:
            raise StoreCorruptError(
                f"{path} was written by a newer cph-orchestrator (schema {version});"
                f" this version knows up to {known_version}"
            )
        return version
    if app_id != 0:
        raise StoreCorruptError(
            f"{path} is not a cph-orchestrator journal: it belongs to another program"
            f" (application_id {app_id:#010x})"
        )
    names = _object_names(conn)
    if version != 0 or names:
        shown = ", ".join(sorted(names)[:5]) or "none"
        raise StoreCorruptError(
            f"{path} is not a cph-orchestrator journal: an SQLite database without the"
            f" cph_orchestrator marker (user_version {version}, tables: {shown})"
        )
    return 0


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Apply the missing steps in order, one transaction each; return the resulting version."""
    target = len(migrations)
    while True:
        with write_transaction(conn):
            version = check_identity(conn, path, target)
            if version >= target:
                return version
            migrations[version].apply(conn)
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
            if version == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")


def require_current(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """For read-only opens, which cannot migrate: the file must already be at our version."""
    version = check_identity(conn, path, len(migrations))
    if version < len(migrations):
        raise StoreUnavailableError(
            f"{path} is at schema {version} and needs migrating to {len(migrations)};"
            " open it once writable to upgrade it"
        )
