"""A rollout as a terminal runs it: signals while it runs, a progress bar, a summary at its end.

Signals: the first SIGINT/SIGTERM stops submitting and lets in-flight jobs finish within the grace
period, then the report is written and the process exits 130; a second signal exits at once.
Only the command line installs these handlers: a rollout run in-process (a test, the daemon)
keeps the process's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from orchestrator.cli.progress import ProgressBar, summary_lines
from orchestrator.engine.runner import RolloutEngine, RolloutResult
from orchestrator.rollouts.journaled import Drive
from orchestrator.rollouts.outcome import ExitCode, exit_code_for
from orchestrator.rollouts.outputs import default_report_path
from orchestrator.rollouts.report import write_result_report
from orchestrator.settings import Settings

__all__ = [
    "drive_from_terminal",
    "finish",
    "report_failure_line",
    "stop_on_signals",
    "terminal_drive",
]


@contextmanager
def stop_on_signals(engine: RolloutEngine) -> Iterator[None]:
    """First signal: graceful stop. Second: exit now. Handlers are restored afterwards."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            print("second signal: exiting now", file=sys.stderr, flush=True)
            os._exit(ExitCode.INTERRUPTED)
        name = signal.Signals(signum).name
        print(f"{name}: finishing in-flight jobs, press again to quit", file=sys.stderr)
        engine.request_stop(f"interrupted by {name}")

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def drive_from_terminal(
    engine: RolloutEngine, *, show_progress: bool, setup_done: Callable[[], None]
) -> RolloutResult:
    """Run the engine with signal handling and, on a terminal, the progress bar.

    ``setup_done`` is called first: set-up has ended once the engine exists.
    """
    setup_done()
    with stop_on_signals(engine):
        if not show_progress:
            return await engine.run()
        with ProgressBar(Console(stderr=True), len(engine.table), engine.snapshot):
            return await engine.run()


def terminal_drive(*, show_progress: bool, setup_done: Callable[[], None]) -> Drive:
    """:func:`drive_from_terminal` with its options bound, for the rollouts layer to call."""

    async def drive(engine: RolloutEngine) -> RolloutResult:
        return await drive_from_terminal(engine, show_progress=show_progress, setup_done=setup_done)

    return drive


def finish(
    result: RolloutResult, report_path: Path | None, settings: Settings, *, journal: Path | None
) -> ExitCode:
    """Write the report, print the summary; returns the exit code.

    A report that cannot be written now (a full disk, a folder removed during the run) is one
    error line and exit 4: the run did send (so not 3), its outcome is in the journal, and a
    script must not take the missing report for a success.
    """
    path = report_path or default_report_path(Path(settings.rollout.runs_dir), result.rollout_id)
    try:
        write_result_report(result, path, settings)
    except OSError as error:
        failure: OSError | None = error
    else:
        failure = None
    for line in summary_lines(
        status=str(result.status),
        reason=result.reason,
        counts=result.counts,
        api_calls=result.api_calls,
        elapsed_s=result.elapsed_s,
        records=result.records,
    ):
        print(line)
    if failure is None:
        print(f"  report: {path}")
        return exit_code_for(result)
    print(report_failure_line(result, path, failure, journal), file=sys.stderr)
    return ExitCode.API_FATAL


def report_failure_line(
    result: RolloutResult, path: Path, error: OSError, journal: Path | None
) -> str:
    """One line: the run ended, its report was not written, and where the outcome can be read."""
    line = (
        f"error: rollout {result.rollout_id} ended ({result.status}) but its report could not be"
        f" written to {path}: {error.strerror or error}"
    )
    if journal is None:
        return line + " (no journal was kept)"
    return (
        line
        + f"; the journal has it: cph-orchestrator report {result.rollout_id}"
        + (f" --state {journal} -o {path}")
    )
