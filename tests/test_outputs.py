"""The output checks and the report writer, in this process: the ID rule, what a path's problem
is called, and that a report is replaced whole or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import resource
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.terminal import finish
from orchestrator.engine.runner import RolloutResult, RolloutStatus
from orchestrator.engine.states import PhoneRecord, PhoneState
from orchestrator.errors import ConfigError
from orchestrator.rollouts.outputs import (
    MAX_ROLLOUT_ID_LENGTH,
    RunOutputs,
    check_rollout_id,
    check_run_outputs,
    default_report_path,
    file_problem,
    is_rollout_id,
    run_output_problems,
)
from orchestrator.rollouts.report import write_report
from orchestrator.settings import RolloutSettings, Settings

PHONES = 400
SMALL_FILE_BYTES = 4096
"""Big enough for a 2-phone report, too small for a 400-phone one."""


def report_of(phones: int, *, rollout_id: str = "r1") -> dict[str, Any]:
    """A report with ``phones`` rows."""
    rows = [
        {
            "phone_id": f"{n:032x}",
            "state": "succeeded",
            "attempts": 1,
            "job_id": f"job-{n}",
            "request_id": f"req-{n}",
            "error_code": None,
            "error_msg": None,
        }
        for n in range(phones)
    ]
    return {"rollout_id": rollout_id, "name": "n", "status": "succeeded", "phones": rows}


@contextlib.contextmanager
def file_size_limit(limit_bytes: int) -> Iterator[None]:
    """Writes past ``limit_bytes`` fail with EFBIG, as a full disk fails them with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# -- the rollout ID rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "ro-20261128-140512-3fa9", "A.b_c-9", "a..b", "x" * MAX_ROLLOUT_ID_LENGTH],
)
def test_ids_that_are_plain_file_names_are_accepted(value: str) -> None:
    assert is_rollout_id(value)
    assert check_rollout_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", "../../escape", "a/b", "a\\b", ".hidden", "-x", "a b", "é", "x" * 65, None, 7],
)
def test_ids_that_could_leave_the_run_directory_are_refused(value: object) -> None:
    assert not is_rollout_id(value)


def test_a_refused_id_is_one_line_naming_the_flag_cut_to_a_readable_length() -> None:
    with pytest.raises(ConfigError) as refused:
        check_rollout_id("b" * 300, flag="--id")

    message = str(refused.value)
    assert message.startswith("--id 'bbbb")
    assert "300 characters" in message
    assert "\n" not in message
    assert len(message) < 200


# -- the problems of paths --------------------------------------------------------------------------


def test_a_writable_path_in_a_folder_still_to_create_has_no_problem(tmp_path: Path) -> None:
    assert file_problem(tmp_path / "new" / "deeper" / "r.json") is None
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_or_a_file_in_the_way_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    (tmp_path / "f").write_text("", "utf-8")

    assert file_problem(tmp_path / "d.json") == f"{tmp_path / 'd.json'} is a directory"
    problem = file_problem(tmp_path / "f" / "r.json")
    assert problem is not None
    assert f"{tmp_path / 'f'} is not a directory" in problem


@pytest.mark.parametrize("length", [250, 300])
def test_a_name_too_long_for_the_file_system_is_a_problem(tmp_path: Path, length: int) -> None:
    problem = file_problem(tmp_path / ("r" * length + ".json"))

    assert problem is not None
    assert os.strerror(errno.ENAMETOOLONG) in problem


def run_outputs(tmp_path: Path, **changes: Any) -> RunOutputs:
    """A run's outputs in ``tmp_path``, changed by ``changes``."""
    values: dict[str, Any] = {
        "rollout_id": "r1",
        "runs_dir": tmp_path / "runs",
        "report": None,
        "log_file": None,
        "default_log": False,
        "journal": tmp_path / "j.sqlite",
    }
    return RunOutputs(**{**values, **changes})


def test_a_run_with_writable_outputs_passes(tmp_path: Path) -> None:
    check_run_outputs(run_outputs(tmp_path, report=tmp_path / "r.csv", default_log=True))


def test_two_outputs_on_one_file_are_a_problem(tmp_path: Path) -> None:
    outputs = run_outputs(tmp_path, report=tmp_path / "j.json", journal=tmp_path / "j.json")

    same = tmp_path / "j.json"
    assert run_output_problems(outputs) == [f"--state {same}: {same} is --report's file too"]


def test_an_existing_id_must_be_a_file_name_only_when_a_default_path_uses_it(
    tmp_path: Path,
) -> None:
    odd = run_outputs(tmp_path, rollout_id="a/b")
    named = run_outputs(tmp_path, rollout_id="a/b", report=tmp_path / "r.json")

    assert "use --report" in run_output_problems(odd)[0]
    assert run_output_problems(named) == []
    new = dataclasses.replace(named, id_flag="--id")
    assert run_output_problems(new)[0].startswith("--id 'a/b'")


# -- the atomic report ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_failing_write_keeps_the_previous_report_and_leaves_no_temporary_file(
    tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"report.{fmt}"
    write_report(report_of(2), path)
    previous = path.read_bytes()

    with (
        file_size_limit(SMALL_FILE_BYTES),
        pytest.raises(OSError, match=os.strerror(errno.EFBIG)) as failed,
    ):
        write_report(report_of(PHONES, rollout_id="r2"), path)

    assert failed.value.errno == errno.EFBIG
    assert path.read_bytes() == previous
    assert list(tmp_path.iterdir()) == [path]


def test_a_report_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_report(report_of(2), path)
    write_report(report_of(PHONES, rollout_id="r2"), path)

    written = json.loads(path.read_text("utf-8"))
    assert written["rollout_id"] == "r2"
    assert len(written["phones"]) == PHONES
    assert list(tmp_path.iterdir()) == [path]


def test_a_new_report_gets_a_new_files_mode_and_a_replaced_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "report.csv"
    plain = tmp_path / "plain"
    plain.write_text("", "utf-8")

    write_report(report_of(2), path)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    path.chmod(0o640)
    write_report(report_of(3), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- a report that cannot be written after the run ----------------------------------------------------


def finished_result(phones: int) -> RolloutResult:
    """A run that ended with every phone succeeded."""
    records = [
        PhoneRecord(index=n, phone_id=f"{n:032x}", state=PhoneState.SUCCEEDED, attempts=1)
        for n in range(phones)
    ]
    counts = {"total": phones, "succeeded": phones, "failed": 0, "cancelled": 0, "pending": 0}
    return RolloutResult(
        rollout_id="r9",
        name="n",
        status=RolloutStatus.SUCCEEDED,
        reason=None,
        fatal=False,
        counts=counts,
        api_calls={"submit": 1, "query": 1, "throttled": 0},
        records=records,
        elapsed_s=1.0,
    )


def test_a_report_that_cannot_be_written_is_one_line_and_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(rollout=RolloutSettings(runs_dir=str(tmp_path)))
    journal = tmp_path / "j.sqlite"

    with file_size_limit(SMALL_FILE_BYTES):
        code = finish(finished_result(PHONES), None, settings, journal=journal)

    assert code == 4
    errors = capsys.readouterr().err.strip().splitlines()
    report = default_report_path(tmp_path, "r9")
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: rollout r9 ended (succeeded) but its report could not")
    assert f"report r9 --state {journal} -o {report}" in errors[0]
    assert not report.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_journal_is_refused_here_only_when_it_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("", "utf-8")
    (tmp_path / "j.d").mkdir()
    below_a_file = run_outputs(tmp_path, journal=tmp_path / "afile" / "j.sqlite")
    a_directory = run_outputs(tmp_path, journal=tmp_path / "j.d")

    assert run_output_problems(below_a_file) == []  # the store says why, naming the file
    assert run_output_problems(a_directory) == [
        f"--state {tmp_path / 'j.d'}: {tmp_path / 'j.d'} is a directory"
    ]
