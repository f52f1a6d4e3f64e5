"""The ``cph-orchestrator`` command end to end: real processes against a simulator in another process.

Every test runs the command as a subprocess (``python -m orchestrator …`` or the console script)
against a simulator started with ``python -m orchestrator simulator --port 0``, and asserts on the
exit code, the report, the output and on what the simulator says it received (``/_sim/stats``), never
on the orchestrator's own account alone. Tests share one simulator and take disjoint phones from it,
so they do not interfere; nothing waits a fixed time: readiness and progress are read from the
processes' output.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator import __version__
from tests.process_support import (
    LineReader,
    PhonePool,
    Simulator,
    clean_env,
    json_lines,
    read_report,
    run_cli,
    running_simulator,
    stop_process,
    write_settings,
)

TOKEN = "sim-token"
PROJECT_ID = "proj123"
SIM_PHONES = 1000
FAST_JOBS = "job_duration=uniform:0.02:0.1"
RUN_TIMEOUT_S = 60.0
LIST_PAGE = 200

REPORT_KEYS = {"rollout_id", "name", "status", "counts", "api_calls", "phones"}
COUNT_KEYS = {"total", "succeeded", "failed", "cancelled", "pending"}
API_CALL_KEYS = {"submit", "query", "throttled"}
PHONE_KEYS = ("phone_id", "state", "attempts", "job_id", "request_id", "error_code", "error_msg")
TERMINAL_STATES = {"succeeded", "failed", "cancelled"}

UPDATE_OPERATION = "UpdateCloudPhoneProperty"


# -- processes -------------------------------------------------------------------------------------


# -- plans, settings and reports -------------------------------------------------------------------


def plan_yaml(
    name: str,
    phone_ids: Sequence[str],
    *,
    policy: Mapping[str, Any] | None = None,
    properties: Mapping[str, Any] | None = None,
) -> str:
    """A plan listing ``phone_ids`` (quoted, so YAML never reads one as a number)."""
    props = properties if properties is not None else WIFI_PROPERTIES
    return json.dumps(
        {
            "name": name,
            "fleet": {"phones": list(phone_ids)},
            "properties": dict(props),
            "policy": dict(policy or {"waves": ["100%"]}),
        },
        indent=1,
    )


WIFI_PROPERTIES: Mapping[str, Any] = {
    "sys.prop.writewifissid": "cli_{index:04d}",
    "persist.sys.locale": "en-US",
    "ro.install.auto": 1,
}


def wifi_properties(index: int) -> dict[str, Any]:
    """What :data:`WIFI_PROPERTIES` renders to for the phone at ``index`` in fleet order."""
    return {
        "sys.prop.writewifissid": f"cli_{index:04d}",
        "persist.sys.locale": "en-US",
        "ro.install.auto": 1,
    }


def write_plan(directory: Path, text: str, name: str = "plan.yaml") -> Path:
    """Write a plan file (YAML; JSON text is YAML too)."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def state_counts(report: Mapping[str, Any]) -> Counter[str]:
    """How many phones of the report are in each state."""
    return Counter(phone["state"] for phone in report["phones"])


def assert_counts_add_up(report: Mapping[str, Any], fleet: Sequence[str]) -> None:
    """Every phone once, in fleet order; the counts match the phone list and sum to the fleet."""
    assert [phone["phone_id"] for phone in report["phones"]] == list(fleet)
    counts = report["counts"]
    by_state = state_counts(report)
    assert counts["total"] == len(fleet)
    for state in ("succeeded", "failed", "cancelled"):
        assert counts[state] == by_state[state], (state, counts, by_state)
    assert sum(counts[key] for key in COUNT_KEYS - {"total"}) == counts["total"]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One simulator for the module: ``none`` profile, short jobs, token auth."""
    log = tmp_path_factory.mktemp("sim") / "simulator.stderr"
    args = ("--phones", str(SIM_PHONES), "--seed", "11", "--set", FAST_JOBS)
    with running_simulator(*args, stderr_path=log) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def pool(sim: Simulator) -> PhonePool:
    """The shared simulator's phones."""
    ids = sim.phone_ids()
    assert len(ids) == SIM_PHONES
    return PhonePool(ids)


@pytest.fixture
def settings(tmp_path: Path, sim: Simulator) -> Path:
    """Settings pointing at the shared simulator."""
    return write_settings(tmp_path, sim.url, progress_interval_s=0.05)


# -- 1. a successful rollout -----------------------------------------------------------------------


def test_rollout_succeeds_and_reports_every_phone(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    fleet = pool.take(200)
    policy = {"batch_size": 50, "waves": [20, "100%"]}
    plan = write_plan(tmp_path, plan_yaml("cli-ok", fleet, policy=policy))

    done = run_cli(
        "rollout",
        plan,
        "--config",
        settings,
        "--report",
        "r.json",
        "--id",
        "my-rollout",
        "--no-progress",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    report = read_report(tmp_path / "r.json")
    assert report.keys() >= REPORT_KEYS
    assert report["rollout_id"] == "my-rollout"
    assert report["name"] == "cli-ok"
    assert report["status"] == "succeeded"
    assert set(report["counts"]) == COUNT_KEYS
    assert set(report["api_calls"]) == API_CALL_KEYS
    assert report["counts"] == {
        "total": 200,
        "succeeded": 200,
        "failed": 0,
        "cancelled": 0,
        "pending": 0,
    }
    assert report["api_calls"]["submit"] >= 200 // 50
    assert_counts_add_up(report, fleet)
    for phone in report["phones"]:
        assert tuple(phone) == PHONE_KEYS
        assert phone["state"] == "succeeded"
        assert phone["attempts"] == 1
        assert phone["job_id"]
        assert phone["request_id"]
        assert phone["error_code"] is None
        assert phone["error_msg"] is None

    held = sim.stats(phones=True)["properties_per_phone"]
    for index, phone_id in enumerate(fleet):
        assert held.get(phone_id) == wifi_properties(index), phone_id


def test_rollout_writes_a_csv_report_for_a_csv_fleet(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    fleet = pool.take(60)
    rows = ["phone_id,persist.sys.locale"]
    rows += [f"{pid},{'de-DE' if i % 2 else ''}" for i, pid in enumerate(fleet)]
    (tmp_path / "fleet.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    plan = write_plan(
        tmp_path,
        "name: cli-csv\nfleet:\n  file: fleet.csv\nproperties:\n"
        '  sys.prop.writewifissid: "cli_{index:04d}"\n  persist.sys.locale: en-US\n'
        "  ro.install.auto: 1\npolicy:\n  batch_size: 25\n",
    )

    done = run_cli(
        "rollout", plan, "--config", settings, "--report", "r.csv", "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == PHONE_KEYS
        table = list(reader)
    assert [row["phone_id"] for row in table] == fleet
    assert {row["state"] for row in table} == {"succeeded"}
    assert all(row["job_id"] and row["request_id"] and row["attempts"] == "1" for row in table)
    held = sim.stats(phones=True)["properties_per_phone"]
    for index, phone_id in enumerate(fleet):
        expected = wifi_properties(index)
        if index % 2:
            expected["persist.sys.locale"] = "de-DE"
        assert held.get(phone_id) == expected, phone_id


# -- 2. and 3. failed phones, aborted rollouts ------------------------------------------------------


def made_up_ids(count: int, *, tag: int) -> list[str]:
    """32-hex phone IDs no simulated phone has (the simulator answers CPS.0005 for them).

    Each test passes its own ``tag`` so that the simulator's per-phone counters stay its own.
    """
    return [f"{'f' * 24}{tag:04x}{n:04x}" for n in range(count)]


def test_rollout_exits_1_when_phones_fail_permanently(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    ghosts = made_up_ids(2, tag=1)
    fleet = [*pool.take(40), *ghosts]
    policy = {"waves": ["100%"], "retry_codes": [], "batch_size": 20}
    plan = write_plan(tmp_path, plan_yaml("cli-fail", fleet, policy=policy))

    done = run_cli(
        "rollout", plan, "--config", settings, "--report", "r.json", "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 1, done.stderr
    report = read_report(tmp_path / "r.json")
    assert report["status"] == "completed_with_failures"
    assert_counts_add_up(report, fleet)
    assert report["counts"]["failed"] == 2
    assert report["counts"]["succeeded"] == 40
    failed = {p["phone_id"]: p for p in report["phones"] if p["state"] == "failed"}
    assert set(failed) == set(ghosts)
    for phone in failed.values():
        assert phone["error_code"] == "CPS.0005"
        assert phone["error_msg"]
        assert phone["attempts"] == 1
    submissions = sim.stats(phones=True)["submissions_per_phone"]
    assert all(submissions.get(ghost) == 1 for ghost in ghosts)


def test_rollout_exits_2_when_the_abort_gate_trips(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    first_wave = 10
    fleet = [*made_up_ids(1, tag=2), *pool.take(150)]
    policy = {
        "waves": [first_wave, "100%"],
        "batch_size": 5,
        "retry_codes": [],
        "abort": {"max_failures": 0},
    }
    plan = write_plan(tmp_path, plan_yaml("cli-abort", fleet, policy=policy))

    done = run_cli(
        "rollout", plan, "--config", settings, "--report", "r.json", "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 2, done.stdout + done.stderr
    report = read_report(tmp_path / "r.json")
    assert report["status"] == "aborted"
    assert_counts_add_up(report, fleet)
    phones = report["phones"]
    assert phones[0]["state"] == "failed"
    assert phones[0]["error_code"] == "CPS.0005"
    assert {p["state"] for p in phones} <= TERMINAL_STATES
    later = phones[first_wave:]
    assert {p["state"] for p in later} == {"cancelled"}
    submissions = sim.stats(phones=True)["submissions_per_phone"]
    assert not any(p["phone_id"] in submissions for p in later)


# -- 4. invalid input: exit 3, nothing sent --------------------------------------------------------

GOOD_PHONES = ["a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]


@dataclass(frozen=True)
class BadInput:
    """One invalid plan or settings file, and what the error message must name."""

    plan: str
    expected: tuple[str, ...]
    settings_extra: str = ""
    settings_text: str | None = None
    plan_name: str = "plan.yaml"


def _plan_lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


_HEAD = ("name: bad", "fleet:", f"  phones: [{GOOD_PHONES[0]}, {GOOD_PHONES[1]}]")
BAD_INPUTS: dict[str, BadInput] = {
    "bad-yaml": BadInput(
        _plan_lines("name: bad", "fleet:", "  phones: [abc", "properties: {}"),
        ("plan.yaml:", "YAML"),
    ),
    "unknown-key": BadInput(
        _plan_lines(*_HEAD, "properties:", "  persist.sys.locale: en-US", "colour: blue"),
        ("plan.yaml:6", "colour"),
    ),
    "bad-wave": BadInput(
        _plan_lines(
            *_HEAD, "properties: {persist.sys.locale: en-US}", "policy:", "  waves: [10, '150%']"
        ),
        ("plan.yaml:6", "policy.waves[1]"),
    ),
    "bad-property-value": BadInput(
        _plan_lines(*_HEAD, "properties:", "  ro.install.auto: 7"),
        ("plan.yaml:5", "ro.install.auto"),
    ),
    "duplicate-phone": BadInput(
        _plan_lines(
            "name: bad",
            "fleet:",
            "  phones:",
            f"    - {GOOD_PHONES[0]}",
            f"    - {GOOD_PHONES[1]}",
            f"    - {GOOD_PHONES[0]}",
            "properties: {persist.sys.locale: en-US}",
        ),
        ("plan.yaml:6", "fleet.phones[2]", GOOD_PHONES[0], "twice"),
    ),
    "missing-plan-file": BadInput("", ("nosuch.yaml",), plan_name="nosuch.yaml"),
    "missing-fleet-file": BadInput(
        _plan_lines(*_HEAD, "  file: nosuch.csv", "properties: {persist.sys.locale: en-US}"),
        ("plan.yaml:4", "fleet.file", "nosuch.csv"),
    ),
    "bad-toml": BadInput(
        _plan_lines(*_HEAD, "properties: {persist.sys.locale: en-US}"),
        ("settings.toml", "TOML", "line 1"),
        settings_text="[cph\nendpoint = 1\n",
    ),
    "unknown-settings-key": BadInput(
        _plan_lines(*_HEAD, "properties: {persist.sys.locale: en-US}"),
        ("settings.toml", "rollout.colour"),
        settings_extra='colour = "blue"\n',
    ),
}


VALIDATED = ("bad-yaml", "unknown-key", "bad-wave")
"""Cases also run through ``validate`` (each process costs a second of CPU on a shared machine)."""
PARALLEL_RUNS = 3


@dataclass(frozen=True)
class BadRuns:
    """Every invalid input's outcome by (case, command), with the simulator's request count around."""

    runs: dict[tuple[str, str], subprocess.CompletedProcess[str]]
    requests_before: int
    requests_after: int
    root: Path


def _prepare_bad_input(directory: Path, case: BadInput, sim_url: str) -> Path:
    directory.mkdir()
    settings = write_settings(directory, sim_url)
    if case.settings_text is not None:
        settings.write_text(case.settings_text, encoding="utf-8")
    elif case.settings_extra:
        settings.write_text(settings.read_text() + case.settings_extra, encoding="utf-8")
    if case.plan:
        (directory / case.plan_name).write_text(case.plan, encoding="utf-8")
    return directory


def _bad_command(name: str, command: str, directory: Path) -> subprocess.CompletedProcess[str]:
    argv = [command, BAD_INPUTS[name].plan_name, "--config", "settings.toml"]
    if command == "rollout":
        argv += ["--report", "r.json", "--no-progress"]
    return run_cli(*argv, cwd=directory)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> BadRuns:
    """Every invalid input through ``rollout`` (some through ``validate`` too), a few at a time."""
    root = tmp_path_factory.mktemp("bad")
    dirs = {
        name: _prepare_bad_input(root / name, case, sim.url) for name, case in BAD_INPUTS.items()
    }
    jobs = [(name, "rollout") for name in BAD_INPUTS] + [(name, "validate") for name in VALIDATED]
    before = sim.requests()
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as workers:
        futures = {job: workers.submit(_bad_command, *job, dirs[job[0]]) for job in jobs}
        runs = {job: future.result() for job, future in futures.items()}
    return BadRuns(runs, before, sim.requests(), root)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_invalid_input_exits_3_naming_the_problem(case: str, bad_runs: BadRuns) -> None:
    runs = [done for (name, _), done in bad_runs.runs.items() if name == case]
    assert runs
    for done in runs:
        assert done.returncode == 3, (done.args, done.stdout, done.stderr)
        message = done.stderr
        assert message.startswith("error: "), message
        for part in BAD_INPUTS[case].expected:
            assert part in message, (part, message)
        assert "Traceback" not in message
        assert not any(re.search(r":[ \t]+$", line) for line in message.splitlines()), message
        assert TOKEN not in done.stdout + message


def test_invalid_input_sends_nothing(bad_runs: BadRuns) -> None:
    assert bad_runs.requests_after == bad_runs.requests_before
    assert not list(bad_runs.root.rglob("r.json"))


def test_validate_accepts_a_good_plan(tmp_path: Path, sim: Simulator, settings: Path) -> None:
    plan = write_plan(tmp_path, plan_yaml("cli-valid", GOOD_PHONES))
    before = sim.requests()

    done = run_cli("validate", plan, "--config", settings, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert "2 phones" in done.stdout
    assert sim.requests() == before


# -- 5. fatal auth error ---------------------------------------------------------------------------


def test_wrong_token_exits_4_without_printing_it(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    wrong = "wrong-token-7f3e9a1c"
    fleet = pool.take(20)
    plan = write_plan(tmp_path, plan_yaml("cli-auth", fleet))
    failures_before = sim.stats()["auth_failures"]

    done = run_cli(
        "rollout",
        plan,
        "--config",
        settings,
        "--report",
        "r.json",
        "--no-progress",
        cwd=tmp_path,
        token=wrong,
    )

    assert done.returncode == 4, done.stdout + done.stderr
    assert "APIG.0301" in done.stderr
    report_text = (tmp_path / "r.json").read_text(encoding="utf-8")
    for text in (done.stdout, done.stderr, report_text):
        assert wrong not in text
    report = json.loads(report_text)
    assert_counts_add_up(report, fleet)
    assert report["counts"]["succeeded"] == 0
    stats = sim.stats(phones=True)
    assert stats["auth_failures"] > failures_before
    assert not any(pid in stats["properties_per_phone"] for pid in fleet)


# -- 6. dry run ------------------------------------------------------------------------------------


def test_dry_run_describes_the_rollout_and_sends_nothing(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    fleet = pool.take(50)
    policy = {"batch_size": 10, "waves": [5, "100%"], "max_attempts": 5}
    plan = write_plan(tmp_path, plan_yaml("cli-dry", fleet, policy=policy))
    before = sim.requests()
    updates_before = sim.requests(UPDATE_OPERATION)

    done = run_cli(
        "rollout", plan, "--config", settings, "--dry-run", "--max-attempts", "3", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "50 phones" in out
    assert "batches: 6 of at most 10" in out
    assert "waves: [5, 45]" in out
    assert "estimated duration" in out
    assert "up to 3 attempts" in out
    for index, phone_id in enumerate(fleet[:3]):
        sample = next(line for line in out.splitlines() if phone_id in line)
        assert f"cli_{index:04d}" in sample
    assert sim.requests() == before
    assert sim.requests(UPDATE_OPERATION) == updates_before
    assert not any(pid in sim.stats(phones=True)["submissions_per_phone"] for pid in fleet)


# -- 7. flags override the plan and the settings ---------------------------------------------------


def test_batch_size_flag_overrides_plan_and_settings(
    tmp_path: Path, sim: Simulator, pool: PhonePool
) -> None:
    settings = write_settings(tmp_path, sim.url, batch_size=100)
    fleet = pool.take(70)
    plan = write_plan(
        tmp_path, plan_yaml("cli-batch", fleet, policy={"batch_size": 50, "waves": ["100%"]})
    )
    updates_before = sim.requests(UPDATE_OPERATION)

    done = run_cli(
        "rollout",
        plan,
        "--config",
        settings,
        "--report",
        "r.json",
        "--batch-size",
        "7",
        "--no-progress",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert sim.requests(UPDATE_OPERATION) - updates_before >= 10
    request_ids = Counter(p["request_id"] for p in read_report(tmp_path / "r.json")["phones"])
    assert len(request_ids) == 10
    assert max(request_ids.values()) <= 7
    submissions = sim.stats(phones=True)["submissions_per_phone"]
    assert all(submissions.get(pid) == 1 for pid in fleet)


def test_max_attempts_flag_overrides_the_plan(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    (ghost,) = made_up_ids(1, tag=3)
    fleet = [*pool.take(10), ghost]
    policy = {"waves": ["100%"], "max_attempts": 5, "retry_codes": ["CPS.0005"]}
    plan = write_plan(tmp_path, plan_yaml("cli-attempts", fleet, policy=policy))

    done = run_cli(
        "rollout",
        plan,
        "--config",
        settings,
        "--report",
        "r.json",
        "--max-attempts",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )

    assert done.returncode == 1, done.stderr
    report = read_report(tmp_path / "r.json")
    failed = [p for p in report["phones"] if p["state"] == "failed"]
    assert [p["phone_id"] for p in failed] == [ghost]
    assert failed[0]["attempts"] == 1
    assert failed[0]["error_code"] == "CPS.0005"
    assert sim.stats(phones=True)["submissions_per_phone"].get(ghost) == 1


# -- 8. SIGINT -------------------------------------------------------------------------------------

BATCH_SUBMITTED = re.compile(r'"event": *"batch\.submitted"')


def test_sigint_interrupts_and_reports_every_phone(tmp_path: Path) -> None:
    slow = ("--phones", "300", "--seed", "5", "--set", "job_duration=fixed:1.0")
    with running_simulator(*slow, "--submit-rate", "5", stderr_path=tmp_path / "sim.err") as sim:
        settings = write_settings(tmp_path, sim.url, submit_rate_per_s=4.0, stop_grace_s=10.0)
        fleet = sim.phone_ids()
        plan = write_plan(
            tmp_path, plan_yaml("cli-sigint", fleet, policy={"batch_size": 10, "waves": ["100%"]})
        )
        with (tmp_path / "stdout.txt").open("w", encoding="utf-8") as stdout:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    "rollout",
                    str(plan),
                    "--config",
                    str(settings),
                    "--report",
                    "r.json",
                    "--no-progress",
                ],
                cwd=tmp_path,
                env=clean_env(),
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            assert proc.stderr is not None
            stderr = LineReader(proc.stderr)
            stderr.wait_for(BATCH_SUBMITTED, timeout_s=RUN_TIMEOUT_S)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            stop_process(proc)
        log = "".join(stderr.join())
        submitted = sim.stats(phones=True)["submissions_per_phone"]

    assert code == 130, log
    report = read_report(tmp_path / "r.json")
    assert report["status"] == "interrupted"
    assert_counts_add_up(report, fleet)
    states = state_counts(report)
    assert states["submitting"] == 0
    assert states["succeeded"] >= 1
    assert states["succeeded"] + states["failed"] < len(fleet), "nothing was left to interrupt"
    for phone in report["phones"]:
        if phone["state"] == "succeeded":
            assert submitted.get(phone["phone_id"]) == 1


# -- 9. JSON logs ----------------------------------------------------------------------------------


def test_json_logs_carry_events_and_no_secret(
    tmp_path: Path, sim: Simulator, pool: PhonePool, settings: Path
) -> None:
    fleet = pool.take(100)
    plan = write_plan(
        tmp_path, plan_yaml("cli-logs", fleet, policy={"batch_size": 20, "waves": [10, "100%"]})
    )

    done = run_cli(
        "rollout", plan, "--config", settings, "--id", "logs-1", "--no-progress", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    events = json_lines(done.stderr)
    assert events
    for event in events:
        assert isinstance(event.get("event"), str), event
        assert event.get("rollout_id") == "logs-1", event
    names = {event["event"] for event in events}
    assert {"rollout.started", "batch.submitted", "rollout.progress", "rollout.finished"} <= names
    finished = [e for e in events if e["event"] == "rollout.finished"]
    assert len(finished) == 1
    assert finished[0]["status"] == "succeeded"
    assert TOKEN not in done.stdout
    assert TOKEN not in done.stderr
    reports = list((tmp_path / "runs").glob("logs-1*"))
    assert reports, "the report goes to runs_dir when --report is not given"
    assert all(TOKEN not in path.read_text(encoding="utf-8") for path in reports)


# -- 10. help, version, bad simulator profile ------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = run_cli("--help", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    for command in ("rollout", "validate", "simulator", "demo"):
        assert command in done.stdout


def test_console_script_prints_the_version(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("cph-orchestrator")
    executable = str(script) if script.exists() else shutil.which("cph-orchestrator")
    assert executable, "the cph-orchestrator console script is not installed"

    done = subprocess.run(
        [executable, "--version"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert __version__ in done.stdout
    assert "cph-orchestrator" in done.stdout


def test_simulator_rejects_an_unknown_profile(tmp_path: Path) -> None:
    done = run_cli("simulator", "--port", "0", "--profile", "nosuch", cwd=tmp_path)

    assert done.returncode == 3
    assert "nosuch" in done.stderr
    assert "listening" not in done.stdout
