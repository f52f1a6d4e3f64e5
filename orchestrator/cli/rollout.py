"""The ``validate`` and ``rollout`` commands (``rollout --dry-run`` included).

``validate`` reads a plan and sends nothing; ``rollout`` runs one to its end (or, with
``--dry-run``, prints what it would do) and exits with the contract's code.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from orchestrator.cli.errors import exit_on_errors
from orchestrator.cli.options import (
    CONFIG_OPTION,
    STATE_OPTION,
    log_to,
    run_outputs,
    show_progress,
)
from orchestrator.cli.process import rollout_collector_tuning
from orchestrator.cli.terminal import finish, terminal_drive
from orchestrator.cph.connect import open_client
from orchestrator.engine.options import EngineOptions
from orchestrator.logging import configure_logging
from orchestrator.plan import LoadedPlan, PhoneTarget, load_plan, wave_sizes
from orchestrator.rollouts.execute import RolloutRequest, execute_rollout
from orchestrator.rollouts.outcome import ExitCode
from orchestrator.rollouts.outputs import check_run_outputs, run_output_problems
from orchestrator.rollouts.prepare import (
    Overrides,
    batch_count,
    engine_options,
    estimate_duration_s,
    new_rollout_id,
    resolve_targets,
)
from orchestrator.settings import load_settings

__all__ = ["dry_run_lines", "dry_run_outcome", "print_dry_run", "rollout", "validate"]

SAMPLE_PHONES = 3


@click.command()
@click.argument("plan", type=click.Path(path_type=Path))
@CONFIG_OPTION
@click.option("--strict", is_flag=True, default=None, help="Unknown property keys are errors.")
@exit_on_errors
def validate(plan: Path, config: Path | None, strict: bool | None) -> None:
    """Check a plan without sending anything (exit 3 when it is invalid)."""
    load_settings(config)
    loaded = load_plan(plan, strict=strict)
    query = loaded.plan.fleet.query
    targets = loaded.targets(())
    note = " (plus the phones of its query, resolved at run time)" if query else ""
    click.echo(f"plan {loaded.plan.name!r} is valid: {len(targets)} phones{note}")
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}")


@click.command()
@click.argument("plan", type=click.Path(path_type=Path))
@CONFIG_OPTION
@click.option("--id", "rollout_id", help="Name the rollout (default: generated).")
@click.option("--report", type=click.Path(path_type=Path), help="Write the report (.json or .csv).")
@STATE_OPTION
@click.option(
    "--no-journal",
    is_flag=True,
    help="Keep no journal (the rollout cannot be resumed); for measurements.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be done; send nothing.")
@click.option("--batch-size", type=click.IntRange(1, 1000), help="Phones per request.")
@click.option("--submit-rate", type=click.FloatRange(min=0.001), help="Submit requests per second.")
@click.option("--query-rate", type=click.FloatRange(min=0.001), help="Query requests per second.")
@click.option("--max-attempts", type=click.IntRange(1), help="Attempts per phone.")
@click.option("--strict", is_flag=True, default=None, help="Unknown property keys are errors.")
@click.option("--log-file", type=click.Path(path_type=Path), help="Write JSON logs here.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
@exit_on_errors
def rollout(
    plan: Path,
    config: Path | None,
    rollout_id: str | None,
    report: Path | None,
    state: Path | None,
    no_journal: bool,
    dry_run: bool,
    batch_size: int | None,
    submit_rate: float | None,
    query_rate: float | None,
    max_attempts: int | None,
    strict: bool | None,
    log_file: Path | None,
    progress: bool | None,
) -> None:
    """Roll the plan's properties out to its fleet and report on every phone."""
    with rollout_collector_tuning() as setup_done:
        settings = load_settings(config)
        request = RolloutRequest(
            loaded=load_plan(plan, strict=strict),
            settings=settings,
            rollout_id=rollout_id or new_rollout_id(),
            overrides=Overrides(batch_size, submit_rate, query_rate, max_attempts),
            state_path=None if no_journal else state or Path(settings.rollout.state_path),
        )
        show = show_progress(progress)
        outputs = run_outputs(
            settings,
            request.rollout_id,
            report=report,
            log_file=log_file,
            tty=show,
            state=state,
            journaled=not no_journal,
            id_flag="--id" if rollout_id is not None else None,
        )
        if dry_run:
            configure_logging(level=settings.logging.level, fmt=settings.logging.format)
            sys.exit(dry_run_outcome(request, run_output_problems(outputs)))
        check_run_outputs(outputs)
        where = log_to(settings, request.rollout_id, log_file, show)
        if where is not None:
            click.echo(f"rollout {request.rollout_id}: logs in {where}", err=True)
        drive = terminal_drive(show_progress=show, setup_done=setup_done)
        result, _ = asyncio.run(execute_rollout(request, drive=drive))
    sys.exit(finish(result, report, settings, journal=request.state_path))


def dry_run_outcome(request: RolloutRequest, problems: list[str]) -> int:
    """Print the dry run, then every file the run could not write; exit 3 if there is one."""
    asyncio.run(print_dry_run(request))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    return ExitCode.INVALID_INPUT if problems else ExitCode.SUCCEEDED


def dry_run_lines(
    loaded: LoadedPlan, targets: list[PhoneTarget], options: EngineOptions, job_duration_s: float
) -> list[str]:
    """What a rollout would do, without sending anything."""
    sizes = wave_sizes(options.waves, len(targets))
    estimate = estimate_duration_s(len(targets), options, job_duration_s=job_duration_s)
    lines = [
        f"plan {loaded.plan.name!r} from {loaded.source}: {len(targets)} phones",
        f"  batches: {batch_count(sizes, options.batch_size)} of at most {options.batch_size}",
        f"  waves: {sizes} (bake {options.bake_s:g} s between waves)",
        f"  rates: submit {options.submit_rate_per_s:g}/s, query {options.query_rate_per_s:g}/s",
        f"  estimated duration: {estimate:.1f} s (assuming jobs take {job_duration_s:g} s)",
        f"  retries: up to {options.retry.max_attempts} attempts; restart: {options.restart}",
    ]
    for target in targets[:SAMPLE_PHONES]:
        lines.append(f"  {target.phone_id}: {target.update.property}")
    lines.extend(f"  warning: {warning}" for warning in loaded.warnings)
    return lines


async def print_dry_run(request: RolloutRequest) -> int:
    """Print phones, batches, waves, the estimated duration and sample properties; send nothing.

    A plan with a ``query`` lists phones (a read-only call) to know the fleet.
    """
    client = await open_client(request.settings.cph) if request.loaded.plan.fleet.query else None
    try:
        targets = await resolve_targets(request.loaded, client)
    finally:
        if client is not None:
            await client.close()
    options = engine_options(
        request.loaded.plan.policy, request.settings.rollout, request.overrides
    )
    expected = request.settings.rollout.expected_job_duration_s
    for line in dry_run_lines(request.loaded, targets, options, expected):
        print(line)
    return 0
