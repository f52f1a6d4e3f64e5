"""Crash safety: SIGKILLed rollouts resume without losing a phone, and a broken journal stops sending.

The crash test runs ``rollout`` as a real process against a simulator process, kills it with SIGKILL
at seeded random moments (counted in log lines, never in seconds), reads the journal after each
kill, resumes, kills again, and finally lets a ``resume`` run to its end. It then checks the journal's
promise (docs/architecture.md): every phone ends succeeded (holding exactly its properties) or failed with a
code, and the only phones sent more often than their attempts say are those whose answer a kill
lost (``submitting`` in the journal at the kill).

The journal tests check that a file which is not our journal, or cannot be written, stops a rollout
before anything is sent, and that a journal which fails mid-run stops the sending at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.cph import CphClient, StaticTokenAuth
from orchestrator.engine.options import (
    DEFAULT_MAX_QUERIES_IN_FLIGHT,
    DEFAULT_MAX_SUBMITS_IN_FLIGHT,
)
from orchestrator.engine.runner import RolloutEngine
from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.rollouts.execute import resume_rollout
from orchestrator.rollouts.journaled import create_rollout
from orchestrator.rollouts.outcome import ExitCode, exit_code_for
from orchestrator.rollouts.prepare import Overrides
from orchestrator.rollouts.report import write_result_report
from orchestrator.settings import CphSettings, RolloutSettings, Settings
from orchestrator.simulator.gateway import OPERATION_FAMILY
from orchestrator.store.base import RolloutMeta
from orchestrator.store.sqlite import SqliteStore
from tests.conftest import SimulatorFactory
from tests.e2e_support import fast_options, fast_profile, make_targets, start_simulator
from tests.process_support import (
    BATCH_SUBMITTED,
    PROJECT_ID,
    RUN_TIMEOUT_S,
    PhonePool,
    Simulator,
    plan_json,
    read_report,
    run_cli,
    running_simulator,
    start_cli,
    stop_process,
    write_settings,
)

UPDATE_OPERATION = "UpdateCloudPhoneProperty"
LIVE_STATES = {"pending", "submitting", "running", "retry_wait"}

# -- the crash test --------------------------------------------------------------------------------

CRASH_SEED = 20240611
CRASH_FLEET = 2400
KILLS = 4
"""The ``rollout`` is killed once, then ``resume`` three times; a last ``resume`` runs to the end."""
LINES_BEFORE_KILL = (3, 25)
"""Each run is killed after a seeded number of these progress lines (a full run writes ~270)."""
PROGRESS_LINE = re.compile(r'"event": *"(batch\.submitted|jobs\.finished)"')
CRASH_SIMULATOR = (
    "--phones",
    str(CRASH_FLEET),
    "--profile",
    "flaky",
    "--seed",
    "3",
    "--submit-rate",
    "15",
    "--set",
    "job_duration=uniform:0.1:0.4",
    # No 5xx and no dropped answers: then every submission the simulator counts is an attempt the
    # engine counts, unless a kill lost its answer. Late phones and failing jobs stay on.
    "--set",
    "transient_error_rate=0",
    "--set",
    "drop_after_apply_rate=0",
    # Slow answers keep batches in flight, so that kills catch some phones mid-request.
    "--set",
    "latency_spike_rate=0.5",
    "--set",
    "latency_spike=uniform:0.05:0.3",
)
CRASH_POLICY: Mapping[str, Any] = {
    "batch_size": 20,
    "waves": ["100%"],
    "max_attempts": 8,
    "backoff_base_s": 0.1,
    "backoff_slow_base_s": 0.2,
    "backoff_cap_s": 1,
}
CRASH_PROPERTIES: Mapping[str, Any] = {
    "sys.prop.writewifissid": "crash_{index:05d}",
    "persist.sys.locale": "en-US",
}


def crash_properties(index: int) -> dict[str, Any]:
    """What :data:`CRASH_PROPERTIES` renders to for the phone at ``index``."""
    return {"sys.prop.writewifissid": f"crash_{index:05d}", "persist.sys.locale": "en-US"}


@dataclass
class Kill:
    """One SIGKILL and what the journal held right after it."""

    command: str
    lines_read: int
    submitting: list[str]
    counts: Mapping[str, int]


async def _journal_after_kill(path: Path, rollout_id: str) -> tuple[RolloutMeta, list[str]]:
    store = await SqliteStore.open(path, read_only=True)
    try:
        meta = await store.get_rollout(rollout_id)
        submitting = await store.phones(rollout_id, state=PhoneState.SUBMITTING)
    finally:
        await store.close()
    return meta, [record.phone_id for record in submitting]


def kill_at_random_moment(
    command: Sequence[str | Path], *, cwd: Path, rng: random.Random, state: Path, rollout_id: str
) -> Kill:
    """Run ``command``, SIGKILL it after a seeded number of progress lines, reap it, read the journal."""
    wanted = rng.randint(*LINES_BEFORE_KILL)
    with (cwd / "stdout.txt").open("a", encoding="utf-8") as stdout:
        proc, stderr = start_cli(*command, cwd=cwd, stdout=stdout)
    try:
        seen = stderr.count_to(PROGRESS_LINE, wanted, timeout_s=RUN_TIMEOUT_S)
        assert seen == wanted, f"{command[0]} ended before its kill:\n{stderr.text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == -signal.SIGKILL
    finally:
        stop_process(proc)
    meta, submitting = asyncio.run(_journal_after_kill(state, rollout_id))
    return Kill(str(command[0]), wanted, submitting, meta.counts)


def test_sigkilled_rollout_resumes_without_losing_a_phone(tmp_path: Path) -> None:
    rng = random.Random(CRASH_SEED)
    with running_simulator(*CRASH_SIMULATOR, stderr_path=tmp_path / "sim.err") as sim:
        settings = write_settings(
            tmp_path,
            sim.url,
            first_poll_s=0.2,
            submit_rate_per_s=14.0,
            query_rate_per_s=30.0,
            progress_interval_s=1.0,
        )
        fleet = sim.phone_ids()
        assert len(fleet) == CRASH_FLEET
        calls_before_rollout = cloud_calls(sim.stats())  # the test's own ListCloudPhones
        plan = tmp_path / "plan.json"
        plan.write_text(
            plan_json("crash", fleet, properties=CRASH_PROPERTIES, policy=CRASH_POLICY),
            encoding="utf-8",
        )
        state = tmp_path / "journal.sqlite"
        common = ("--state", state, "--config", settings, "--no-progress")
        started_s = time.monotonic()

        kills: list[Kill] = []
        command: tuple[str | Path, ...] = ("rollout", plan, "--id", "crash", *common)
        for _ in range(KILLS):
            kills.append(
                kill_at_random_moment(
                    command, cwd=tmp_path, rng=rng, state=state, rollout_id="crash"
                )
            )
            command = ("resume", "crash", *common)
        final = run_cli(*command, "--report", "final.json", cwd=tmp_path)
        elapsed_s = time.monotonic() - started_s
        stats = sim.stats(phones=True)
        from_journal = run_cli(
            "report", "crash", "--state", state, "--format", "json", cwd=tmp_path
        )

    assert final.returncode in (0, 1), final.stderr[-3000:]
    assert from_journal.returncode == 0, from_journal.stderr
    report = read_report(tmp_path / "final.json")
    journal_report = json.loads(from_journal.stdout)
    assert journal_report["phones"] == report["phones"]
    assert journal_report["counts"] == report["counts"]
    assert report["status"] in ("succeeded", "completed_with_failures")

    assert_every_phone_accounted_for(report, fleet, stats["properties_per_phone"])
    extra = extra_submissions(report, stats["submissions_per_phone"], kills)
    assert stats["max_concurrent_requests_per_phone"] <= 1, stats["protocol_violations"][:5]
    assert stats["protocol_violation_count"] == 0, stats["protocol_violations"][:5]

    seen = cloud_calls(stats)
    unseen = {family: seen[family] - calls_before_rollout[family] for family in seen}
    for family, reported in ((f, report["api_calls"][f]) for f in ("submit", "query")):
        lost = unseen[family] - reported  # calls in flight at a kill were never journaled
        assert 0 <= lost <= KILLS * MAX_REQUESTS_IN_FLIGHT, (family, unseen, report["api_calls"])

    in_flight = [len(kill.submitting) for kill in kills]
    print(
        f"\ncrash test: {len(fleet)} phones, {len(kills)} SIGKILLs after {[k.lines_read for k in kills]}"
        f" progress lines; in flight (submitting) at each kill: {in_flight};"
        f" extra submissions {extra} <= {sum(in_flight)};"
        f" counts {report['counts']}; {elapsed_s:.1f} s"
    )


MAX_REQUESTS_IN_FLIGHT = DEFAULT_MAX_SUBMITS_IN_FLIGHT + DEFAULT_MAX_QUERIES_IN_FLIGHT
"""Requests a runner may have sent but not yet journaled when it is killed."""


def cloud_calls(stats: Mapping[str, Any]) -> dict[str, int]:
    """Requests the simulated cloud received, per API family, as the report counts them."""
    calls = {"submit": 0, "query": 0}
    for operation, count in stats["requests"].items():
        family = OPERATION_FAMILY.get(operation)
        if family is not None:
            calls[str(family)] += count
    return calls


def assert_every_phone_accounted_for(
    report: Mapping[str, Any], fleet: Sequence[str], held: Mapping[str, Mapping[str, Any]]
) -> None:
    """Every phone once, in a final state; succeeded ones hold exactly the plan's properties."""
    phones = report["phones"]
    assert [phone["phone_id"] for phone in phones] == list(fleet), "a phone is lost or doubled"
    states = Counter(phone["state"] for phone in phones)
    assert not LIVE_STATES & set(states), states
    assert set(states) <= {"succeeded", "failed"}, states
    counts = report["counts"]
    assert counts["total"] == len(fleet)
    assert counts["pending"] == 0
    assert counts["succeeded"] + counts["failed"] == len(fleet), counts
    assert (counts["succeeded"], counts["failed"]) == (states["succeeded"], states["failed"])
    for index, phone in enumerate(phones):
        if phone["state"] == "succeeded":
            assert held.get(phone["phone_id"]) == crash_properties(index), phone
        else:
            assert phone["error_code"], phone


def extra_submissions(
    report: Mapping[str, Any], submissions: Mapping[str, int], kills: Sequence[Kill]
) -> int:
    """Submissions beyond the journal's attempts; only a phone caught mid-request may have one."""
    caught = Counter(phone_id for kill in kills for phone_id in kill.submitting)
    total = 0
    for phone in report["phones"]:
        phone_id = phone["phone_id"]
        extra = submissions.get(phone_id, 0) - phone["attempts"]
        assert 0 <= extra <= caught[phone_id], (phone, submissions.get(phone_id), caught[phone_id])
        total += extra
    assert total <= sum(caught.values())
    return total


# -- journals that are not ours or cannot be written -----------------------------------------------

QUIET_PHONES = 1000
QUIET_SIMULATOR = (
    "--phones",
    str(QUIET_PHONES),
    "--seed",
    "21",
    "--set",
    "job_duration=fixed:0.05",
)
WIFI: Mapping[str, Any] = {"sys.prop.writewifissid": "jr_{index:04d}"}


@pytest.fixture(scope="module")
def quiet_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """A well-behaved simulator process shared by this module's journal tests."""
    log = tmp_path_factory.mktemp("quiet-sim") / "simulator.stderr"
    with running_simulator(*QUIET_SIMULATOR, stderr_path=log) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def quiet_pool(quiet_sim: Simulator) -> PhonePool:
    """The shared simulator's phones."""
    return PhonePool(quiet_sim.phone_ids())


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(5).randbytes(16384))


def _foreign_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()


def _below_a_file(path: Path) -> None:
    path.parent.write_text("a regular file, not a folder\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("make", "where", "reason"),
    [
        (_random_bytes, "journal.sqlite", "not a readable cph-orchestrator journal"),
        (_foreign_sqlite, "journal.sqlite", "tables: invoices"),
        (_below_a_file, "afile/journal.sqlite", "cannot be opened"),
    ],
    ids=["corrupt", "foreign", "below-a-file"],
)
def test_a_journal_that_is_not_ours_or_cannot_be_written_stops_before_sending(
    tmp_path: Path,
    quiet_sim: Simulator,
    quiet_pool: PhonePool,
    make: Callable[[Path], None],
    where: str,
    reason: str,
) -> None:
    state = tmp_path / where
    make(state)
    before = _digest(state)
    settings = write_settings(tmp_path, quiet_sim.url)
    plan = tmp_path / "plan.json"
    plan.write_text(plan_json("bad-journal", quiet_pool.take(20), properties=WIFI), "utf-8")
    requests_before = quiet_sim.requests()

    done = run_cli(
        "rollout", plan, "--state", state, "--config", settings, "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 3, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: "), done.stderr
    assert str(state) in message
    assert reason in message
    assert "Traceback" not in done.stderr
    assert quiet_sim.requests() == requests_before, "a request was sent"
    assert _digest(state) == before, "the file was changed"
    assert not state.with_name(state.name + "-wal").exists()


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class BreakingJournal:
    """A journal on a real :class:`SqliteStore` that SQLite itself stops writing after some saves.

    At save number ``break_at`` it sets ``PRAGMA query_only`` on the store's connection (through the
    store's ``_call`` test seam), so that this save and every later one fail inside SQLite with
    ``SQLITE_READONLY``, as a journal turned read-only under a running rollout would. It counts the
    intents (phones saved as ``submitting``) that did reach the file.
    """

    store: SqliteStore
    rollout_id: str
    break_at: int
    saves: int = 0
    failed_saves: int = 0
    intents: Counter[str] = field(default_factory=Counter)
    submissions_at_break: int | None = None
    sim_submissions: Callable[[], int] = lambda: 0

    async def save(self, records: Sequence[PhoneRecord]) -> None:
        """Write through the store; break the store first when the time has come."""
        self.saves += 1
        if self.saves == self.break_at:
            self.submissions_at_break = self.sim_submissions()
            await self.store._call(_stop_writing)  # a test seam: run on the store's thread
        sending = [r.phone_id for r in records if r.state is PhoneState.SUBMITTING]
        try:
            await self.store.save(self.rollout_id, records)
        except Exception:
            self.failed_saves += 1
            raise
        self.intents.update(sending)


def _stop_writing(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")


async def test_a_journal_that_fails_mid_run_stops_sending_and_resume_completes(
    tmp_path: Path, simulator: SimulatorFactory
) -> None:
    sim = await start_simulator(simulator, phones=400, profile=fast_profile("none"))
    fleet = sim.state.phone_ids()[:400]
    targets = make_targets(fleet)
    options = fast_options(batch_size=10, submit_rate_per_s=40.0)
    path = tmp_path / "journal.sqlite"
    store = await SqliteStore.open(path)
    try:
        records = await create_rollout(
            store,
            rollout_id="broken",
            name="broken journal",
            targets=[(t.index, t.phone_id, t.update) for t in targets],
            options=options,
            plan_source="test",
        )
        journal = BreakingJournal(
            store,
            "broken",
            break_at=30,
            sim_submissions=lambda: sum(sim.state.counters.submissions.values()),
        )
        async with CphClient(
            endpoint=sim.url, project_id=PROJECT_ID, auth=StaticTokenAuth(SecretStr("t"))
        ) as client:
            engine = RolloutEngine(
                rollout_id="broken",
                name="broken journal",
                targets=targets,
                client=client,
                options=options,
                journal=journal,
                records=records,
            )
            result = await engine.run()
    finally:
        await store.close()
    submissions = dict(sim.state.counters.submissions)

    assert result.fatal
    assert result.reason is not None
    assert "journal" in result.reason
    assert str(path) in result.reason
    assert journal.failed_saves >= 1
    assert sum(journal.intents.values()) > 0, "the journal broke before anything was sent"
    assert sum(submissions.values()) < len(fleet), "the journal broke too late to matter"
    # Nothing was sent whose intent did not reach the file.
    for phone_id, sent in submissions.items():
        assert sent <= journal.intents[phone_id], (phone_id, sent, journal.intents[phone_id])

    # What the file says accounts for every submission the cloud saw.
    on_disk = await _records(path, "broken")
    for phone_id, sent in submissions.items():
        record = on_disk[phone_id]
        in_flight = 1 if record.state is PhoneState.SUBMITTING else 0
        assert sent <= record.attempts + in_flight, (record, sent)
    caught = {p for p, r in on_disk.items() if r.state is PhoneState.SUBMITTING}

    settings = _settings_for(sim.url, tmp_path)
    resumed = await resume_rollout(
        rollout_id="broken", settings=settings, state_path=path, overrides=Overrides()
    )
    write_result_report(resumed, tmp_path / "resumed.json", settings)

    assert exit_code_for(resumed) is ExitCode.SUCCEEDED
    report = read_report(tmp_path / "resumed.json")
    assert [p["phone_id"] for p in report["phones"]] == fleet
    assert {p["state"] for p in report["phones"]} == {"succeeded"}
    final = dict(sim.state.counters.submissions)
    for target, phone in zip(targets, report["phones"], strict=True):
        assert sim.state.properties(target.phone_id) == target.properties
        extra = final.get(target.phone_id, 0) - phone["attempts"]
        assert 0 <= extra <= (1 if target.phone_id in caught else 0), phone
    print(
        f"\njournal broken at save {journal.break_at}: {sum(submissions.values())} phone"
        f" submissions before the stop, {len(caught)} caught in flight; resume completed"
    )


async def _records(path: Path, rollout_id: str) -> dict[str, PhoneRecord]:
    store = await SqliteStore.open(path, read_only=True)
    try:
        _, records = await store.load_phones(rollout_id)
    finally:
        await store.close()
    return {record.phone_id: record for record in records}


def _settings_for(url: str, directory: Path) -> Settings:
    return Settings(
        cph=CphSettings(
            endpoint=url, project_id=PROJECT_ID, auth="token", auth_token=SecretStr("t")
        ),
        rollout=RolloutSettings(runs_dir=str(directory / "runs")),
    )


JOURNAL_FAILED = re.compile(r'"event": *"journal\.failed"')


@dataclass
class LockedRun:
    """A CLI rollout whose journal another process locked for writing mid-run, then let go."""

    code: int
    stderr: str
    submits_at_failure: int
    submits_after_exit: int
    fleet: list[str]
    state: Path
    settings: Path
    directory: Path


@pytest.fixture(scope="module")
def locked_run(
    tmp_path_factory: pytest.TempPathFactory, quiet_sim: Simulator, quiet_pool: PhonePool
) -> LockedRun:
    """Hold the journal's write lock from this process until the rollout reports the journal failed.

    The rollout's next write waits SQLite's busy timeout and fails (``SQLITE_BUSY``), an honest
    way, even as root, to make a journal unwritable while it runs; the lock is released as soon as
    ``journal.failed`` is logged, as a transient outage would end.
    """
    directory = tmp_path_factory.mktemp("locked")
    fleet = quiet_pool.take(600)
    settings = write_settings(directory, quiet_sim.url, submit_rate_per_s=20.0)
    plan = directory / "plan.json"
    policy = {"batch_size": 10, "waves": ["100%"]}
    plan.write_text(plan_json("locked", fleet, properties=WIFI, policy=policy), "utf-8")
    state = directory / "journal.sqlite"
    with (directory / "stdout.txt").open("w", encoding="utf-8") as stdout:
        proc, stderr = start_cli(
            "rollout",
            plan,
            "--id",
            "locked",
            "--state",
            state,
            "--config",
            settings,
            "--no-progress",
            cwd=directory,
            stdout=stdout,
        )
    try:
        stderr.count_to(BATCH_SUBMITTED, 5, timeout_s=RUN_TIMEOUT_S)
        with contextlib.closing(sqlite3.connect(state, isolation_level=None)) as lock:
            lock.execute("BEGIN IMMEDIATE")
            stderr.wait_for(JOURNAL_FAILED, timeout_s=RUN_TIMEOUT_S)
            at_failure = quiet_sim.requests(UPDATE_OPERATION)
            lock.execute("ROLLBACK")
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        stop_process(proc)
    return LockedRun(
        code=code,
        stderr="".join(stderr.join()),
        submits_at_failure=at_failure,
        submits_after_exit=quiet_sim.requests(UPDATE_OPERATION),
        fleet=fleet,
        state=state,
        settings=settings,
        directory=directory,
    )


def test_a_journal_failure_mid_run_stops_sending_at_once(locked_run: LockedRun) -> None:
    print(
        f"\njournal locked mid-run: exit {locked_run.code}; batch requests when journal.failed"
        f" was logged {locked_run.submits_at_failure}, at exit {locked_run.submits_after_exit}"
    )
    assert locked_run.code == 4, locked_run.stderr[-3000:]
    sent_late = locked_run.submits_after_exit - locked_run.submits_at_failure
    assert sent_late == 0, (
        f"{sent_late} batch request(s) sent after journal.failed said nothing more is sent"
    )


def test_resume_completes_a_rollout_stopped_by_a_journal_failure(locked_run: LockedRun) -> None:
    done = run_cli(
        "resume",
        "locked",
        "--state",
        locked_run.state,
        "--config",
        locked_run.settings,
        "--report",
        "resumed.json",
        "--no-progress",
        cwd=locked_run.directory,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    report = read_report(locked_run.directory / "resumed.json")
    assert [p["phone_id"] for p in report["phones"]] == locked_run.fleet
    assert {p["state"] for p in report["phones"]} == {"succeeded"}
