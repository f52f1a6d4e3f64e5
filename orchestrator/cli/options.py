"""Flags and set-up shared by several commands: the journal flag, the run flags, where logs go.

Kept apart from the commands so that the rollout, journal and daemon command modules spell a
shared flag one way and set up logging one way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from orchestrator.errors import ConfigError
from orchestrator.logging import configure_logging
from orchestrator.rollouts.outputs import RunOutputs, check_run_outputs, default_log_path
from orchestrator.rollouts.prepare import Overrides
from orchestrator.settings import Settings, load_settings

__all__ = [
    "CONFIG_OPTION",
    "STATE_OPTION",
    "RunFlags",
    "journal_path",
    "log_to",
    "prepare_run",
    "run_options",
    "run_outputs",
]

P = ParamSpec("P")
R = TypeVar("R")

CONFIG_OPTION = click.option(
    "--config", type=click.Path(path_type=Path), help="Settings file (TOML)."
)
STATE_OPTION = click.option(
    "--state",
    type=click.Path(path_type=Path),
    help="The SQLite journal (default: rollout.state_path, cph-runs/journal.sqlite).",
)
RUN_OPTIONS = [
    CONFIG_OPTION,
    STATE_OPTION,
    click.option("--report", type=click.Path(path_type=Path), help="Write the report here."),
    click.option("--batch-size", type=click.IntRange(1, 1000), help="Phones per request."),
    click.option("--submit-rate", type=click.FloatRange(min=0.001), help="Submits per second."),
    click.option("--query-rate", type=click.FloatRange(min=0.001), help="Queries per second."),
    click.option("--max-attempts", type=click.IntRange(1), help="Attempts per phone."),
    click.option("--log-file", type=click.Path(path_type=Path), help="Write JSON logs here."),
    click.option("--progress/--no-progress", default=None, help="Progress bar (default: tty)."),
]


def run_options(command: Callable[P, R]) -> Callable[P, R]:
    """The flags shared by the commands that run a rollout from the journal."""
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True)
class RunFlags:
    """The values of :func:`run_options`' flags."""

    config: Path | None
    state: Path | None
    report: Path | None
    batch_size: int | None
    submit_rate: float | None
    query_rate: float | None
    max_attempts: int | None
    log_file: Path | None
    progress: bool | None

    def overrides(self) -> Overrides:
        """The flags that change the rollout's options for this run."""
        return Overrides(self.batch_size, self.submit_rate, self.query_rate, self.max_attempts)

    def show_progress(self) -> bool:
        """``--progress``/``--no-progress``, else whether standard error is a terminal."""
        return show_progress(self.progress)


def show_progress(flag: bool | None) -> bool:
    """The progress bar is shown when asked for, or by default on a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def log_to(settings: Settings, rollout_id: str, log_file: Path | None, tty: bool) -> Path | None:
    """JSON logs go to stderr, or to a file when the terminal shows the progress bar."""
    if log_file is None and tty:
        log_file = default_log_path(Path(settings.rollout.runs_dir), rollout_id)
    stream = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = log_file.open("a", encoding="utf-8")
    configure_logging(level=settings.logging.level, fmt=settings.logging.format, stream=stream)
    return log_file


def run_outputs(
    settings: Settings,
    rollout_id: str,
    *,
    report: Path | None,
    log_file: Path | None,
    tty: bool,
    state: Path | None,
    journaled: bool = True,
    id_flag: str | None = None,
) -> RunOutputs:
    """What a run with these flags will write (``state``: the ``--state`` flag, if given)."""
    journal = (state or Path(settings.rollout.state_path)) if journaled else None
    return RunOutputs(
        rollout_id=rollout_id,
        runs_dir=Path(settings.rollout.runs_dir),
        report=report,
        log_file=log_file,
        default_log=tty,
        journal=journal,
        id_flag=id_flag,
        journal_source="--state" if state is not None else "rollout.state_path",
    )


def prepare_run(
    flags: RunFlags, rollout_id: str, *, id_flag: str | None = None
) -> tuple[Settings, Path]:
    """Load the settings, check every file the run will write, set up logging (saying where
    logs go), and name the journal. ``id_flag``: the flag that named a new rollout's ID."""
    settings = load_settings(flags.config)
    tty = flags.show_progress()
    outputs = run_outputs(
        settings,
        rollout_id,
        report=flags.report,
        log_file=flags.log_file,
        tty=tty,
        state=flags.state,
        id_flag=id_flag,
    )
    check_run_outputs(outputs)
    where = log_to(settings, rollout_id, flags.log_file, tty)
    if where is not None:
        click.echo(f"rollout {rollout_id}: logs in {where}", err=True)
    return settings, flags.state or Path(settings.rollout.state_path)


def journal_path(config: Path | None, state: Path | None, settings: Settings | None = None) -> Path:
    """The journal to read; it must exist (reading never creates one)."""
    path = state or Path((settings or load_settings(config)).rollout.state_path)
    if not path.is_file():
        raise ConfigError(f"no journal at {path} (use --state to name it)")
    return path
