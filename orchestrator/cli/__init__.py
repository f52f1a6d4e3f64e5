"""The ``cph-orchestrator`` command line: parse arguments, call the parts, map errors to exit codes.

Exit codes are a contract (see README): 0 all succeeded, 1 finished with failed phones, 2 aborted,
3 invalid plan, settings or input (nothing sent), 4 fatal API or auth error, 130 interrupted.

One module per family of commands: :mod:`~orchestrator.cli.rollout` (``validate``, ``rollout``),
:mod:`~orchestrator.cli.journal` (``resume``, ``rerun-failed``, ``status``, ``report``,
``compact``), :mod:`~orchestrator.cli.daemon` (``daemon``, ``submit``) and
:mod:`~orchestrator.cli.simulator` (``simulator``, ``demo``). The work is done by
:mod:`orchestrator.rollouts`; this package only parses and prints.
"""

from __future__ import annotations

import click

from orchestrator import __version__
from orchestrator.cli import daemon, journal, rollout, simulator
from orchestrator.cli.process import OwnProcess
from orchestrator.rollouts.outcome import ExitCode

__all__ = ["ExitCode", "cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cph-orchestrator")
def cli() -> None:
    """Roll property changes out to fleets of Huawei Cloud Phones."""


for command in (
    simulator.simulator,
    rollout.validate,
    rollout.rollout,
    simulator.demo,
    journal.resume,
    journal.rerun_failed,
    journal.status,
    journal.report,
    journal.compact,
    daemon.daemon,
    daemon.submit,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point: the command owns this process (see :mod:`.process`)."""
    cli(prog_name="cph-orchestrator", obj=OwnProcess())
