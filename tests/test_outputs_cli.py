"""A file the run could not write stops it before its first request: real processes, one simulator.

For every way a report, log, run directory, journal or rollout ID can be unusable, ``rollout``,
``resume`` and ``rerun-failed`` must exit 3 with one line naming the flag (or setting) and the
path, print no traceback, send the simulator no submit for their phones, and leave the journal as
it was. The journal's rollouts to resume and rerun are recorded beforehand through the rollouts
layer, each with its own phones, so that each case's phones tell what that case sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.states import PhoneState
from orchestrator.plan import load_plan_data
from orchestrator.rollouts.journaled import create_rollout, open_store
from orchestrator.rollouts.prepare import engine_options
from orchestrator.rollouts.report import read_journal_report
from orchestrator.rollouts.status import read_status_rows
from orchestrator.settings import RolloutSettings
from tests.process_support import (
    PhonePool,
    Simulator,
    plan_json,
    run_cli,
    running_simulator,
    write_settings,
)

SIM_PHONES = 200
PHONES_PER_CASE = 2
PARALLEL_RUNS = 3
PROPERTIES: Mapping[str, Any] = {"sys.prop.writewifissid": "out_{index:04d}"}
LONG_ID = "a" * 300
UNWRITABLE = Path("/proc/cph-nope")
"""A place no process can create files in, whoever runs the tests (root included)."""


@dataclass(frozen=True)
class Case:
    """One unusable output: the extra arguments, and what the one error line must name."""

    args: tuple[str, ...]
    names: tuple[str, ...]
    runs_dir: Path | None = None
    """Settings' ``rollout.runs_dir`` for this case (default: a writable one)."""
    takes_id: bool = False


CASES: dict[str, Case] = {
    "report-suffix": Case(("--report", "out.txt"), ("--report", "out.txt", ".json")),
    "report-in-proc": Case(
        ("--report", str(UNWRITABLE / "x.json")), ("--report", str(UNWRITABLE / "x.json"))
    ),
    "report-is-a-directory": Case(("--report", "x.json"), ("--report", "x.json", "directory")),
    "long-id": Case(("--id", LONG_ID), ("--id", "300 characters", "1-64"), takes_id=True),
    "escaping-id": Case(("--id", "../../escape"), ("--id", "../../escape"), takes_id=True),
    "id-with-a-slash": Case(("--id", "a/b"), ("--id", "'a/b'"), takes_id=True),
    "unwritable-runs-dir": Case((), ("rollout.runs_dir", str(UNWRITABLE)), runs_dir=UNWRITABLE),
    "log-file-in-proc": Case(
        ("--log-file", str(UNWRITABLE / "run.log")), ("--log-file", str(UNWRITABLE / "run.log"))
    ),
    "journal-is-a-directory": Case(("--state", "journal.d"), ("--state", "journal.d", "directory")),
}


@dataclass
class Run:
    """One command of one case, the phones it could have sent, and what it did."""

    command: str
    case: str
    phones: list[str]
    rollout_id: str = ""
    done: subprocess.CompletedProcess[str] | None = None


@dataclass
class Runs:
    """Every run, with the simulator's submissions and the journal around them."""

    runs: list[Run]
    submissions: dict[str, int] = field(default_factory=dict)
    journal_before: dict[str, Any] = field(default_factory=dict)
    journal_after: dict[str, Any] = field(default_factory=dict)

    def of(self, command: str, case: str) -> Run:
        """The run of ``command`` for ``case``."""
        return next(r for r in self.runs if (r.command, r.case) == (command, case))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One simulator process for the module, with short jobs."""
    log = tmp_path_factory.mktemp("sim") / "simulator.stderr"
    args = ("--phones", str(SIM_PHONES), "--seed", "41", "--set", "job_duration=fixed:0.02")
    with running_simulator(*args, stderr_path=log) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def pool(sim: Simulator) -> PhonePool:
    """The shared simulator's phones."""
    return PhonePool(sim.phone_ids())


def ghost_ids(count: int, *, tag: int) -> list[str]:
    """32-hex phone IDs no simulated phone has (a rerun would still submit them)."""
    return [f"{'d' * 24}{tag:04x}{n:04x}" for n in range(count)]


def _plan_data(name: str, phones: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "fleet": {"phones": list(phones)},
        "properties": dict(PROPERTIES),
        "policy": {"waves": ["100%"]},
    }


async def _record(path: Path, rollout_id: str, phones: Sequence[str], *, failed: bool) -> None:
    """A rollout as a crashed runner leaves it (every phone pending), or with every phone failed."""
    loaded = load_plan_data(_plan_data(rollout_id, phones))
    store = await open_store(path)
    try:
        records = await create_rollout(
            store,
            rollout_id=rollout_id,
            name=rollout_id,
            targets=[(t.index, t.phone_id, t.update) for t in loaded.targets(())],
            options=engine_options(loaded.plan.policy, RolloutSettings()),
            plan_source="test",
        )
        if failed:
            failures = [
                dataclasses.replace(r, state=PhoneState.FAILED, attempts=1, error_code="CPS.0005")
                for r in records
            ]
            await store.save(rollout_id, failures)
    finally:
        await store.close()


async def _journal_view(path: Path) -> dict[str, Any]:
    """Every rollout's status row and report, by ID."""
    rows = await read_status_rows(path, None)
    return {
        row["rollout_id"]: (row, await read_journal_report(path, row["rollout_id"])) for row in rows
    }


def _argv(run: Run, directory: Path) -> list[str | Path]:
    case = CASES[run.case]
    config = directory / (run.case if case.runs_dir else "") / "settings.toml"
    common: list[str | Path] = [
        "--config",
        config,
        "--no-progress",
        "--state",
        directory / "j.sqlite",
    ]
    if run.command == "rollout":
        plan = directory / f"{run.case}.json"
        plan.write_text(plan_json(f"out-{run.case}", run.phones, properties=PROPERTIES), "utf-8")
        return ["rollout", plan, *common, *case.args]
    return [run.command, run.rollout_id, *common, *case.args]


def _prepare(directory: Path, sim_url: str) -> None:
    write_settings(directory, sim_url)
    (directory / "x.json").mkdir()
    (directory / "journal.d").mkdir()
    for name, case in CASES.items():
        if case.runs_dir is not None:
            (directory / name).mkdir()
            write_settings(directory / name, sim_url, runs_dir=str(case.runs_dir))


def _planned_runs(pool: PhonePool) -> list[Run]:
    runs = [Run("rollout", name, pool.take(PHONES_PER_CASE)) for name in CASES]
    runs += [
        Run("resume", name, pool.take(PHONES_PER_CASE), f"crashed-{n}")
        for n, (name, case) in enumerate(CASES.items())
        if not case.takes_id
    ]
    runs += [
        Run("rerun-failed", name, ghost_ids(PHONES_PER_CASE, tag=n), f"failed-{n}")
        for n, name in enumerate(CASES)
    ]
    return runs


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, sim: Simulator, pool: PhonePool) -> Runs:
    """Every case through ``rollout``, ``resume`` and ``rerun-failed``, a few at a time."""
    directory = tmp_path_factory.mktemp("outputs")
    _prepare(directory, sim.url)
    runs = Runs(_planned_runs(pool))
    journal = directory / "j.sqlite"
    for run in runs.runs:
        if run.command != "rollout":
            failed = run.command == "rerun-failed"
            asyncio.run(_record(journal, run.rollout_id, run.phones, failed=failed))
    runs.journal_before = asyncio.run(_journal_view(journal))
    before = sim.stats(phones=True)["submissions_per_phone"]

    def run_one(run: Run) -> None:
        run.done = run_cli(*_argv(run, directory), cwd=directory)

    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as workers:
        list(workers.map(run_one, runs.runs))
    after = sim.stats(phones=True)["submissions_per_phone"]
    runs.submissions = {p: after.get(p, 0) - before.get(p, 0) for p in after}
    runs.journal_after = asyncio.run(_journal_view(journal))
    return runs


def _assert_refused(run: Run, runs: Runs) -> None:
    done = run.done
    assert done is not None
    assert done.returncode == 3, (done.args, done.stdout, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines
    for part in CASES[run.case].names:
        assert part in lines[0], (part, lines[0])
    sent = {phone: runs.submissions.get(phone, 0) for phone in run.phones}
    assert sent == dict.fromkeys(run.phones, 0)


@pytest.mark.parametrize("case", list(CASES))
def test_rollout_refuses_an_unwritable_output_before_sending(case: str, outcomes: Runs) -> None:
    run = outcomes.of("rollout", case)
    _assert_refused(run, outcomes)
    names = {row["name"] for row, _ in outcomes.journal_after.values()}
    assert f"out-{case}" not in names
    assert outcomes.journal_after.keys() == outcomes.journal_before.keys()


@pytest.mark.parametrize("case", [name for name, case in CASES.items() if not case.takes_id])
def test_resume_refuses_an_unwritable_output_and_leaves_the_rollout(
    case: str, outcomes: Runs
) -> None:
    run = outcomes.of("resume", case)
    _assert_refused(run, outcomes)
    assert outcomes.journal_after[run.rollout_id] == outcomes.journal_before[run.rollout_id]


@pytest.mark.parametrize("case", list(CASES))
def test_rerun_failed_refuses_an_unwritable_output_before_recording(
    case: str, outcomes: Runs
) -> None:
    run = outcomes.of("rerun-failed", case)
    _assert_refused(run, outcomes)
    assert outcomes.journal_after.keys() == outcomes.journal_before.keys()
    assert outcomes.journal_after[run.rollout_id] == outcomes.journal_before[run.rollout_id]


# -- the other commands that write files ------------------------------------------------------------


def _submitted(sim: Simulator, phones: Sequence[str]) -> dict[str, int]:
    held = sim.stats(phones=True)["submissions_per_phone"]
    return {phone: held.get(phone, 0) for phone in phones}


def test_dry_run_lists_every_output_that_would_fail(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    settings = write_settings(tmp_path, sim.url)
    fleet = pool.take(PHONES_PER_CASE)
    plan = tmp_path / "plan.json"
    plan.write_text(plan_json("dry", fleet, properties=PROPERTIES), "utf-8")
    log_file = UNWRITABLE / "run.log"

    done = run_cli(
        "rollout",
        plan,
        "--config",
        settings,
        "--dry-run",
        "--report",
        "out.txt",
        "--log-file",
        log_file,
        cwd=tmp_path,
    )

    assert done.returncode == 3, done.stderr
    assert f"{len(fleet)} phones" in done.stdout
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2, done.stderr
    assert errors[0].startswith("error: --report out.txt")
    assert errors[1].startswith(f"error: --log-file {log_file}")
    assert _submitted(sim, fleet) == dict.fromkeys(fleet, 0)


def test_resume_of_an_id_that_is_no_file_name_asks_for_report(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    settings = write_settings(tmp_path, sim.url)
    journal = tmp_path / "j.sqlite"
    fleet = pool.take(PHONES_PER_CASE)
    asyncio.run(_record(journal, "../old", fleet, failed=False))
    before = asyncio.run(_journal_view(journal))

    done = run_cli(
        "resume", "../old", "--config", settings, "--state", journal, "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 3, done.stderr[-3000:]
    assert done.stderr.startswith("error: rollout '../old' cannot name files in")
    assert "--report" in done.stderr
    assert "Traceback" not in done.stderr
    assert _submitted(sim, fleet) == dict.fromkeys(fleet, 0)
    assert asyncio.run(_journal_view(journal)) == before
    assert not (tmp_path / "old.report.json").exists()


def test_report_to_a_directory_exits_3_naming_output(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    asyncio.run(_record(journal, "kept", ghost_ids(1, tag=0xFFF), failed=True))
    (tmp_path / "r.json").mkdir()

    done = run_cli("report", "kept", "--state", journal, "-o", "r.json", cwd=tmp_path)

    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --output r.json: r.json is a directory"]


def test_demo_with_an_unwritable_runs_dir_exits_3_before_starting(tmp_path: Path) -> None:
    runs_dir = UNWRITABLE / "demo"
    done = run_cli("demo", "--runs-dir", runs_dir, "--phones", "10", cwd=tmp_path)

    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: --runs-dir {runs_dir}: ")
    assert "simulator" not in done.stdout + done.stderr
