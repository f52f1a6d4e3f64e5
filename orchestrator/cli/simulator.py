"""The ``simulator`` and ``demo`` commands: serve a faithful CPH API, or roll a plan out to one.

``demo`` starts a simulator in this process, rolls a plan out to thousands of simulated phones
and checks that every phone holds the plan's properties afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from orchestrator.cli.errors import exit_on_errors
from orchestrator.cli.options import show_progress
from orchestrator.cli.process import rollout_collector_tuning
from orchestrator.cli.terminal import finish, terminal_drive
from orchestrator.errors import ConfigError
from orchestrator.logging import configure_logging
from orchestrator.plan import PhoneTarget
from orchestrator.rollouts.execute import RolloutRequest, execute_rollout
from orchestrator.rollouts.outputs import PlannedFile, check_files
from orchestrator.rollouts.prepare import Overrides, new_rollout_id
from orchestrator.settings import Settings

__all__ = ["DEMO_TOKEN", "demo", "run_demo", "simulator"]

DEMO_TOKEN = "demo-token"
"""The simulator started by ``demo`` accepts this token; it guards nothing real."""
DEMO_LOG, DEMO_JOURNAL, DEMO_REPORT = "demo.log.jsonl", "demo-journal.sqlite", "demo-report.json"
"""What ``demo`` writes into its ``--runs-dir``."""


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8780, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--phones", default=1000, show_default=True, type=click.IntRange(0), help="Fleet size."
)
@click.option(
    "--profile", default="none", show_default=True, help="Fault profile: none, flaky, hostile."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option("--project-id", default="proj123", show_default=True, help="Project ID in the paths.")
@click.option("--token", envvar="CPH_SIM_TOKEN", help="Static token to accept (X-Auth-Token).")
@click.option("--ak", envvar="CPH_SIM_AK", help="Access key to accept (AK/SK signing).")
@click.option("--sk", envvar="CPH_SIM_SK", help="Secret key of --ak.")
@click.option(
    "--iam-user",
    "iam_users",
    multiple=True,
    metavar="NAME:PASSWORD:DOMAIN",
    help="An IAM user that may log in (repeatable).",
)
@click.option(
    "--max-batch",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Most phones one batch request may carry.",
)
@click.option(
    "--submit-rate", type=float, default=None, help="Submit requests per second (none: no limit)."
)
@click.option(
    "--query-rate", type=float, default=None, help="Query requests per second (none: no limit)."
)
@click.option(
    "--token-ttl-s",
    default=86400.0,
    show_default=True,
    type=float,
    help="Lifetime of IAM-issued tokens.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KNOB=VALUE",
    help="Override one fault-profile knob (repeatable), e.g. job_fail_rate=0.1.",
)
@exit_on_errors
def simulator(
    host: str,
    port: int,
    phones: int,
    profile: str,
    seed: int,
    project_id: str,
    token: str | None,
    ak: str | None,
    sk: str | None,
    iam_users: tuple[str, ...],
    max_batch: int,
    submit_rate: float | None,
    query_rate: float | None,
    token_ttl_s: float,
    overrides: tuple[str, ...],
) -> None:
    """Serve a faithful CPH API (and IAM token endpoint) for demos, tests and benchmarks."""
    from orchestrator.simulator import SimulatorConfig, run_forever
    from orchestrator.simulator.profiles import resolve_profile

    config = SimulatorConfig(
        phones=phones,
        seed=seed,
        project_id=project_id,
        profile=resolve_profile(profile, overrides),
        max_batch=max_batch,
        submit_rate_per_s=submit_rate,
        query_rate_per_s=query_rate,
        token=SecretStr(token) if token else None,
        ak=ak,
        sk=SecretStr(sk) if sk else None,
        iam_users=_parse_iam_users(iam_users),
        token_ttl_s=token_ttl_s,
    )
    run_forever(config, host, port)


def _parse_iam_users(specs: tuple[str, ...]) -> dict[str, tuple[SecretStr, str]]:
    users: dict[str, tuple[SecretStr, str]] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        password, _, domain = rest.rpartition(":")
        if not (name and password and domain):
            raise ConfigError("--iam-user takes NAME:PASSWORD:DOMAIN")
        users[name] = (SecretStr(password), domain)
    return users


@click.command()
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    default=Path("config/plans/demo.yaml"),
    show_default=True,
    help="Plan to roll out.",
)
@click.option(
    "--phones",
    default=5000,
    show_default=True,
    type=click.IntRange(1),
    help="Simulated fleet size.",
)
@click.option("--profile", default="flaky", show_default=True, help="Simulator fault profile.")
@click.option("--seed", default=7, show_default=True, type=int, help="Simulator seed.")
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=Path("cph-runs"),
    show_default=True,
    help="Where the report and the log go.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
@exit_on_errors
def demo(
    plan_path: Path, phones: int, profile: str, seed: int, runs_dir: Path, progress: bool | None
) -> None:
    """Start a simulator and roll a plan out to thousands of simulated phones."""
    log_file = runs_dir / DEMO_LOG
    check_files(
        PlannedFile(runs_dir / name, "--runs-dir", runs_dir)
        for name in (DEMO_LOG, DEMO_JOURNAL, DEMO_REPORT)
    )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as stream, rollout_collector_tuning() as setup_done:
        configure_logging(level="info", fmt="json", stream=stream)
        click.echo(f"demo: JSON logs in {log_file}", err=True)
        code = asyncio.run(
            run_demo(
                plan_path=plan_path,
                phones=phones,
                profile=profile,
                seed=seed,
                runs_dir=runs_dir,
                show_progress=show_progress(progress),
                setup_done=setup_done,
            )
        )
    sys.exit(code)


async def run_demo(
    *,
    plan_path: Path,
    phones: int,
    profile: str,
    seed: int,
    runs_dir: Path,
    show_progress: bool,
    setup_done: Callable[[], None],
) -> int:
    """Start a simulator in this process and roll ``plan_path`` out to it, then check the result."""
    from orchestrator.plan import load_plan
    from orchestrator.settings import CphSettings, RolloutSettings
    from orchestrator.simulator import SimulatorConfig, SimulatorServer
    from orchestrator.simulator.profiles import resolve_profile

    config = SimulatorConfig(
        phones=phones,
        seed=seed,
        profile=resolve_profile(profile, ()),
        token=SecretStr(DEMO_TOKEN),
        submit_rate_per_s=20.0,
        query_rate_per_s=50.0,
    )
    loaded = load_plan(plan_path)
    async with SimulatorServer(config, host="127.0.0.1", port=0) as sim:
        print(f"simulator: {phones} phones, profile {profile}, at {sim.url}", file=sys.stderr)
        settings = Settings(
            cph=CphSettings(
                endpoint=sim.url,
                project_id=config.project_id,
                auth="token",
                auth_token=SecretStr(DEMO_TOKEN),
            ),
            rollout=RolloutSettings(
                submit_rate_per_s=30.0,
                query_rate_per_s=50.0,
                first_poll_s=1.0,
                progress_interval_s=5.0,
                runs_dir=str(runs_dir),
            ),
        )
        request = RolloutRequest(
            loaded=loaded,
            settings=settings,
            rollout_id=new_rollout_id(),
            overrides=Overrides(),
            state_path=runs_dir / DEMO_JOURNAL,
        )
        drive = terminal_drive(show_progress=show_progress, setup_done=setup_done)
        result, targets = await execute_rollout(request, drive=drive)
        code = finish(result, runs_dir / DEMO_REPORT, settings, journal=request.state_path)
        print(_verify_demo(targets, sim.state.properties))
    return code


def _verify_demo(targets: list[PhoneTarget], properties: Any) -> str:
    """Compare what the simulator holds with what the plan asked for."""
    matching = sum(
        1
        for target in targets
        if all(properties(target.phone_id).get(k) == v for k, v in target.properties.items())
    )
    return f"  verified: {matching} of {len(targets)} phones hold the plan's properties"
