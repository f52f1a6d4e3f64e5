"""The SQLite journal: every rollout and phone on disk, written from one thread, in WAL mode.

Why one dedicated thread and the standard ``sqlite3`` module (rather than ``aiosqlite``): each
method of the store is one unit of work, and the lease's check-and-take must not interleave with
anything else on the connection. Here a unit of work is a plain synchronous function that runs
whole on the store's thread, inside one ``BEGIN IMMEDIATE`` transaction, so the event loop pays one
hand-off per call and no other coroutine can slip a statement into an open transaction (with
``aiosqlite`` each statement is its own await, and a transaction spans several of them). The single
thread is also the single writer: every write of this process is serialised on it, and WAL lets
other processes (``status``, ``report``) read while it writes.

What the event loop thread does per call is copy the records' mutable fields into tuples (the
engine keeps changing records while a save is in flight, so the snapshot must be taken at call
time) and wait; the SQL runs on the store's thread.

Monotonic-clock fields of :class:`PhoneRecord` (``retry_at``, ``job_deadline``, ``submitted_at``)
belong to the process that set them and are not persisted; they load as ``0.0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from orchestrator.clock import Clock, SystemClock
from orchestrator.engine.states import PhoneRecord, PhoneState, Stage
from orchestrator.store.base import (
    LeaseHeldError,
    LeaseLostError,
    RolloutExistsError,
    RolloutMeta,
    RolloutNotFoundError,
    StoreCorruptError,
    StoredPhone,
    StoreError,
    StoreUnavailableError,
)
from orchestrator.store.changes import (
    CHANGE_FIELDS,
    LiveCounts,
    append_changes,
    current_live,
    empty_counts,
    fold_oldest,
    generation_of,
    latest_changes,
    logged_counts,
    overlay,
    write_counts,
)
from orchestrator.store.lease import Lease, LeaseToken, may_take, refusal, taken_over
from orchestrator.store.schema import (
    MIGRATIONS,
    Migration,
    check_identity,
    migrate,
    require_current,
)
from orchestrator.store.sql import read_transaction, translate, write_transaction

__all__ = ["BUSY_TIMEOUT_S", "CACHE_SIZE_KIB", "SqliteStore", "Synchronous"]

T = TypeVar("T")
Synchronous = Literal["normal", "full"]
"""``normal``: WAL commits survive a crash of the process, the last ones may be lost on power loss.
``full``: each commit is synced to disk too, at the cost of an fsync per save."""

BUSY_TIMEOUT_S = 5.0
"""How long a write waits for another process's write lock before the store reports it unavailable."""
COMPACT_ROWS_PER_STEP = 100
"""Log rows folded per transaction: about 10,000 phone changes, a few hundredths of a second."""
CACHE_SIZE_KIB = 32 * 1024
"""Page cache per connection: holds a 100,000-phone rollout's table and indexes."""

_PHONE_COLUMNS = (
    "idx, phone_id, wave, state, stage, attempts,"
    " job_id, request_id, batch_id, error_code, error_msg"
)
"""In :class:`PhoneRecord`'s constructor order, minus the monotonic-clock fields."""
_ROLLOUT_COLUMNS = (
    "rollout_id, name, status, reason, created_at, updated_at, options_json, plan_source,"
    " api_calls_json"
)
_INSERT_NEW_PHONE_SQL = (
    "INSERT INTO phones (rollout_id, idx, phone_id, wave, state, stage, attempts, property,"
    " custom_property_json) VALUES (?, ?, ?, 0, 'pending', 'update', 0, ?, ?)"
)
"""A phone as every new rollout starts it: binding 5 values instead of 14 is a third of the insert."""
_INSERT_PHONE_SQL = (
    f"INSERT INTO phones (rollout_id, {_PHONE_COLUMNS}, property, custom_property_json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ROLLOUT_SQL = (
    f"INSERT INTO rollouts ({_ROLLOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_snapshot = attrgetter(*CHANGE_FIELDS)
"""A phone's change as ``save`` logs it (a C-level getter: the loop's cost per phone)."""
_AS_NEW = (0, PhoneState.PENDING, Stage.UPDATE, 0, None, None, None, None, None)
"""A new record's fields in ``_snapshot`` order, without the phone's ID."""
_STATES = {state.value: state for state in PhoneState}
_STAGES = {stage.value: stage for stage in Stage}


class SqliteStore:
    """A :class:`~orchestrator.store.base.RolloutStore` in one SQLite file; create it with :meth:`open`."""

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection, clock: Clock
    ) -> None:
        self._path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn
        """Used only on the executor's thread (``sqlite3`` enforces it)."""
        self._clock = clock
        self._closed = False
        self._live: dict[str, LiveCounts] = {}
        """Phone states of the rollouts this store saves to (store thread only)."""

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: Synchronous = "normal",
        read_only: bool = False,
        clock: Clock | None = None,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SqliteStore:
        """Open the journal at ``path``, creating it (and its folder) and migrating it as needed.

        ``read_only`` opens an existing, current journal without ever writing to it (for
        ``status`` and ``report`` on a file we may not change); its writes raise
        :class:`StoreUnavailableError`. ``clock`` supplies the wall time of leases and
        ``updated_at``. ``migrations`` is the schema history, replaceable only by tests.

        Raises :class:`StoreCorruptError` for a file that is not ours or is from a newer release,
        and :class:`StoreUnavailableError` when the file or its folder cannot be opened or written.
        """
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cph-store")
        opened: list[sqlite3.Connection] = []
        connect = partial(_connect, path, synchronous, read_only, migrations, opened)
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                executor, _translated, path, connect
            )
        except asyncio.CancelledError:
            # The connect job may still finish; the next job on the same thread closes what it made.
            executor.submit(_close_all, opened)
            executor.shutdown(wait=False)
            raise
        except BaseException:
            executor.shutdown(wait=True)
            raise
        return cls(path, executor, conn, clock if clock is not None else SystemClock())

    @property
    def path(self) -> Path:
        """The journal's file."""
        return self._path

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run one unit of work on the store's thread; the one place sqlite3 errors are translated."""
        if self._closed:
            raise StoreError(f"journal {self._path} is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _translated, self._path, partial(self._on_thread, work)
        )

    def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreError(f"journal {self._path} is closed")
        return work(self._conn)

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self._clock.time(), tz=UTC).isoformat(timespec="seconds")

    async def create_rollout(
        self, meta: RolloutMeta, phones: Sequence[StoredPhone], records: Sequence[PhoneRecord]
    ) -> None:
        """Write the header and every phone in one transaction; nothing is written if the ID is taken.

        ``phones`` and ``records`` describe the same phones (matched by ``phone_id``); the caller
        must not change them until this returns, since they are read on the store's thread.
        """
        await self._call(partial(_create_rollout, meta, phones, records, self._live))

    async def save(
        self,
        rollout_id: str,
        records: Sequence[PhoneRecord],
        *,
        fence: LeaseToken | None = None,
        api_calls: Mapping[str, int] | None = None,
    ) -> None:
        """Write the mutable fields of these phones in one transaction (called on every batch step).

        The fields are copied before the first suspension, so changes the engine makes to the
        records while the write is in flight are neither half-written nor raced with. ``fence``
        and ``api_calls`` as in :meth:`RolloutStore.save`.
        """
        calls = {key: n for key, n in (api_calls or {}).items() if n}
        if not records and not calls and fence is None:
            return
        rows = list(map(_snapshot, records))
        work = _SaveWork(rollout_id, rows, fence, calls)
        await self._call(partial(_save, self._path, work, self._live))

    async def compact(self, rollout_id: str, *, rows_per_step: int = COMPACT_ROWS_PER_STEP) -> int:
        """Fold the rollout's change log into its phones' rows and empty it; returns the log rows
        folded. Reads are exact either way: this makes them cheaper and the log reusable space.

        Done in steps of ``rows_per_step`` log rows, each its own transaction, so that runners
        saving to this journal (this process's or another's) wait for a step, not for the whole.
        """
        positions = await self._call(partial(_positions, rollout_id))
        folded = 0
        while step := await self._call(
            partial(_fold_oldest, self._path, rollout_id, positions, rows_per_step)
        ):
            folded += step
        return folded

    async def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        api_calls: Mapping[str, int] | None = None,
        options: Mapping[str, Any] | None = None,
        fence: LeaseToken | None = None,
    ) -> None:
        """Change the given header fields (None leaves one as it is) and ``updated_at``; with
        ``fence``, only while that token holds the lease (:class:`LeaseLostError` otherwise)."""
        changes: dict[str, object] = {"updated_at": self._now_iso()}
        if status is not None:
            changes["status"] = status
        if reason is not None:
            changes["reason"] = reason
        if api_calls is not None:
            changes["api_calls_json"] = json.dumps(dict(api_calls))
        if options is not None:
            changes["options_json"] = json.dumps(dict(options))
        await self._call(partial(_update_rollout, rollout_id, changes, fence, self._live))

    async def get_rollout(self, rollout_id: str) -> RolloutMeta:
        """The header with per-state counts; :class:`RolloutNotFoundError` if unknown."""
        return await self._call(partial(_get_rollout, self._path, rollout_id))

    async def list_rollouts(self) -> list[RolloutMeta]:
        """Every rollout, newest first (creation order breaks ties), with counts."""
        return await self._call(partial(_list_rollouts, self._path))

    async def load_phones(self, rollout_id: str) -> tuple[list[StoredPhone], list[PhoneRecord]]:
        """Payloads and records in fleet order; the monotonic-clock fields come back as 0.0."""
        return await self._call(partial(_load_phones, self._path, rollout_id, self._live))

    async def phones(
        self,
        rollout_id: str,
        *,
        state: PhoneState | None = None,
        error_code: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[PhoneRecord]:
        """Records filtered by state and/or error code, paged, in fleet order."""
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError(f"offset and limit must not be negative (got {offset}, {limit})")
        query = _PhoneQuery(rollout_id, state, error_code, offset, limit)
        return await self._call(partial(_select_phones, self._path, query))

    async def acquire_lease(self, rollout_id: str, *, owner: str, ttl_s: float) -> LeaseToken:
        """Check and take the lease in one ``BEGIN IMMEDIATE`` transaction, so one contender wins.

        Returns the token that fences our writes; taking a lease from another owner starts a
        new generation, so the previous holder's token stops working.
        """
        return await self._call(partial(_acquire_lease, rollout_id, owner, ttl_s, self._clock.time))

    async def renew_lease(self, rollout_id: str, *, owner: str, ttl_s: float) -> None:
        """Push our lease's expiry to ``now + ttl_s``; :class:`LeaseLostError` if it is not ours."""
        await self._call(partial(_renew_lease, rollout_id, owner, ttl_s, self._clock.time))

    async def release_lease(self, rollout_id: str, *, owner: str) -> None:
        """Clear the lease if ``owner`` holds it; otherwise do nothing."""
        await self._call(partial(_release_lease, rollout_id, owner))

    async def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL when its last connection closes).

        Calls still queued run first; any call after this raises :class:`StoreError`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, _translated, self._path, self._close_on_thread
            )
        finally:
            self._executor.shutdown(wait=True)

    def _close_on_thread(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_all([conn])


def _translated(path: Path, work: Callable[[], T]) -> T:
    try:
        return work()
    except (sqlite3.Error, OSError) as error:
        raise translate(error, path) from error


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        # Let SQLite refresh its planner statistics if it sees fit; never worth failing a close.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA optimize")
        conn.close()
    connections.clear()


def _connect(
    path: Path,
    synchronous: Synchronous,
    read_only: bool,
    migrations: Sequence[Migration],
    opened: list[sqlite3.Connection],
) -> sqlite3.Connection:
    """Open, check and migrate; on any failure the connection is closed before the error leaves."""
    if read_only:
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    opened.append(conn)
    try:
        _configure(conn, synchronous)
        if read_only:
            require_current(conn, path, migrations)
        else:
            check_identity(conn, path, len(migrations))  # before WAL: never modify a foreign file
            _enable_wal(conn, path)
            migrate(conn, path, migrations)
    except BaseException:
        _close_all(opened)
        raise
    return conn


def _configure(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000):d}")
    conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute(f"PRAGMA cache_size = {-CACHE_SIZE_KIB:d}")
    conn.execute("PRAGMA temp_store = MEMORY")


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if mode != "wal":
        raise StoreUnavailableError(
            f"journal {path} cannot use WAL mode (SQLite kept journal_mode={mode});"
            " put it on a local file system"
        )


# Units of work. Each runs whole on the store's thread, inside at most one transaction.


def _require_rollout(conn: sqlite3.Connection, rollout_id: str) -> None:
    if (
        conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        is None
    ):
        raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")


def _json_text(value: Mapping[str, str]) -> str:
    return orjson.dumps(dict(value)).decode()


def _phone_rows(
    rollout_id: str, phones: Sequence[StoredPhone], records: Sequence[PhoneRecord]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Rows for :data:`_INSERT_NEW_PHONE_SQL` (records as new) and for :data:`_INSERT_PHONE_SQL`."""
    by_id = {phone.phone_id: phone for phone in phones}
    if len(by_id) != len(phones) or len(records) != len(phones):
        raise ValueError(
            f"rollout {rollout_id}: {len(phones)} payloads ({len(by_id)} distinct phones)"
            f" for {len(records)} records"
        )
    new_rows: list[tuple[object, ...]] = []
    rows: list[tuple[object, ...]] = []
    for record in records:
        phone = by_id.get(record.phone_id)
        if phone is None or phone.position != record.index:
            raise ValueError(f"rollout {rollout_id}: no payload for phone {record.phone_id}")
        custom = None if phone.custom_property is None else _json_text(phone.custom_property)
        fields = _snapshot(record)[:-1]
        if fields == _AS_NEW:
            new_rows.append((rollout_id, record.index, record.phone_id, phone.property, custom))
        else:
            rows.append(
                (rollout_id, record.index, record.phone_id, *fields, phone.property, custom)
            )
    return new_rows, rows


def _create_rollout(
    meta: RolloutMeta,
    phones: Sequence[StoredPhone],
    records: Sequence[PhoneRecord],
    live: dict[str, LiveCounts],
    conn: sqlite3.Connection,
) -> None:
    new_rows, rows = _phone_rows(meta.rollout_id, phones, records)
    header = (
        meta.rollout_id,
        meta.name,
        meta.status,
        meta.reason,
        meta.created_at,
        meta.updated_at,
        json.dumps(dict(meta.options)),
        meta.plan_source,
        json.dumps(dict(meta.api_calls)),
    )
    with write_transaction(conn):
        taken = conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = ?", (meta.rollout_id,))
        if taken.fetchone() is not None:
            raise RolloutExistsError(
                f"a rollout {meta.rollout_id!r} already exists in this journal"
            )
        conn.execute(_INSERT_ROLLOUT_SQL, header)
        conn.executemany(_INSERT_NEW_PHONE_SQL, new_rows)
        conn.executemany(_INSERT_PHONE_SQL, rows)
        created = LiveCounts({record.phone_id: record.state.value for record in records}, 0)
        write_counts(conn, meta.rollout_id, created.generation, created.counts)
    live[meta.rollout_id] = created


@dataclass(frozen=True, slots=True)
class _SaveWork:
    """One ``save`` call's data, as handed to the store's thread."""

    rollout_id: str
    changes: list[tuple[Any, ...]]
    fence: LeaseToken | None
    api_calls: Mapping[str, int]


def _save(
    path: Path, work: _SaveWork, live: dict[str, LiveCounts], conn: sqlite3.Connection
) -> None:
    rollout_id = work.rollout_id
    with write_transaction(conn):
        if work.fence is not None:
            _check_fence(conn, rollout_id, work.fence)
        if work.api_calls:
            _add_api_calls(conn, rollout_id, work.api_calls)
        if not work.changes:
            return
        known = live[rollout_id] = current_live(conn, path, rollout_id, live.get(rollout_id))
        counts = known.moved(rollout_id, work.changes)
        append_changes(conn, rollout_id, work.changes)
        write_counts(conn, rollout_id, known.generation + 1, counts)
    known.accept(work.changes, counts)


def _check_fence(conn: sqlite3.Connection, rollout_id: str, fence: LeaseToken) -> None:
    """Inside a write transaction: the write goes on only while ``fence`` holds the lease."""
    lease = _read_lease(conn, rollout_id)
    if lease.owner != fence.owner or lease.generation != fence.generation:
        raise LeaseLostError(taken_over(rollout_id, lease))


def _add_api_calls(conn: sqlite3.Connection, rollout_id: str, delta: Mapping[str, int]) -> None:
    row = conn.execute(
        "SELECT api_calls_json FROM rollouts WHERE rollout_id = ?", (rollout_id,)
    ).fetchone()
    if row is None:
        raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")
    totals: dict[str, int] = json.loads(row[0] or "{}")
    for key, count in delta.items():
        totals[key] = totals.get(key, 0) + count
    conn.execute(
        "UPDATE rollouts SET api_calls_json = ? WHERE rollout_id = ?",
        (json.dumps(totals), rollout_id),
    )


def _positions(rollout_id: str, conn: sqlite3.Connection) -> dict[str, int]:
    positions = dict(
        conn.execute("SELECT phone_id, idx FROM phones WHERE rollout_id = ?", (rollout_id,))
    )
    if not positions:
        _require_rollout(conn, rollout_id)
    return positions


def _fold_oldest(
    path: Path,
    rollout_id: str,
    positions: dict[str, int],
    max_rows: int,
    conn: sqlite3.Connection,
) -> int:
    with write_transaction(conn):
        return fold_oldest(conn, path, rollout_id, positions, max_rows)


def _update_rollout(
    rollout_id: str,
    changes: dict[str, object],
    fence: LeaseToken | None,
    live: dict[str, LiveCounts],
    conn: sqlite3.Connection,
) -> None:
    if "status" in changes:
        live.pop(rollout_id, None)  # the run ended: a later one reads the file afresh
    assignments = ", ".join(f"{column} = ?" for column in changes)
    with write_transaction(conn):
        if fence is not None:
            _check_fence(conn, rollout_id, fence)
        cursor = conn.execute(
            f"UPDATE rollouts SET {assignments} WHERE rollout_id = ?",
            (*changes.values(), rollout_id),
        )
        if cursor.rowcount == 0:
            raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")


def _meta(row: Sequence[Any], counts: Mapping[str, int]) -> RolloutMeta:
    return RolloutMeta(
        rollout_id=row[0],
        name=row[1],
        status=row[2],
        reason=row[3],
        created_at=row[4],
        updated_at=row[5],
        options=json.loads(row[6]),
        plan_source=row[7],
        api_calls=json.loads(row[8]),
        counts=counts,
    )


def _get_rollout(path: Path, rollout_id: str, conn: sqlite3.Connection) -> RolloutMeta:
    with read_transaction(conn):
        return _get_rollout_in(path, rollout_id, conn)


def _get_rollout_in(path: Path, rollout_id: str, conn: sqlite3.Connection) -> RolloutMeta:
    row = conn.execute(
        f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?",
        (rollout_id,),
    ).fetchone()
    if row is None:
        raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")
    counts = logged_counts(conn, path, rollout_id).get(rollout_id) or empty_counts()
    return _meta(row, counts)


def _list_rollouts(path: Path, conn: sqlite3.Connection) -> list[RolloutMeta]:
    with read_transaction(conn):
        return _list_rollouts_in(path, conn)


def _list_rollouts_in(path: Path, conn: sqlite3.Connection) -> list[RolloutMeta]:
    counts = logged_counts(conn, path)
    rows = conn.execute(
        f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, rowid DESC"
    )
    return [_meta(row, counts.get(row[0]) or empty_counts()) for row in rows]


def _record(row: Sequence[Any]) -> PhoneRecord:
    # Positional, in _PHONE_COLUMNS order: a third cheaper than keywords over 100,000 phones.
    return PhoneRecord(row[0], row[1], row[2], _STATES[row[3]], _STAGES[row[4]], row[5], *row[6:11])


def _records(path: Path, rows: Sequence[Sequence[Any]]) -> list[PhoneRecord]:
    try:
        return [_record(row) for row in rows]
    except KeyError as error:
        raise StoreCorruptError(
            f"{path} holds a phone state or stage this version does not know: {error}"
        ) from error


def _load_phones(
    path: Path, rollout_id: str, live: dict[str, LiveCounts], conn: sqlite3.Connection
) -> tuple[list[StoredPhone], list[PhoneRecord]]:
    with read_transaction(conn):
        rows = conn.execute(
            f"SELECT {_PHONE_COLUMNS}, property, custom_property_json FROM phones"
            " WHERE rollout_id = ? ORDER BY idx",
            (rollout_id,),
        ).fetchall()
        if not rows:
            _require_rollout(conn, rollout_id)
        rows = overlay(rows, latest_changes(conn, path, rollout_id))
        generation = generation_of(conn, rollout_id)
    phones = [
        StoredPhone(row[0], row[1], row[11], None if row[12] is None else json.loads(row[12]))
        for row in rows
    ]
    records = _records(path, rows)
    if generation is not None:  # what a resumed run saves next starts from here
        live[rollout_id] = LiveCounts({row[1]: row[3] for row in rows}, generation)
    return phones, records


@dataclass(frozen=True, slots=True)
class _PhoneQuery:
    """The filter and page of :meth:`SqliteStore.phones`."""

    rollout_id: str
    state: PhoneState | None
    error_code: str | None
    offset: int
    limit: int | None

    def sql(self) -> tuple[str, tuple[object, ...]]:
        """The query on the phones' rows alone (right when the rollout's change log is empty)."""
        where = ["rollout_id = ?"]
        params: list[object] = [self.rollout_id]
        if self.state is not None:
            where.append("state = ?")
            params.append(self.state.value)
        if self.error_code is not None:
            where.append("error_code = ?")
            params.append(self.error_code)
        params += [-1 if self.limit is None else self.limit, self.offset]
        sql = (
            f"SELECT {_PHONE_COLUMNS} FROM phones WHERE {' AND '.join(where)}"
            " ORDER BY idx LIMIT ? OFFSET ?"
        )
        return sql, tuple(params)

    def page(self, rows: list[Any]) -> list[Any]:
        """The same filter and page applied to rows in fleet order (after the log's overlay)."""
        wanted = [
            row
            for row in rows
            if (self.state is None or row[3] == self.state.value)
            and (self.error_code is None or row[9] == self.error_code)
        ]
        end = None if self.limit is None else self.offset + self.limit
        return wanted[self.offset : end]


def _select_phones(path: Path, query: _PhoneQuery, conn: sqlite3.Connection) -> list[PhoneRecord]:
    with read_transaction(conn):
        latest = latest_changes(conn, path, query.rollout_id)
        if latest:
            everything = conn.execute(
                f"SELECT {_PHONE_COLUMNS} FROM phones WHERE rollout_id = ? ORDER BY idx",
                (query.rollout_id,),
            ).fetchall()
            rows = query.page(overlay(everything, latest))
        else:
            rows = conn.execute(*query.sql()).fetchall()
        if not rows:
            _require_rollout(conn, query.rollout_id)
    return _records(path, rows)


def _read_lease(conn: sqlite3.Connection, rollout_id: str) -> Lease:
    row = conn.execute(
        "SELECT lease_owner, lease_expires_at, lease_generation FROM rollouts WHERE rollout_id = ?",
        (rollout_id,),
    ).fetchone()
    if row is None:
        raise RolloutNotFoundError(f"no rollout {rollout_id!r} in this journal")
    return Lease(owner=row[0], expires_at=row[1], generation=row[2])


def _write_lease(conn: sqlite3.Connection, rollout_id: str, lease: Lease) -> None:
    conn.execute(
        "UPDATE rollouts SET lease_owner = ?, lease_expires_at = ?, lease_generation = ?"
        " WHERE rollout_id = ?",
        (lease.owner, lease.expires_at, lease.generation, rollout_id),
    )


def _acquire_lease(
    rollout_id: str, owner: str, ttl_s: float, now: Callable[[], float], conn: sqlite3.Connection
) -> LeaseToken:
    with write_transaction(conn):
        at = now()  # read under the write lock: a contender's wait for it must not age the lease
        lease = _read_lease(conn, rollout_id)
        if not may_take(lease, owner=owner, now=at):
            raise LeaseHeldError(refusal(rollout_id, lease, now=at))
        generation = lease.generation if lease.owner == owner else lease.generation + 1
        _write_lease(conn, rollout_id, Lease(owner, at + ttl_s, generation))
    return LeaseToken(owner, generation)


def _renew_lease(
    rollout_id: str, owner: str, ttl_s: float, now: Callable[[], float], conn: sqlite3.Connection
) -> None:
    with write_transaction(conn):
        at = now()
        lease = _read_lease(conn, rollout_id)
        if lease.owner != owner:
            raise LeaseLostError(refusal(rollout_id, lease, now=at))
        _write_lease(conn, rollout_id, Lease(owner, at + ttl_s, lease.generation))


def _release_lease(rollout_id: str, owner: str, conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        conn.execute(
            "UPDATE rollouts SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE rollout_id = ? AND lease_owner = ?",
            (rollout_id, owner),
        )
