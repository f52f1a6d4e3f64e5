"""The commands that read or continue rollouts from the journal: ``resume``, ``rerun-failed``,
``status``, ``report`` and ``compact``.

The work itself is the rollouts layer's (:mod:`orchestrator.rollouts`); these commands parse the
flags, drive it from the terminal and print what it returns.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from orchestrator.cli.daemon import print_daemon_answer
from orchestrator.cli.errors import exit_on_errors
from orchestrator.cli.options import (
    CONFIG_OPTION,
    STATE_OPTION,
    RunFlags,
    journal_path,
    prepare_run,
    run_options,
)
from orchestrator.cli.process import rollout_collector_tuning
from orchestrator.cli.terminal import finish, terminal_drive
from orchestrator.daemon import remote
from orchestrator.engine.runner import RolloutResult
from orchestrator.logging import configure_logging
from orchestrator.rollouts.execute import rerun_failed_rollout, resume_rollout
from orchestrator.rollouts.journaled import Drive, compact_rollouts
from orchestrator.rollouts.outputs import PlannedFile, check_files
from orchestrator.rollouts.prepare import new_rollout_id
from orchestrator.rollouts.report import read_journal_report, write_csv, write_report
from orchestrator.rollouts.status import read_status_rows
from orchestrator.settings import Settings, load_settings

__all__ = ["compact", "report", "rerun_failed", "resume", "status", "status_line"]


@click.command()
@click.argument("rollout_id")
@run_options
@exit_on_errors
def resume(rollout_id: str, **flags: Any) -> None:
    """Continue an interrupted or crashed rollout: running jobs are tracked, not resent."""
    run = RunFlags(**flags)
    _run_to_the_end(
        run,
        rollout_id,
        lambda settings, state, drive: resume_rollout(
            rollout_id=rollout_id,
            settings=settings,
            state_path=state,
            overrides=run.overrides(),
            drive=drive,
        ),
    )


@click.command("rerun-failed")
@click.argument("rollout_id")
@click.option("--error-code", help="Only the phones that failed with this code.")
@click.option("--id", "new_id", help="Name the new rollout (default: generated).")
@run_options
@exit_on_errors
def rerun_failed(rollout_id: str, error_code: str | None, new_id: str | None, **flags: Any) -> None:
    """Start a new rollout of the phones that failed in ROLLOUT_ID."""
    run = RunFlags(**flags)
    id_flag = "--id" if new_id is not None else None
    run_id = new_id or new_rollout_id()
    _run_to_the_end(
        run,
        run_id,
        lambda settings, state, drive: rerun_failed_rollout(
            rollout_id=rollout_id,
            new_id=run_id,
            error_code=error_code,
            settings=settings,
            state_path=state,
            overrides=run.overrides(),
            drive=drive,
        ),
        id_flag=id_flag,
    )


StartRun = Callable[[Settings, Path, Drive], Coroutine[Any, Any, RolloutResult]]
"""Starts a journaled run with the settings, the journal path and the terminal's driver."""


def _run_to_the_end(
    run: RunFlags, rollout_id: str, start: StartRun, *, id_flag: str | None = None
) -> NoReturn:
    """Check the run's outputs, run it from a terminal, write its report and exit with its code."""
    with rollout_collector_tuning() as setup_done:
        settings, state = prepare_run(run, rollout_id, id_flag=id_flag)
        drive = terminal_drive(show_progress=run.show_progress(), setup_done=setup_done)
        result = asyncio.run(start(settings, state, drive))
    sys.exit(finish(result, run.report, settings, journal=state))


@click.command()
@click.argument("rollout_id", required=False)
@CONFIG_OPTION
@STATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--daemon",
    "daemon_url",
    metavar="URL",
    help="Ask a running daemon instead of reading a journal (token: CPH_DAEMON_TOKEN).",
)
@exit_on_errors
def status(
    rollout_id: str | None,
    config: Path | None,
    state: Path | None,
    as_json: bool,
    daemon_url: str | None,
) -> None:
    """Show every rollout in the journal, or one rollout's counts per state."""
    if daemon_url:
        print_daemon_answer(lambda: remote.fetch_status(daemon_url, rollout_id))
        return
    rows = asyncio.run(read_status_rows(journal_path(config, state), rollout_id))
    if as_json:
        json.dump(rows[0] if rollout_id else rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for row in rows:
            print(status_line(row, detailed=rollout_id is not None))
    sys.exit(0)


def status_line(row: Mapping[str, Any], *, detailed: bool) -> str:
    """A status row as ``status`` prints it: one line, or with ``detailed`` a few more."""
    counts = row["counts"]
    line = (
        f"{row['rollout_id']}  {row['status']:<24} {counts['succeeded']}/{counts['total']} ok,"
        f" {counts['failed']} failed, {counts['cancelled']} cancelled, {counts['pending']} open"
        f"  {row['name']}"
    )
    if not detailed:
        return line
    states = ", ".join(f"{state} {n}" for state, n in row["states"].items())
    calls = ", ".join(f"{k} {v}" for k, v in sorted(row["api_calls"].items()))
    extra = [
        f"  states: {states}",
        f"  created {row['created_at']}, updated {row['updated_at']}",
        f"  api calls: {calls or 'none yet'}",
    ]
    if row["reason"]:
        extra.append(f"  reason: {row['reason']}")
    return "\n".join([line, *extra])


@click.command()
@click.argument("rollout_id")
@CONFIG_OPTION
@STATE_OPTION
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv"]),
    default="json",
    show_default=True,
    help="Report format.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write to a file.")
@exit_on_errors
def report(
    rollout_id: str, config: Path | None, state: Path | None, fmt: str, output: Path | None
) -> None:
    """Print (or write) a rollout's report from the journal."""
    if output is not None:
        check_files([PlannedFile(output, "--output", output)])
    built = asyncio.run(read_journal_report(journal_path(config, state), rollout_id))
    if output is not None:
        write_report(built, output, fmt=fmt)
    elif fmt == "json":
        json.dump(built, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        write_csv(built["phones"], sys.stdout)
    sys.exit(0)


@click.command()
@click.argument("rollout_id", required=False)
@CONFIG_OPTION
@STATE_OPTION
@exit_on_errors
def compact(rollout_id: str | None, config: Path | None, state: Path | None) -> None:
    """Fold saved changes into the phones' rows: of one rollout, or of every ended one.

    Reads are exact without it; it makes reports of large rollouts faster and lets the journal
    reuse the space. The daemon does it itself when a rollout ends.
    """
    settings = load_settings(config)
    path = journal_path(config, state, settings)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)

    def say(rollout_id: str, folded: int) -> None:
        print(f"{rollout_id}: folded {folded} change log entries into its phones")

    asyncio.run(compact_rollouts(path, rollout_id, on_folded=say))
    sys.exit(0)
