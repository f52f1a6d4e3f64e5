"""Everything a run will write, checked before its first request.

A run writes its report, maybe a log file, and its journal; the default report and log paths are
built from the rollout ID inside the run directory. A path that cannot be written must stop the
run before anything is sent (exit 3), not after every phone was changed. Each problem names the
flag (or setting) that chose the path and the path itself.

The rollout ID rule lives here because the ID names files: the command line's ``--id`` and the
daemon's ``id`` both follow it, so no ID can lead a default path out of the run directory.

The checks never create a folder; they probe the nearest existing folder by creating and removing
a hidden temporary file with the name the writer would use, which also catches names that are too
long and file systems that refuse writes whatever the permission bits say.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from orchestrator.errors import ConfigError

__all__ = [
    "MAX_ROLLOUT_ID_LENGTH",
    "REPORT_FORMATS",
    "ROLLOUT_ID_RULE",
    "PlannedFile",
    "RunOutputs",
    "check_files",
    "check_rollout_id",
    "check_run_outputs",
    "default_log_path",
    "default_report_path",
    "file_problem",
    "file_problems",
    "is_rollout_id",
    "planned_files",
    "report_format",
    "run_output_problems",
    "temp_prefix",
]

MAX_ROLLOUT_ID_LENGTH = 64
"""Room for the ID in a file name (at most 255 bytes) with the longest suffix the run adds."""
ROLLOUT_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ROLLOUT_ID_LENGTH - 1}}}")
ROLLOUT_ID_RULE = (
    f"1-{MAX_ROLLOUT_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit"
)
REPORT_FORMATS = ("json", "csv")
RUNS_DIR_SETTING = "rollout.runs_dir"
SHOWN_ID_CHARS = 40
"""An invalid ID is shown cut to this many characters, so the error stays one readable line."""


def is_rollout_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` may name a rollout: no path separator, no leading dot, bounded length."""
    return isinstance(value, str) and ROLLOUT_ID_PATTERN.fullmatch(value) is not None


def _shown(value: str) -> str:
    if len(value) <= SHOWN_ID_CHARS:
        return repr(value)
    return f"{value[:SHOWN_ID_CHARS]!r}… ({len(value)} characters)"


def check_rollout_id(value: str, *, flag: str = "--id") -> str:
    """``value`` if it follows the rule, else a :class:`ConfigError` naming ``flag``."""
    if not is_rollout_id(value):
        raise ConfigError(f"{flag} {_shown(value)}: a rollout ID is {ROLLOUT_ID_RULE}")
    return value


def default_report_path(runs_dir: Path, rollout_id: str) -> Path:
    """Where a run's report goes without ``--report``."""
    return runs_dir / f"{rollout_id}.report.json"


def default_log_path(runs_dir: Path, rollout_id: str) -> Path:
    """Where a run's JSON logs go when the terminal shows the progress bar and no ``--log-file``."""
    return runs_dir / f"{rollout_id}.log.jsonl"


def report_format(path: Path) -> str | None:
    """The report format its file name asks for (``json`` or ``csv``), None if neither."""
    kind = path.suffix.lower().lstrip(".")
    return kind if kind in REPORT_FORMATS else None


def temp_prefix(path: Path) -> str:
    """The prefix of the temporary file written beside ``path`` before it replaces it."""
    return f".{path.name}."


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a run will write, and the flag or setting that chose it (for the message)."""

    path: Path
    source: str
    """``--report``, ``--log-file``, ``--state``, or a setting such as ``rollout.runs_dir``."""
    shown: Path
    """The path the operator gave: the file itself, or the folder a default file goes into."""
    journal: bool = False
    """The journal's store checks its own file and folder when it opens them, with messages of
    its own; only a directory in its place is refused here."""


@dataclass(frozen=True, slots=True)
class RunOutputs:
    """What one run of ``rollout``, ``resume`` or ``rerun-failed`` will write."""

    rollout_id: str
    runs_dir: Path
    report: Path | None
    """``--report``; None writes the default report into the run directory."""
    log_file: Path | None
    """``--log-file``; None writes no log file unless ``default_log``."""
    default_log: bool
    """Logs go to the default file in the run directory (the progress bar holds the terminal)."""
    journal: Path | None
    """The journal; None for a run without one (``--no-journal``)."""
    id_flag: str | None = None
    """The flag the operator named the rollout with; None for a generated or an existing ID."""
    journal_source: str = "--state"


def planned_files(outputs: RunOutputs) -> list[PlannedFile]:
    """Every file the run will write, with where each was chosen."""
    runs = outputs.runs_dir
    in_runs = RUNS_DIR_SETTING
    files = [
        PlannedFile(outputs.report, "--report", outputs.report)
        if outputs.report is not None
        else PlannedFile(default_report_path(runs, outputs.rollout_id), in_runs, runs)
    ]
    if outputs.log_file is not None:
        files.append(PlannedFile(outputs.log_file, "--log-file", outputs.log_file))
    elif outputs.default_log:
        files.append(PlannedFile(default_log_path(runs, outputs.rollout_id), in_runs, runs))
    if outputs.journal is not None:
        journal = outputs.journal
        files.append(PlannedFile(journal, outputs.journal_source, journal, journal=True))
    return files


def _id_problem(outputs: RunOutputs) -> str | None:
    """A new ID must follow the rule; an existing one only when a default path is built from it."""
    rollout_id = outputs.rollout_id
    if is_rollout_id(rollout_id):
        return None
    if outputs.id_flag is not None:
        return f"{outputs.id_flag} {_shown(rollout_id)}: a rollout ID is {ROLLOUT_ID_RULE}"
    if outputs.report is None or (outputs.log_file is None and outputs.default_log):
        return (
            f"rollout {_shown(rollout_id)} cannot name files in {outputs.runs_dir}"
            " (its ID is not a plain file name): use --report and --log-file"
        )
    return None


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (``.`` at worst, for a relative path)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return folder.parents[-1] if folder.parents else folder


def _probe(folder: Path, name: str) -> OSError | None:
    """Create and remove a temporary file named as the writer would name it; the error if any."""
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=name, suffix=".tmp")
    except OSError as error:
        return error
    os.close(fd)
    os.unlink(temp)
    return None


def file_problem(path: Path, *, only_kind: bool = False) -> str | None:
    """Why ``path`` cannot be written (in a folder created as needed), or None if it can.

    Creates no folder; a probe file is created and removed in the nearest existing one.
    ``only_kind`` checks only that ``path`` is not a directory.
    """
    try:
        if only_kind:
            return f"{path} is a directory" if path.is_dir() else None
        return _inspected_problem(path)
    except OSError as error:  # a name too long to look up, a folder we may not enter
        return f"{path} cannot be looked at ({error.strerror or error})"


def _inspected_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a directory"
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        return f"{folder} is not a directory, so {path} cannot be written"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} cannot be written (permission denied)"
    error = _probe(folder, temp_prefix(path))
    if error is None:
        return None
    reason = error.strerror or str(error)
    if folder == path.parent:
        return f"cannot write in {folder} ({reason})"
    return f"cannot create {path.parent}: writing in {folder} fails ({reason})"


def file_problems(files: Iterable[PlannedFile]) -> list[str]:
    """Why each of ``files`` cannot be written, naming the flag and the path; or why two collide."""
    problems: list[str] = []
    seen: dict[Path, PlannedFile] = {}
    for planned in files:
        problem = file_problem(planned.path, only_kind=planned.journal)
        other = seen.setdefault(planned.path.resolve(), planned)
        if problem is None and other is not planned:
            problem = f"{planned.path} is {other.source}'s file too"
        if problem is not None:
            problems.append(f"{planned.source} {planned.shown}: {problem}")
    return problems


def run_output_problems(outputs: RunOutputs) -> list[str]:
    """Every reason the run could not write what it will write; empty when all is writable."""
    id_problem = _id_problem(outputs)
    if id_problem is not None:
        return [id_problem]  # paths built from such an ID mean nothing
    problems: list[str] = []
    if outputs.report is not None and report_format(outputs.report) is None:
        problems.append(f"--report {outputs.report}: the report must be a .json or .csv file")
    problems.extend(file_problems(planned_files(outputs)))
    return problems


def check_run_outputs(outputs: RunOutputs) -> None:
    """Raise the first of :func:`run_output_problems` as a :class:`ConfigError` (exit 3)."""
    _raise_first(run_output_problems(outputs))


def check_files(files: Iterable[PlannedFile]) -> None:
    """Raise the first of :func:`file_problems` as a :class:`ConfigError` (exit 3)."""
    _raise_first(file_problems(files))


def _raise_first(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems[0])
