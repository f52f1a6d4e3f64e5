"""The journal's commands end to end: ``status``, ``report``, ``resume``, ``rerun-failed``, leases.

Every command runs as a real process against a simulator process and one SQLite journal; the tests
assert on exit codes, output, the journal and what the simulator received. Tests share one simulator
and take disjoint phones from it. Nothing waits a fixed time.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import socket
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.process_support import (
    BATCH_SUBMITTED,
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

SIM_PHONES = 600
PHONE_KEYS = ("phone_id", "state", "attempts", "job_id", "request_id", "error_code", "error_msg")
PROPERTIES: Mapping[str, Any] = {"sys.prop.writewifissid": "jc_{index:04d}"}
FAIL_FAST: Mapping[str, Any] = {"waves": ["100%"], "retry_codes": [], "batch_size": 20}
GOOD, GHOSTS = 60, 3


def ghost_ids(count: int, *, tag: int) -> list[str]:
    """32-hex phone IDs no simulated phone has: the simulator answers CPS.0005 for them."""
    return [f"{'e' * 24}{tag:04x}{n:04x}" for n in range(count)]


@dataclass
class Workspace:
    """A folder with settings for the shared simulator and one journal, and a command runner."""

    directory: Path
    settings: Path
    state: Path

    def run(
        self, *args: str | Path, timeout_s: float = RUN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with this workspace's ``--state`` (and ``--config`` where it runs)."""
        extra: tuple[str | Path, ...] = ("--state", self.state)
        if args[0] in ("rollout", "resume", "rerun-failed"):
            extra += ("--config", self.settings, "--no-progress")
        return run_cli(*args, *extra, cwd=self.directory, timeout_s=timeout_s)

    def plan(self, name: str, fleet: list[str], policy: Mapping[str, Any] = FAIL_FAST) -> Path:
        """Write a plan for ``fleet``."""
        path = self.directory / f"{name}.json"
        path.write_text(plan_json(name, fleet, properties=PROPERTIES, policy=policy), "utf-8")
        return path


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One well-behaved simulator process for the module, with short jobs."""
    log = tmp_path_factory.mktemp("sim") / "simulator.stderr"
    args = ("--phones", str(SIM_PHONES), "--seed", "31", "--set", "job_duration=fixed:0.05")
    with running_simulator(*args, stderr_path=log) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def pool(sim: Simulator) -> PhonePool:
    """The shared simulator's phones."""
    return PhonePool(sim.phone_ids())


@dataclass
class Finished:
    """A rollout that ended with failed phones (exit 1), and its workspace."""

    space: Workspace
    fleet: list[str]
    ghosts: list[str]
    report: dict[str, Any]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, sim: Simulator, pool: PhonePool) -> Finished:
    """``rollout --id done``: 60 real phones succeed, 3 made-up ones fail with CPS.0005."""
    directory = tmp_path_factory.mktemp("journal")
    space = Workspace(directory, write_settings(directory, sim.url), directory / "j.sqlite")
    ghosts = ghost_ids(GHOSTS, tag=1)
    fleet = [*pool.take(GOOD), *ghosts]
    done = space.run("rollout", space.plan("done", fleet), "--id", "done", "--report", "done.json")
    assert done.returncode == 1, done.stderr[-3000:]
    return Finished(space, fleet, ghosts, read_report(directory / "done.json"))


# -- status and report ------------------------------------------------------------------------------


def test_status_lists_every_rollout_on_one_line(finished: Finished) -> None:
    done = finished.space.run("status")

    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("done ")]
    assert len(lines) == 1, done.stdout
    assert "completed_with_failures" in lines[0]
    assert f"{GOOD}/{GOOD + GHOSTS} ok" in lines[0]
    assert f"{GHOSTS} failed" in lines[0]


def test_status_of_one_rollout_shows_counts_per_state(finished: Finished) -> None:
    done = finished.space.run("status", "done")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done ")
    states = re.search(r"states: (.*)", done.stdout)
    assert states is not None, done.stdout
    counts = dict(
        (name, int(n)) for name, n in (part.rsplit(" ", 1) for part in states.group(1).split(", "))
    )
    assert counts["succeeded"] == GOOD
    assert counts["failed"] == GHOSTS
    assert sum(counts.values()) == GOOD + GHOSTS
    assert "api calls: " in done.stdout


def test_status_json_has_the_counts(finished: Finished) -> None:
    done = finished.space.run("status", "done", "--json")

    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["rollout_id"] == "done"
    assert body["status"] == "completed_with_failures"
    assert body["counts"] == {
        "total": GOOD + GHOSTS,
        "succeeded": GOOD,
        "failed": GHOSTS,
        "cancelled": 0,
        "pending": 0,
    }
    assert body["states"]["succeeded"] == GOOD
    assert sum(body["states"].values()) == GOOD + GHOSTS
    assert body["api_calls"]["submit"] >= 1


def test_report_from_the_journal_equals_the_report_of_the_run(finished: Finished) -> None:
    done = finished.space.run("report", "done", "--format", "json")

    assert done.returncode == 0, done.stderr
    from_journal = json.loads(done.stdout)
    at_end = finished.report
    for key in ("rollout_id", "name", "status", "counts", "phones"):
        assert from_journal[key] == at_end[key], key
    assert [p["phone_id"] for p in from_journal["phones"]] == finished.fleet
    failed = {p["phone_id"]: p for p in from_journal["phones"] if p["state"] == "failed"}
    assert set(failed) == set(finished.ghosts)
    assert {p["error_code"] for p in failed.values()} == {"CPS.0005"}


def test_compact_folds_the_change_log_and_changes_no_read(finished: Finished) -> None:
    before = finished.space.run("report", "done", "--format", "json")
    done = finished.space.run("compact")

    assert done.returncode == 0, done.stderr
    assert re.search(r"^done: folded [1-9]\d* change log entries", done.stdout, re.M), done.stdout
    with contextlib.closing(sqlite3.connect(finished.space.state)) as conn:
        logged = conn.execute("SELECT count(*) FROM phone_changes WHERE rollout_id = 'done'")
        assert logged.fetchone()[0] == 0
    after = finished.space.run("report", "done", "--format", "json")
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert finished.space.run("compact", "done").stdout.strip() == (
        "done: folded 0 change log entries into its phones"
    )


def test_report_as_csv_to_a_file(finished: Finished) -> None:
    out = finished.space.directory / "done.csv"
    done = finished.space.run("report", "done", "--format", "csv", "-o", out)

    assert done.returncode == 0, done.stderr
    with out.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == PHONE_KEYS
        rows = list(reader)
    assert [row["phone_id"] for row in rows] == finished.fleet
    assert Counter(row["state"] for row in rows) == {"succeeded": GOOD, "failed": GHOSTS}


@pytest.mark.parametrize(
    "command",
    [("status", "nope"), ("report", "nope"), ("resume", "nope"), ("rerun-failed", "nope")],
    ids=lambda c: c[0],
)
def test_an_unknown_rollout_exits_3(
    finished: Finished, sim: Simulator, command: tuple[str, str]
) -> None:
    before = sim.requests()
    done = finished.space.run(*command)

    assert done.returncode == 3, done.stderr
    assert "no rollout 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
    assert sim.requests() == before


@pytest.mark.parametrize("command", [("status",), ("report", "done")], ids=["status", "report"])
def test_a_missing_journal_exits_3(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nowhere.sqlite"
    done = run_cli(*command, "--state", missing, cwd=tmp_path)

    assert done.returncode == 3, done.stderr
    assert f"no journal at {missing}" in done.stderr
    assert not missing.exists()


# -- resume and rerun-failed --------------------------------------------------------------------------


def test_resume_of_a_finished_rollout_points_at_rerun_failed(
    finished: Finished, sim: Simulator
) -> None:
    before = sim.requests()
    done = finished.space.run("resume", "done")

    assert done.returncode == 3, done.stderr
    assert "already ended" in done.stderr
    assert "rerun-failed" in done.stderr
    assert sim.requests() == before


def test_rerun_failed_runs_only_the_failed_phones(finished: Finished, sim: Simulator) -> None:
    space = finished.space
    before = sim.stats(phones=True)["submissions_per_phone"]
    done = space.run("rerun-failed", "done", "--id", "rr", "--report", "rr.json")

    assert done.returncode == 1, done.stderr[-3000:]
    report = read_report(space.directory / "rr.json")
    assert report["rollout_id"] == "rr"
    assert [p["phone_id"] for p in report["phones"]] == finished.ghosts
    assert {p["state"] for p in report["phones"]} == {"failed"}
    after = sim.stats(phones=True)["submissions_per_phone"]
    sent = {p: after.get(p, 0) - before.get(p, 0) for p in finished.fleet}
    assert sent == {p: 1 if p in finished.ghosts else 0 for p in finished.fleet}

    status = space.run("status")
    ids = [line.split()[0] for line in status.stdout.splitlines() if line and line[0] != " "]
    assert {"done", "rr"} <= set(ids), status.stdout


def test_rerun_failed_filters_by_error_code(finished: Finished) -> None:
    space = finished.space
    chosen = space.run("rerun-failed", "done", "--error-code", "CPS.0005", "--id", "rr-code")
    none = space.run("rerun-failed", "done", "--error-code", "CPS.0004", "--id", "rr-none")

    assert chosen.returncode == 1, chosen.stderr[-3000:]
    report = json.loads(space.run("report", "rr-code").stdout)
    assert [p["phone_id"] for p in report["phones"]] == finished.ghosts
    assert none.returncode == 3, none.stderr
    assert "no failed phones with CPS.0004" in none.stderr
    assert space.run("status", "rr-none").returncode == 3, "an empty rerun was recorded"


def test_rerun_failed_with_nothing_failed_exits_3(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    space = Workspace(tmp_path, write_settings(tmp_path, sim.url), tmp_path / "j.sqlite")
    assert space.run("rollout", space.plan("clean", pool.take(10)), "--id", "clean").returncode == 0
    before = sim.requests()

    done = space.run("rerun-failed", "clean", "--id", "again")

    assert done.returncode == 3, done.stderr
    assert "no failed phones" in done.stderr
    assert sim.requests() == before


def test_a_reused_id_exits_3_and_sends_nothing(finished: Finished, sim: Simulator) -> None:
    space = finished.space
    before = sim.requests()
    done = space.run("rollout", space.plan("again", finished.fleet[:5]), "--id", "done")

    assert done.returncode == 3, done.stderr
    assert "already exists" in done.stderr
    assert "'done'" in done.stderr
    assert sim.requests() == before


# -- one runner per rollout ---------------------------------------------------------------------------

LEASE_REFUSAL = re.compile(
    r"rollout busy is being run by (?P<host>[^:\s]+):(?P<pid>\d+):(?:\d+:)?\w+;"
    r" its lease expires at \S+"
)


def test_one_runner_per_rollout_and_a_killed_runner_is_taken_over_at_once(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    space = Workspace(tmp_path, write_settings(tmp_path, sim.url), tmp_path / "j.sqlite")
    fleet = pool.take(120)
    plan = space.plan("busy", fleet, {"waves": ["100%"], "batch_size": 5})
    with (tmp_path / "first.out").open("w", encoding="utf-8") as stdout:
        first, stderr = start_cli(
            "rollout",
            plan,
            "--id",
            "busy",
            "--state",
            space.state,
            "--config",
            space.settings,
            "--submit-rate",
            "2",
            "--no-progress",
            cwd=tmp_path,
            stdout=stdout,
        )
    try:
        stderr.wait_for(BATCH_SUBMITTED, timeout_s=RUN_TIMEOUT_S)
        second = space.run("resume", "busy")
        assert first.poll() is None, "the first runner ended too soon for this test"
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=RUN_TIMEOUT_S) == -signal.SIGKILL
    finally:
        stop_process(first)

    assert second.returncode == 3, second.stderr
    holder = LEASE_REFUSAL.search(second.stderr)
    assert holder is not None, second.stderr
    assert (holder["host"], int(holder["pid"])) == (socket.gethostname(), first.pid)

    third = space.run("resume", "busy", "--submit-rate", "50", "--report", "busy.json")

    assert third.returncode == 0, third.stderr[-3000:]
    report = read_report(tmp_path / "busy.json")
    assert [p["phone_id"] for p in report["phones"]] == fleet
    assert {p["state"] for p in report["phones"]} == {"succeeded"}


# -- the cloud out of reach --------------------------------------------------------------------------


def _refusing_url() -> str:
    """A loopback address where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_cloud_interrupts_the_run_and_resume_completes_it(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    fleet = pool.take(40)
    policy = {**FAIL_FAST, "backoff_base_s": 0.01, "backoff_cap_s": 0.05}
    down = Workspace(tmp_path, write_settings(tmp_path, _refusing_url()), tmp_path / "j.sqlite")
    cut_off = down.run("rollout", down.plan("down", fleet, policy), "--id", "down")

    assert cut_off.returncode == 4, cut_off.stderr[-3000:]
    assert "cannot be reached" in cut_off.stderr
    kept = json.loads(down.run("report", "down", "--format", "json").stdout)
    assert kept["status"] == "interrupted"
    assert {p["state"] for p in kept["phones"]} <= {"pending", "retry_wait"}  # not failed
    assert {p["attempts"] for p in kept["phones"]} == {0}

    write_settings(tmp_path, sim.url)
    resumed = down.run("resume", "down", "--report", "down.json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = read_report(tmp_path / "down.json")
    assert {p["state"] for p in report["phones"]} == {"succeeded"}
    assert {p["attempts"] for p in report["phones"]} == {1}


def test_a_stopped_runner_keeps_its_rollout_and_finishes_it_without_a_resend(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    space = Workspace(tmp_path, write_settings(tmp_path, sim.url), tmp_path / "j.sqlite")
    fleet = pool.take(60)
    plan = space.plan("paused", fleet, {"waves": ["100%"], "batch_size": 5})
    before = sim.stats(phones=True)["submissions_per_phone"]
    with (tmp_path / "first.out").open("w", encoding="utf-8") as stdout:
        first, stderr = start_cli(
            *("rollout", plan, "--id", "paused", "--state", space.state),
            *("--config", space.settings, "--submit-rate", "4", "--no-progress"),
            *("--report", "paused.json"),
            cwd=tmp_path,
            stdout=stdout,
        )
    try:
        stderr.wait_for(BATCH_SUBMITTED, timeout_s=RUN_TIMEOUT_S)
        first.send_signal(signal.SIGSTOP)
        second = space.run("resume", "paused")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=RUN_TIMEOUT_S) == 0
    finally:
        stop_process(first)

    assert second.returncode == 3, second.stderr
    # Refused: the stopped holder is alive. If it was stopped inside a journal write, it also
    # still holds SQLite's write lock, and the refusal is that the journal is locked.
    assert f":{first.pid}:" in second.stderr or "database is locked" in second.stderr
    report = read_report(tmp_path / "paused.json")
    assert {p["state"] for p in report["phones"]} == {"succeeded"}
    after = sim.stats(phones=True)["submissions_per_phone"]
    assert all(after.get(p, 0) - before.get(p, 0) == 1 for p in fleet)
