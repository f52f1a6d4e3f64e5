"""Phone changes as an append-only log, and per-state counts kept beside it.

Why a log: a save is the engine's most frequent write (three per phone and attempt: the intent,
the answer, the job's end). Updating each phone's row in place costs SQLite an index lookup and a
row rewrite per phone (half of a 100,000-phone rollout's CPU went there); appending the batch's
snapshots as one JSON row costs about a microsecond a phone. A save is still one transaction, so
it is still all or nothing.

Readers of phones overlay the log on the phones' rows: the latest change of each phone wins
(``seq`` is the order of the saves). :func:`fold_oldest` folds the oldest log rows into the phones'
rows and deletes them (compaction, once a rollout has ended); reads are the same before and after.

Readers of counts (``status``, the daemon's list) must not replay the log, so each save also
writes the rollout's per-state counts; the store's thread knows every phone's state
(:class:`LiveCounts`) and moves the counts as phones move. The counts row carries a generation
that each save increments: a store whose knowledge is older than the file's (another process saved
meanwhile) rebuilds it from the file before it writes.

A change is the phone's snapshot in :data:`CHANGE_FIELDS` order: the mutable fields, then the
phone's ID.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from orchestrator.engine.states import PhoneState
from orchestrator.store.base import RolloutNotFoundError, StoreCorruptError, StoreError

__all__ = [
    "CHANGE_FIELDS",
    "LiveCounts",
    "append_changes",
    "current_live",
    "empty_counts",
    "fold_oldest",
    "generation_of",
    "latest_changes",
    "logged_counts",
    "overlay",
    "write_counts",
]

CHANGE_FIELDS = (
    "wave",
    "state",
    "stage",
    "attempts",
    "job_id",
    "request_id",
    "batch_id",
    "error_code",
    "error_msg",
    "phone_id",
)
"""What a change holds, in order; the first nine follow ``idx, phone_id`` in a phone's row."""
_MUTABLE = len(CHANGE_FIELDS) - 1
_STATE = CHANGE_FIELDS.index("state")

Change = Sequence[Any]


def empty_counts() -> dict[str, int]:
    """Every state, at zero."""
    return {state.value: 0 for state in PhoneState}


def append_changes(conn: sqlite3.Connection, rollout_id: str, changes: Sequence[Change]) -> None:
    """Append one save's changes as a single row (the caller holds the write transaction)."""
    conn.execute(
        "INSERT INTO phone_changes (rollout_id, changes_json) VALUES (?, ?)",
        (rollout_id, orjson.dumps(changes).decode()),
    )


def latest_changes(conn: sqlite3.Connection, path: Path, rollout_id: str) -> dict[str, Change]:
    """Each changed phone's latest change, by phone ID."""
    rows = conn.execute(
        "SELECT seq, changes_json FROM phone_changes WHERE rollout_id = ? ORDER BY seq",
        (rollout_id,),
    )
    return _latest_of(rows, path, rollout_id)


def _latest_of(logged: Iterable[tuple[int, str]], path: Path, rollout_id: str) -> dict[str, Change]:
    """Log rows (in ``seq`` order) decoded, keeping each phone's last change."""
    latest: dict[str, Change] = {}
    for seq, text in logged:
        try:
            latest.update((change[_MUTABLE], change) for change in orjson.loads(text))
        except (ValueError, TypeError, IndexError, KeyError) as error:
            raise StoreCorruptError(
                f"{path}: change {seq} of rollout {rollout_id} is damaged: {error}"
            ) from error
    return latest


def overlay(rows: list[Any], latest: dict[str, Change]) -> list[Any]:
    """Rows in ``idx, phone_id, <mutable fields>, …`` order, each with its latest change applied."""
    if not latest:
        return rows
    patched: list[Any] = []
    for row in rows:
        change = latest.get(row[1])
        patched.append(
            row if change is None else (row[0], row[1], *change[:_MUTABLE], *row[2 + _MUTABLE :])
        )
    return patched


def logged_counts(
    conn: sqlite3.Connection, path: Path, rollout_id: str | None = None
) -> dict[str, dict[str, int]]:
    """Per-state counts of the rollout (or of every rollout), as the last save wrote them."""
    logged: dict[str, dict[str, int]] = {}
    where, params = ("WHERE rollout_id = ?", (rollout_id,)) if rollout_id is not None else ("", ())
    for counted_id, text in conn.execute(
        f"SELECT rollout_id, counts_json FROM rollout_counts {where}", params
    ):
        try:
            logged[counted_id] = empty_counts() | json.loads(text)
        except (ValueError, TypeError) as error:
            raise StoreCorruptError(
                f"{path}: the counts of rollout {counted_id} are damaged: {error}"
            ) from error
    return logged


def write_counts(
    conn: sqlite3.Connection, rollout_id: str, generation: int, counts: dict[str, int]
) -> None:
    """Record the rollout's counts as of ``generation`` (the caller holds the write transaction)."""
    conn.execute(
        "INSERT OR REPLACE INTO rollout_counts (rollout_id, generation, counts_json) VALUES (?, ?, ?)",
        (rollout_id, generation, json.dumps(counts)),
    )


def generation_of(conn: sqlite3.Connection, rollout_id: str) -> int | None:
    """The generation of the rollout's counts row (None: it has none yet)."""
    row = conn.execute(
        "SELECT generation FROM rollout_counts WHERE rollout_id = ?", (rollout_id,)
    ).fetchone()
    return None if row is None else int(row[0])


class LiveCounts:
    """One rollout's phone states as the file holds them, on the store's thread.

    Lets a save move the counts without reading anything but the generation.
    """

    __slots__ = ("counts", "generation", "states")

    def __init__(self, states: dict[str, str], generation: int) -> None:
        self.states = states
        self.generation = generation
        self.counts = empty_counts()
        for state in states.values():
            self.counts[state] = self.counts.get(state, 0) + 1

    @classmethod
    def read(cls, conn: sqlite3.Connection, path: Path, rollout_id: str) -> LiveCounts:
        """Rebuild from the file: the rows, the log over them, and the counts' generation."""
        states = dict(
            conn.execute("SELECT phone_id, state FROM phones WHERE rollout_id = ?", (rollout_id,))
        )
        if not states and not _rollout_exists(conn, rollout_id):
            raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")
        for phone_id, change in latest_changes(conn, path, rollout_id).items():
            states[phone_id] = change[_STATE]
        return cls(states, generation_of(conn, rollout_id) or 0)

    def moved(self, rollout_id: str, changes: Sequence[Change]) -> dict[str, int]:
        """The counts after these changes; :class:`StoreError` if one names a phone not in the rollout.

        Changes nothing here: :meth:`accept` does, once the save is committed.
        """
        counts = dict(self.counts)
        unknown: list[str] = []
        states = self.states
        seen: dict[str, str] = {}
        for change in changes:
            phone_id, state = change[_MUTABLE], str(change[_STATE])
            before = seen.get(phone_id) or states.get(phone_id)
            if before is None:
                unknown.append(phone_id)
                continue
            counts[before] -= 1
            counts[state] = counts.get(state, 0) + 1
            seen[phone_id] = state
        if unknown:
            names = sorted(set(unknown))
            raise StoreError(
                f"rollout {rollout_id} has no phone(s) {', '.join(names[:5])}"
                f"{' …' if len(names) > 5 else ''}; nothing of this save was written"
            )
        return counts

    def accept(self, changes: Sequence[Change], counts: dict[str, int]) -> None:
        """The save committed: take its states, counts and the next generation."""
        for change in changes:
            self.states[change[_MUTABLE]] = str(change[_STATE])
        self.counts = counts
        self.generation += 1


def current_live(
    conn: sqlite3.Connection, path: Path, rollout_id: str, known: LiveCounts | None
) -> LiveCounts:
    """``known`` if it is as new as the file, else a fresh read (another process saved meanwhile)."""
    generation = generation_of(conn, rollout_id)
    if known is not None and generation is not None and known.generation == generation:
        return known
    return LiveCounts.read(conn, path, rollout_id)


def _rollout_exists(conn: sqlite3.Connection, rollout_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
    return row is not None


_FOLD_SQL = (
    "UPDATE phones SET wave = ?, state = ?, stage = ?, attempts = ?, job_id = ?, request_id = ?,"
    " batch_id = ?, error_code = ?, error_msg = ? WHERE rollout_id = ? AND idx = ?"
)


def fold_oldest(
    conn: sqlite3.Connection,
    path: Path,
    rollout_id: str,
    positions: dict[str, int],
    max_rows: int,
) -> int:
    """Fold the rollout's oldest ``max_rows`` log rows into its phones' rows and delete them;
    returns how many were folded (0: the log is empty).

    Reads are exact before and after: the rows then hold the state as of the last folded save,
    and the rest of the log still overlays them. ``positions`` maps phone IDs to fleet positions
    (the rows' key; phones never change after creation). The caller holds the write transaction.
    """
    logged = conn.execute(
        "SELECT seq, changes_json FROM phone_changes WHERE rollout_id = ? ORDER BY seq LIMIT ?",
        (rollout_id, max_rows),
    ).fetchall()
    if not logged:
        return 0
    latest = _latest_of(logged, path, rollout_id)
    try:
        folded = sorted((positions[phone_id], change) for phone_id, change in latest.items())
    except KeyError as error:
        raise StoreCorruptError(
            f"{path}: the change log of rollout {rollout_id} names a phone it does not have:"
            f" {error}"
        ) from error
    conn.executemany(
        _FOLD_SQL, [(*change[:_MUTABLE], rollout_id, position) for position, change in folded]
    )
    conn.execute(
        "DELETE FROM phone_changes WHERE rollout_id = ? AND seq <= ?", (rollout_id, logged[-1][0])
    )
    conn.execute(
        "UPDATE rollout_counts SET generation = generation + 1 WHERE rollout_id = ?", (rollout_id,)
    )
    return len(logged)
