"""The ``cph-orchestrator`` command line: parse arguments, call the parts, map errors to exit codes.

Exit codes are a contract (see README): 0 all succeeded, 1 finished with failed phones, 2 aborted,
3 invalid plan, settings or input (nothing sent), 4 fatal API or auth error, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import IntEnum
from functools import wraps
from typing import ParamSpec, TypeVar

import click
from pydantic import SecretStr, ValidationError

from orchestrator import __version__
from orchestrator.cph.errors import ApiError
from orchestrator.errors import ConfigError, OrchestratorError

__all__ = ["ExitCode", "main"]

P = ParamSpec("P")
R = TypeVar("R")


class ExitCode(IntEnum):
    """Process exit codes other tools rely on."""

    SUCCEEDED = 0
    FAILED_PHONES = 1
    ABORTED = 2
    INVALID_INPUT = 3
    API_FATAL = 4
    INTERRUPTED = 130


def _validation_message(error: ValidationError) -> str:
    problems = (f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in error.errors())
    return "invalid options: " + "; ".join(problems)


def exit_on_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the orchestrator's errors into a one-line message and the contract's exit code."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(ExitCode.INVALID_INPUT)
        except ValidationError as exc:
            click.echo(f"error: {_validation_message(exc)}", err=True)
            sys.exit(ExitCode.INVALID_INPUT)
        except ApiError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(ExitCode.API_FATAL)
        except OrchestratorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(ExitCode.INVALID_INPUT)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cph-orchestrator")
def cli() -> None:
    """Roll property changes out to fleets of Huawei Cloud Phones."""


@cli.command()
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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cph-orchestrator")
