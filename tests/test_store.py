"""The SQLite journal, on real files: round trips, schema versions, foreign files, failures, leases.

Run with ``-s`` to see the bulk figures; nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from orchestrator.clock import FakeClock
from orchestrator.engine.states import PhoneRecord, PhoneState, Stage
from orchestrator.store import (
    LeaseHeldError,
    LeaseLostError,
    RolloutExistsError,
    RolloutMeta,
    RolloutNotFoundError,
    SqliteStore,
    StoreCorruptError,
    StoredPhone,
    StoreError,
    StoreUnavailableError,
)
from orchestrator.store.changes import fold_oldest
from orchestrator.store.lease import Lease, LocalHolder, local_holder, may_take, new_owner
from orchestrator.store.schema import APPLICATION_ID, MIGRATIONS, Migration

HOST = socket.gethostname()


def meta(rollout_id: str = "r1", *, created_at: str = "2024-05-01T10:00:00+00:00") -> RolloutMeta:
    return RolloutMeta(
        rollout_id=rollout_id,
        name=f"name of {rollout_id}",
        status="running",
        created_at=created_at,
        updated_at=created_at,
        options={"batch_size": 50, "waves": [10, "100%"]},
        plan_source="name: demo\n",
    )


def fleet(count: int, *, prefix: str = "phone") -> tuple[list[StoredPhone], list[PhoneRecord]]:
    ids = [f"{prefix}-{index:06d}" for index in range(count)]
    phones = [
        StoredPhone(
            index,
            phone_id,
            f'{{"ro.product.model": "M{index}"}}',
            {"persist.sys.x": str(index)} if index % 2 else None,
        )
        for index, phone_id in enumerate(ids)
    ]
    return phones, [
        PhoneRecord(index=index, phone_id=phone_id) for index, phone_id in enumerate(ids)
    ]


async def create(store: SqliteStore, rollout_id: str = "r1", count: int = 5, **kw: str) -> None:
    phones, records = fleet(count)
    await store.create_rollout(meta(rollout_id, **kw), phones, records)


def raw_pragma(path: Path, name: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite"


@pytest.fixture
async def store(journal_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(journal_path)
    yield opened
    await opened.close()


# --- rollouts and phones ------------------------------------------------------------------------


async def test_create_then_get_and_list_newest_first_with_counts(store: SqliteStore) -> None:
    await create(store, "older", 3, created_at="2024-05-01T10:00:00+00:00")
    await create(store, "newer", 4, created_at="2024-05-02T10:00:00+00:00")
    await create(store, "same-second", 2, created_at="2024-05-02T10:00:00+00:00")

    got = await store.get_rollout("older")
    assert got.name == "name of older"
    assert got.options == {"batch_size": 50, "waves": [10, "100%"]}
    assert got.plan_source == "name: demo\n"
    assert got.counts == {state.value: 0 for state in PhoneState} | {"pending": 3}

    listed = await store.list_rollouts()
    assert [m.rollout_id for m in listed] == ["same-second", "newer", "older"]
    assert [sum(m.counts.values()) for m in listed] == [2, 4, 3]
    assert set(listed[0].counts) == {state.value for state in PhoneState}
    with pytest.raises(RolloutNotFoundError):
        await store.get_rollout("nope")


async def test_duplicate_id_is_refused_and_nothing_is_half_written(store: SqliteStore) -> None:
    await create(store, "r1", 3)
    other_phones, other_records = fleet(7, prefix="other")
    with pytest.raises(RolloutExistsError, match="r1"):
        await store.create_rollout(meta("r1"), other_phones, other_records)

    phones, _ = await store.load_phones("r1")
    assert [p.phone_id for p in phones] == ["phone-000000", "phone-000001", "phone-000002"]
    assert sum((await store.get_rollout("r1")).counts.values()) == 3


async def test_records_created_in_any_state_keep_it_and_count_in_it(store: SqliteStore) -> None:
    phones, records = fleet(3)
    records[1].state, records[1].attempts, records[1].error_code = PhoneState.FAILED, 2, "CPS.0004"
    await store.create_rollout(meta("r1"), phones, records)

    _, loaded = await store.load_phones("r1")
    assert [(r.state, r.attempts, r.error_code) for r in loaded] == [
        (PhoneState.PENDING, 0, None),
        (PhoneState.FAILED, 2, "CPS.0004"),
        (PhoneState.PENDING, 0, None),
    ]
    counts = (await store.get_rollout("r1")).counts
    assert (counts["pending"], counts["failed"]) == (2, 1)


async def test_mismatched_payloads_and_records_write_nothing(store: SqliteStore) -> None:
    phones, records = fleet(3)
    with pytest.raises(ValueError, match="payload"):
        await store.create_rollout(meta("r1"), phones[:2], records)
    assert await store.list_rollouts() == []


async def test_save_and_load_round_trip_every_persisted_field(store: SqliteStore) -> None:
    await create(store, "r1", 4)
    _, records = await store.load_phones("r1")
    record = records[1]
    record.wave = 2
    record.state = PhoneState.RETRY_WAIT
    record.stage = Stage.RESTART
    record.attempts = 3
    record.job_id = "job-1"
    record.request_id = "req-1"
    record.batch_id = "batch-1"
    record.error_code = "CPS.0005"
    record.error_msg = "phone not found — try later"
    record.retry_at = record.job_deadline = record.submitted_at = 123.5
    await store.save("r1", [record])

    phones, loaded = await store.load_phones("r1")
    assert [p.position for p in phones] == [r.index for r in loaded] == [0, 1, 2, 3]
    assert phones[1] == StoredPhone(
        1, "phone-000001", '{"ro.product.model": "M1"}', {"persist.sys.x": "1"}
    )
    assert phones[0].custom_property is None
    got = loaded[1]
    assert (got.index, got.phone_id, got.wave, got.state, got.stage, got.attempts) == (
        1,
        "phone-000001",
        2,
        PhoneState.RETRY_WAIT,
        Stage.RESTART,
        3,
    )
    assert type(got.state) is PhoneState
    assert type(got.stage) is Stage
    assert (got.job_id, got.request_id, got.batch_id, got.error_code, got.error_msg) == (
        "job-1",
        "req-1",
        "batch-1",
        "CPS.0005",
        "phone not found — try later",
    )
    assert (got.retry_at, got.job_deadline, got.submitted_at) == (0.0, 0.0, 0.0)
    assert loaded[0].state is PhoneState.PENDING


async def test_save_takes_a_snapshot_when_called(store: SqliteStore) -> None:
    await create(store, "r1", 1)
    _, (record,) = await store.load_phones("r1")
    record.state = PhoneState.SUBMITTING
    saving = asyncio.ensure_future(store.save("r1", [record]))
    await asyncio.sleep(0)  # the save is now waiting on the store's thread
    record.state = PhoneState.RUNNING  # the engine moves on while the write is in flight
    await saving
    _, (loaded,) = await store.load_phones("r1")
    assert loaded.state is PhoneState.SUBMITTING


async def test_save_of_an_unknown_phone_writes_nothing(store: SqliteStore) -> None:
    await create(store, "r1", 2)
    _, records = await store.load_phones("r1")
    records[0].attempts = 9
    with pytest.raises(StoreError, match="ghost"):
        await store.save("r1", [records[0], PhoneRecord(index=5, phone_id="ghost")])
    _, loaded = await store.load_phones("r1")
    assert loaded[0].attempts == 0
    with pytest.raises(RolloutNotFoundError):
        await store.save("nope", records)


async def test_phones_filters_by_state_and_error_code_and_pages(store: SqliteStore) -> None:
    await create(store, "r1", 10)
    _, records = await store.load_phones("r1")
    for record in records[::2]:
        record.state = PhoneState.FAILED
        record.error_code = "CPS.0004" if record.index < 6 else "CPS.0003"
    await store.save("r1", records)

    failed = await store.phones("r1", state=PhoneState.FAILED)
    assert [r.index for r in failed] == [0, 2, 4, 6, 8]
    assert [r.index for r in await store.phones("r1", error_code="CPS.0003")] == [6, 8]
    both = await store.phones("r1", state=PhoneState.FAILED, error_code="CPS.0004")
    assert [r.index for r in both] == [0, 2, 4]
    page = await store.phones("r1", offset=3, limit=4)
    assert [r.index for r in page] == [3, 4, 5, 6]
    assert [r.index for r in await store.phones("r1", offset=8)] == [8, 9]
    assert await store.phones("r1", state=PhoneState.RUNNING) == []
    with pytest.raises(RolloutNotFoundError):
        await store.phones("nope")
    with pytest.raises(ValueError, match="negative"):
        await store.phones("r1", limit=-1)
    assert (await store.get_rollout("r1")).counts["failed"] == 5


def change_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM phone_changes").fetchone()[0])


@pytest.mark.parametrize("reader", ["same store", "another store", "compacted", "half folded"])
async def test_every_read_sees_each_phones_latest_save(
    store: SqliteStore, journal_path: Path, reader: str
) -> None:
    await create(store, "r1", 6)
    await create(store, "r2", 2)
    _, records = await store.load_phones("r1")
    for record in records[:4]:
        record.state, record.batch_id = PhoneState.SUBMITTING, "b1"
    await store.save("r1", records[:4])
    for record in records[:4]:
        record.state, record.job_id = PhoneState.RUNNING, f"job-{record.index}"
    await store.save("r1", records[:4])
    records[0].state = PhoneState.SUCCEEDED
    records[1].state, records[1].error_code = PhoneState.FAILED, "CPS.0004"
    await store.save("r1", records[:2])
    assert change_rows(journal_path) == 3
    if reader == "compacted":
        assert await store.compact("r1", rows_per_step=2) == 3
        assert change_rows(journal_path) == 0
    if reader == "half folded":  # the first step of a compaction: later changes overlay it
        with contextlib.closing(sqlite3.connect(journal_path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            positions = {f"phone-{index:06d}": index for index in range(6)}
            assert fold_oldest(conn, journal_path, "r1", positions, 2) == 2
            conn.execute("COMMIT")
        assert change_rows(journal_path) == 1

    async with contextlib.AsyncExitStack() as stack:
        read = store
        if reader == "another store":
            read = await SqliteStore.open(journal_path, read_only=True)
            stack.push_async_callback(read.close)
        counts = (await read.get_rollout("r1")).counts
        assert counts == {state.value: 0 for state in PhoneState} | {
            "succeeded": 1,
            "failed": 1,
            "running": 2,
            "pending": 2,
        }
        listed = {meta.rollout_id: meta.counts for meta in await read.list_rollouts()}
        assert listed["r1"] == counts
        assert listed["r2"]["pending"] == 2
        _, loaded = await read.load_phones("r1")
        assert [(r.state.value, r.job_id, r.batch_id) for r in loaded] == [
            ("succeeded", "job-0", "b1"),
            ("failed", "job-1", "b1"),
            ("running", "job-2", "b1"),
            ("running", "job-3", "b1"),
            ("pending", None, None),
            ("pending", None, None),
        ]
        assert [r.index for r in await read.phones("r1", state=PhoneState.RUNNING)] == [2, 3]
        assert [r.index for r in await read.phones("r1", error_code="CPS.0004")] == [1]
        assert [r.index for r in await read.phones("r1", offset=1, limit=2)] == [1, 2]
        assert await read.phones("r1", state=PhoneState.CANCELLED) == []


async def test_counts_stay_exact_when_two_stores_take_turns_saving(
    store: SqliteStore, journal_path: Path
) -> None:
    await create(store, "r1", 4)
    _, records = await store.load_phones("r1")
    records[0].state = PhoneState.SUBMITTING
    await store.save("r1", records[:1])
    other = await SqliteStore.open(journal_path)  # e.g. a resume after this process stopped
    try:
        _, theirs = await other.load_phones("r1")
        theirs[0].state, theirs[1].state = PhoneState.RUNNING, PhoneState.SUBMITTING
        await other.save("r1", theirs[:2])
    finally:
        await other.close()
    records[0].state = PhoneState.SUCCEEDED  # this store's knowledge is now older than the file's
    await store.save("r1", records[:1])
    counts = (await store.get_rollout("r1")).counts
    assert {state: n for state, n in counts.items() if n} == {
        "succeeded": 1,
        "submitting": 1,
        "pending": 2,
    }


async def test_saves_after_a_compaction_overlay_the_folded_rows(
    store: SqliteStore, journal_path: Path
) -> None:
    await create(store, "r1", 3)
    _, records = await store.load_phones("r1")
    records[0].state, records[0].attempts = PhoneState.FAILED, 2
    await store.save("r1", records[:1])
    assert await store.compact("r1") == 1
    assert await store.compact("r1") == 0
    records[1].state = PhoneState.SUBMITTING
    await store.save("r1", records[:2])

    _, loaded = await store.load_phones("r1")
    assert [(r.state, r.attempts) for r in loaded] == [
        (PhoneState.FAILED, 2),
        (PhoneState.SUBMITTING, 0),
        (PhoneState.PENDING, 0),
    ]
    counts = (await store.get_rollout("r1")).counts
    assert (counts["failed"], counts["submitting"], counts["pending"]) == (1, 1, 1)
    with pytest.raises(RolloutNotFoundError):
        await store.compact("nope")


async def test_a_damaged_change_log_is_reported_not_misread(
    store: SqliteStore, journal_path: Path
) -> None:
    await create(store, "r1", 2)
    _, records = await store.load_phones("r1")
    await store.save("r1", records)
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:
        conn.execute("UPDATE phone_changes SET changes_json = '[[1, 2'")
        conn.execute("UPDATE rollout_counts SET counts_json = '{'")
        conn.commit()
    with pytest.raises(StoreCorruptError, match="change 1 of rollout r1 is damaged"):
        await store.phones("r1")
    with pytest.raises(StoreCorruptError, match="change 1 of rollout r1 is damaged"):
        await store.load_phones("r1")
    with pytest.raises(StoreCorruptError, match="counts of rollout r1 are damaged"):
        await store.get_rollout("r1")


async def test_update_rollout_changes_only_what_is_given(journal_path: Path) -> None:
    clock = FakeClock(epoch=1_717_200_000.0)
    store = await SqliteStore.open(journal_path, clock=clock)
    try:
        await create(store, "r1", 1)
        await store.update_rollout("r1", status="aborted", reason="too many failures")
        await store.update_rollout("r1", api_calls={"submit": 3, "query": 9, "throttled": 1})
        got = await store.get_rollout("r1")
        assert (got.status, got.reason) == ("aborted", "too many failures")
        assert got.api_calls == {"submit": 3, "query": 9, "throttled": 1}
        assert got.options == meta().options
        assert got.updated_at == "2024-06-01T00:00:00+00:00"
        assert got.created_at == meta().created_at
        await store.update_rollout("r1", options={"batch_size": 10})
        assert (await store.get_rollout("r1")).options == {"batch_size": 10}
        with pytest.raises(RolloutNotFoundError):
            await store.update_rollout("nope", status="x")
    finally:
        await store.close()


async def test_a_closed_store_refuses_calls_and_closes_twice(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.list_rollouts()


# --- the file: persistence, WAL, schema versions, foreign files ----------------------------------


async def test_reopen_keeps_the_data_in_wal_mode(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path, synchronous="full")
    await create(store, "r1", 3)
    _, records = await store.load_phones("r1")
    records[2].state = PhoneState.RUNNING
    records[2].job_id = "job-2"
    await store.save("r1", records[2:])
    await store.close()

    assert raw_pragma(journal_path, "journal_mode") == "wal"
    assert raw_pragma(journal_path, "application_id") == APPLICATION_ID
    assert raw_pragma(journal_path, "user_version") == len(MIGRATIONS)

    reopened = await SqliteStore.open(journal_path)
    try:
        _, loaded = await reopened.load_phones("r1")
        assert (loaded[2].state, loaded[2].job_id) == (PhoneState.RUNNING, "job-2")
        assert (await reopened.get_rollout("r1")).counts["running"] == 1
    finally:
        await reopened.close()


def _add_notes_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE rollouts ADD COLUMN notes TEXT NOT NULL DEFAULT ''")


V2 = (*MIGRATIONS, Migration("a hypothetical later step: rollout notes", _add_notes_column))


@pytest.fixture
def empty_file(journal_path: Path) -> Path:
    """A zero-byte file: "version 0", no schema at all."""
    journal_path.parent.mkdir(parents=True)
    journal_path.touch()
    return journal_path


async def test_an_empty_file_is_a_new_journal(empty_file: Path) -> None:
    journal_path = empty_file
    store = await SqliteStore.open(journal_path)
    await create(store, "r1", 1)
    await store.close()
    assert raw_pragma(journal_path, "user_version") == len(MIGRATIONS)


async def test_an_older_schema_is_migrated_in_place(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path)
    await create(store, "r1", 3)
    await store.close()

    upgraded = await SqliteStore.open(journal_path, migrations=V2)
    try:
        assert (await upgraded.get_rollout("r1")).name == "name of r1"
        assert len((await upgraded.load_phones("r1"))[1]) == 3
    finally:
        await upgraded.close()
    assert raw_pragma(journal_path, "user_version") == len(V2)
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:
        assert conn.execute("SELECT notes FROM rollouts").fetchall() == [("",)]


async def test_a_first_version_journal_gains_the_change_log(journal_path: Path) -> None:
    old = await SqliteStore.open(journal_path)
    await create(old, "r1", 2)
    await old.close()
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:  # as the first version left it
        conn.executescript(
            "DROP TABLE rollout_counts; DROP TABLE phone_changes;"
            " ALTER TABLE rollouts DROP COLUMN lease_generation; PRAGMA user_version = 1;"
        )

    store = await SqliteStore.open(journal_path)
    try:
        _, records = await store.load_phones("r1")
        assert (await store.get_rollout("r1")).counts["pending"] == 2
        records[0].state = PhoneState.SUBMITTING
        await store.save("r1", records[:1])
        assert (await store.get_rollout("r1")).counts["submitting"] == 1
        assert (await store.get_rollout("r1")).counts["pending"] == 1
    finally:
        await store.close()
    assert raw_pragma(journal_path, "user_version") == len(MIGRATIONS)


async def test_a_failing_migration_step_leaves_the_file_at_its_version(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path)
    await create(store, "r1", 1)
    await store.close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE rollouts ADD COLUMN half TEXT")
        conn.execute("THIS IS NOT SQL")

    with pytest.raises(StoreError, match="syntax error"):
        await SqliteStore.open(journal_path, migrations=(*MIGRATIONS, Migration("broken", broken)))
    assert raw_pragma(journal_path, "user_version") == len(MIGRATIONS)
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(rollouts)")]
    assert "half" not in columns


async def test_a_newer_schema_is_refused(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path, migrations=V2)
    await store.close()
    with pytest.raises(StoreCorruptError) as caught:
        await SqliteStore.open(journal_path)
    assert str(caught.value) == (
        f"{journal_path} was written by a newer cph-orchestrator (schema {len(V2)});"
        f" this version knows up to {len(MIGRATIONS)}"
    )


def _text_file(path: Path) -> None:
    path.write_text("rollout_id,phone_id\nr1,p1\n" * 100)


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _other_apps_db(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE contacts (name TEXT)")
        conn.commit()


def _versioned_db_without_marker(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 7")


def _db_of_another_application(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA application_id = 1234")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_text_file, "not SQLite"),
        (_random_bytes, "not SQLite"),
        (_other_apps_db, "tables: contacts"),
        (_versioned_db_without_marker, "user_version 7"),
        (_db_of_another_application, "another program"),
    ],
)
async def test_a_foreign_file_is_refused_and_left_untouched(
    tmp_path: Path, make: Callable[[Path], None], reason: str
) -> None:
    path = tmp_path / "foreign.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError) as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)
    assert path.read_bytes() == before
    assert not path.with_name("foreign.db-wal").exists()


# --- failures: unopenable, read-only, full ------------------------------------------------------


async def test_a_folder_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    path = tmp_path / "afile" / "journal.sqlite"
    with pytest.raises(StoreUnavailableError) as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


async def test_a_path_that_is_a_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="unable to open") as caught:
        await SqliteStore.open(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_a_read_only_journal_refuses_writes_and_keeps_its_data(journal_path: Path) -> None:
    store = await SqliteStore.open(journal_path)
    await create(store, "r1", 3)
    await store.close()

    read_only = await SqliteStore.open(journal_path, read_only=True)
    try:
        assert (await read_only.get_rollout("r1")).counts["pending"] == 3
        _, records = await read_only.load_phones("r1")
        records[0].state = PhoneState.SUBMITTING
        with pytest.raises(StoreUnavailableError, match="readonly") as caught:
            await read_only.save("r1", records[:1])
        assert str(journal_path) in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailableError):
            await create(read_only, "r2", 1)
        with pytest.raises(StoreUnavailableError):
            await read_only.acquire_lease("r1", owner="x:1:a", ttl_s=5)
        _, after = await read_only.load_phones("r1")
        assert after[0].state is PhoneState.PENDING
        assert [m.rollout_id for m in await read_only.list_rollouts()] == ["r1"]
    finally:
        await read_only.close()


async def test_a_missing_journal_cannot_be_opened_read_only(journal_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="unable to open"):
        await SqliteStore.open(journal_path, read_only=True)
    assert not await asyncio.to_thread(journal_path.exists)


async def test_a_full_disk_is_unavailable_and_keeps_what_was_written(store: SqliteStore) -> None:
    await create(store, "r1", 3)

    def fill_up(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"

    await store._call(fill_up)  # a test seam: run on the store's thread
    phones, records = fleet(5_000, prefix="big")
    with pytest.raises(StoreUnavailableError, match="full") as caught:
        await store.create_rollout(meta("r2"), phones, records)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert [m.rollout_id for m in await store.list_rollouts()] == ["r1"]
    with pytest.raises(RolloutNotFoundError):
        await store.load_phones("r2")
    assert len((await store.load_phones("r1"))[1]) == 3


# --- leases --------------------------------------------------------------------------------------


def owner(tag: str, pid: int | None = None) -> str:
    return f"{HOST}:{os.getpid() if pid is None else pid}:{tag}"


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_a_live_lease_refuses_a_second_owner(store: SqliteStore) -> None:
    await create(store, "r1", 1)
    await store.acquire_lease("r1", owner=owner("a"), ttl_s=30)
    await store.acquire_lease("r1", owner=owner("a"), ttl_s=30)  # ours: taking it again is fine
    with pytest.raises(LeaseHeldError) as caught:
        await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
    assert owner("a") in str(caught.value)
    assert "expires at" in str(caught.value)
    with pytest.raises(RolloutNotFoundError):
        await store.acquire_lease("nope", owner=owner("a"), ttl_s=30)


async def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_renew(
    journal_path: Path,
) -> None:
    clock = FakeClock()
    store = await SqliteStore.open(journal_path, clock=clock)
    try:
        await create(store, "r1", 1)
        remote = "elsewhere.example:4242:a"
        await store.acquire_lease("r1", owner=remote, ttl_s=30)
        clock.advance(20)
        await store.renew_lease("r1", owner=remote, ttl_s=30)  # now expires at 50
        clock.advance(29)
        with pytest.raises(LeaseHeldError, match=r"elsewhere\.example"):
            await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
        clock.advance(2)
        await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
        with pytest.raises(LeaseHeldError, match=re.escape(owner("b"))):
            await store.renew_lease("r1", owner=remote, ttl_s=30)
    finally:
        await store.close()


async def test_a_dead_local_holder_is_taken_over_at_once(store: SqliteStore, dead_pid: int) -> None:
    await create(store, "r1", 1)
    await store.acquire_lease("r1", owner=owner("crashed", dead_pid), ttl_s=3600)
    await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
    with pytest.raises(LeaseHeldError):
        await store.renew_lease("r1", owner=owner("crashed", dead_pid), ttl_s=30)


async def test_the_same_pid_on_another_host_is_not_presumed_dead(
    store: SqliteStore, dead_pid: int
) -> None:
    await create(store, "r1", 1)
    await store.acquire_lease("r1", owner=f"not-{HOST}:{dead_pid}:x", ttl_s=3600)
    with pytest.raises(LeaseHeldError):
        await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)


async def test_release_then_another_owner_acquires(store: SqliteStore) -> None:
    await create(store, "r1", 1)
    await store.acquire_lease("r1", owner=owner("a"), ttl_s=30)
    await store.release_lease("r1", owner=owner("b"))  # not the holder: nothing happens
    with pytest.raises(LeaseHeldError):
        await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
    await store.release_lease("r1", owner=owner("a"))
    await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
    with pytest.raises(LeaseHeldError, match=re.escape(owner("b"))):
        await store.renew_lease("r1", owner=owner("a"), ttl_s=30)


async def test_two_stores_racing_for_one_lease_have_exactly_one_winner(journal_path: Path) -> None:
    first = await SqliteStore.open(journal_path)
    second = await SqliteStore.open(journal_path)
    try:
        for round_ in range(5):
            await create(first, f"r{round_}", 1)
            outcomes = await asyncio.gather(
                first.acquire_lease(f"r{round_}", owner=owner("first"), ttl_s=30),
                second.acquire_lease(f"r{round_}", owner=owner("second"), ttl_s=30),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["LeaseHeldError", "LeaseToken"]
    finally:
        await first.close()
        await second.close()


def test_lease_rules() -> None:
    def alive(pid: int) -> bool:
        return pid == 1

    now = 1000.0
    held = Lease(owner=f"{HOST}:1:a", expires_at=now + 10)
    assert may_take(Lease(None, None), owner="me", now=now)
    assert may_take(held, owner=f"{HOST}:1:a", now=now)
    assert not may_take(held, owner="me", now=now, alive=alive)
    assert may_take(Lease(f"{HOST}:2:a", now + 10), owner="me", now=now, alive=alive)
    assert may_take(Lease("other:1:a", now - 0.1), owner="me", now=now, alive=alive)
    assert not may_take(Lease("garbled", now + 10), owner="me", now=now, alive=alive)
    assert local_holder("h:12:x", "h") == LocalHolder(12, None)
    assert local_holder("h:12:345:x", "h") == LocalHolder(12, 345)
    assert local_holder("h:12:0:x", "h") == LocalHolder(12, None)
    assert local_holder("h:0:x", "h") is None
    assert local_holder("h:pid:x", "h") is None
    assert local_holder("other:12:x", "h") is None


def test_a_live_local_holder_is_never_taken_whatever_the_clocks_say() -> None:
    expired_long_ago = Lease(owner=f"{HOST}:7:500:a", expires_at=10.0)
    running = {"alive": lambda pid: True, "started": lambda pid: 500}
    assert not may_take(expired_long_ago, owner="me", now=1e9, **running)  # type: ignore[arg-type]


def test_a_reused_pid_does_not_keep_a_dead_holders_lease() -> None:
    lease = Lease(owner=f"{HOST}:7:500:a", expires_at=1e12)
    reused = {"alive": lambda pid: True, "started": lambda pid: 999}
    assert may_take(lease, owner="me", now=0.0, **reused)  # type: ignore[arg-type]


def test_a_fresh_owner_names_this_process_and_its_start() -> None:
    holder = local_holder(new_owner(), HOST)
    assert holder is not None
    assert holder.pid == os.getpid()
    assert holder.start is not None
    assert not may_take(Lease(new_owner(), expires_at=0.0), owner="me", now=1e9)


async def test_a_lapsed_runner_can_write_nothing_after_a_take_over(journal_path: Path) -> None:
    clock = FakeClock()
    store = await SqliteStore.open(journal_path, clock=clock)
    try:
        await create(store, "r1", 2)
        _, records = await store.load_phones("r1")
        remote = "elsewhere.example:4242:a"
        lapsed = await store.acquire_lease("r1", owner=remote, ttl_s=30)
        clock.advance(31)
        taker = await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
        assert taker.generation == lapsed.generation + 1
        records[0].state = PhoneState.SUBMITTING
        with pytest.raises(LeaseLostError, match=re.escape(owner("b"))):
            await store.save("r1", records[:1], fence=lapsed, api_calls={"submit.ok": 3})
        with pytest.raises(LeaseLostError):
            await store.update_rollout("r1", status="succeeded", fence=lapsed)
        meta = await store.get_rollout("r1")
        assert meta.status == "running"
        assert meta.counts["submitting"] == 0
        assert meta.api_calls == {}
        await store.save("r1", records[:1], fence=taker)
        assert (await store.get_rollout("r1")).counts["submitting"] == 1
    finally:
        await store.close()


async def test_a_released_and_retaken_lease_fences_the_old_token(store: SqliteStore) -> None:
    await create(store, "r1", 1)
    first = await store.acquire_lease("r1", owner=owner("a"), ttl_s=30)
    assert await store.acquire_lease("r1", owner=owner("a"), ttl_s=30) == first
    await store.release_lease("r1", owner=owner("a"))
    await store.acquire_lease("r1", owner=owner("b"), ttl_s=30)
    with pytest.raises(LeaseLostError):
        await store.update_rollout("r1", reason="late", fence=first)


async def test_saves_add_api_calls_to_the_rollouts_totals(store: SqliteStore) -> None:
    await create(store, "r1", 2)
    _, records = await store.load_phones("r1")
    await store.save("r1", records[:1], api_calls={"submit.ok": 1, "query.ok": 0})
    await store.save("r1", [], api_calls={"submit.ok": 2, "query.throttled": 1})
    assert (await store.get_rollout("r1")).api_calls == {"submit.ok": 3, "query.throttled": 1}


# --- volume --------------------------------------------------------------------------------------


async def test_saving_a_hundred_thousand_phones_in_batches_of_a_hundred(store: SqliteStore) -> None:
    count, batch = 100_000, 100
    phones, records = fleet(count)

    started = time.perf_counter()
    await store.create_rollout(meta("big"), phones, records)
    created_s = time.perf_counter() - started

    loop_cpu_s = 0.0
    started = time.perf_counter()
    for first in range(0, count, batch):
        chunk = records[first : first + batch]
        for record in chunk:
            record.state = PhoneState.SUBMITTING
            record.batch_id = f"batch-{first}"
            record.attempts += 1
        cpu_before = time.thread_time()
        await store.save("big", chunk)
        loop_cpu_s += time.thread_time() - cpu_before
    saved_s = time.perf_counter() - started

    started = time.perf_counter()
    _, loaded = await store.load_phones("big")
    loaded_s = time.perf_counter() - started

    assert len(loaded) == count
    assert (await store.get_rollout("big")).counts["submitting"] == count
    assert (loaded[12_345].batch_id, loaded[12_345].attempts) == ("batch-12300", 1)
    saves = count // batch
    print(
        f"\ncreate_rollout {count:,} phones: {created_s:.2f} s"
        f"\nsave: {saves:,} x {batch}: {saved_s:.2f} s wall = {saved_s / count * 1e6:.1f} us/phone;"
        f" event-loop CPU {loop_cpu_s / saves * 1e6:.0f} us/save"
        f" = {loop_cpu_s / count * 1e6:.2f} us/phone"
        f"\nload_phones {count:,}: {loaded_s:.2f} s"
    )
