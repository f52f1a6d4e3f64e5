"""The ``cph-orchestrator`` command line: parse arguments, call the parts, map errors to exit codes.

Exit codes are a contract (see README): 0 all succeeded, 1 finished with failed phones, 2 aborted,
3 invalid plan, settings or input (nothing sent), 4 fatal API or auth error, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import SecretStr, ValidationError

from orchestrator import __version__, journal_commands
from orchestrator.cph.errors import ApiError
from orchestrator.daemon import remote
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.logging import configure_logging
from orchestrator.plan import load_plan
from orchestrator.run import ExitCode, RolloutRequest, run_demo, run_rollout
from orchestrator.run import dry_run as run_dry
from orchestrator.service import Overrides, new_rollout_id
from orchestrator.settings import Settings, load_settings

__all__ = ["ExitCode", "main"]

P = ParamSpec("P")
R = TypeVar("R")


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


STATE_OPTION = click.option(
    "--state",
    type=click.Path(path_type=Path),
    help="The SQLite journal (default: rollout.state_path, cph-runs/journal.sqlite).",
)
RUN_OPTIONS = [
    click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML)."),
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


def _load(config: Path | None) -> Settings:
    return load_settings(config)


def _log_to(settings: Settings, rollout_id: str, log_file: Path | None, tty: bool) -> Path | None:
    """JSON logs go to stderr, or to a file when the terminal shows the progress bar."""
    if log_file is None and tty:
        log_file = Path(settings.rollout.runs_dir) / f"{rollout_id}.log.jsonl"
    stream = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = log_file.open("a", encoding="utf-8")
    configure_logging(level=settings.logging.level, fmt=settings.logging.format, stream=stream)
    return log_file


@cli.command()
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
@click.option("--strict", is_flag=True, default=None, help="Unknown property keys are errors.")
@exit_on_errors
def validate(plan: Path, config: Path | None, strict: bool | None) -> None:
    """Check a plan without sending anything (exit 3 when it is invalid)."""
    _load(config)
    loaded = load_plan(plan, strict=strict)
    query = loaded.plan.fleet.query
    targets = loaded.targets(())
    note = " (plus the phones of its query, resolved at run time)" if query else ""
    click.echo(f"plan {loaded.plan.name!r} is valid: {len(targets)} phones{note}")
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}")


@cli.command()
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
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
    # Set-up builds several objects per phone, all kept to the end: the cyclic collector would
    # rescan them again and again. drive_engine freezes them and turns it back on.
    gc.disable()
    settings = _load(config)
    loaded = load_plan(plan, strict=strict)
    request = RolloutRequest(
        loaded=loaded,
        settings=settings,
        rollout_id=rollout_id or new_rollout_id(),
        overrides=Overrides(batch_size, submit_rate, query_rate, max_attempts),
        report_path=report,
        show_progress=sys.stderr.isatty() if progress is None else progress,
        state_path=None if no_journal else state or Path(settings.rollout.state_path),
    )
    if dry_run:
        configure_logging(level=settings.logging.level, fmt=settings.logging.format)
        sys.exit(asyncio.run(run_dry(request)))
    where = _log_to(settings, request.rollout_id, log_file, request.show_progress)
    if where is not None:
        click.echo(f"rollout {request.rollout_id}: logs in {where}", err=True)
    sys.exit(asyncio.run(run_rollout(request)))


@cli.command()
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
    show = sys.stderr.isatty() if progress is None else progress
    log_file = runs_dir / "demo.log.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as stream:
        configure_logging(level="info", fmt="json", stream=stream)
        click.echo(f"demo: JSON logs in {log_file}", err=True)
        code = asyncio.run(
            run_demo(
                plan_path=plan_path,
                phones=phones,
                profile=profile,
                seed=seed,
                runs_dir=runs_dir,
                show_progress=show,
            )
        )
    sys.exit(code)


@dataclass(frozen=True)
class _RunFlags:
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
        return Overrides(self.batch_size, self.submit_rate, self.query_rate, self.max_attempts)

    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress


def _prepare_run(flags: _RunFlags, rollout_id: str) -> tuple[Settings, Path]:
    settings = _load(flags.config)
    where = _log_to(settings, rollout_id, flags.log_file, flags.show_progress())
    if where is not None:
        click.echo(f"rollout {rollout_id}: logs in {where}", err=True)
    return settings, flags.state or Path(settings.rollout.state_path)


@cli.command()
@click.argument("rollout_id")
@run_options
@exit_on_errors
def resume(rollout_id: str, **flags: Any) -> None:
    """Continue an interrupted or crashed rollout: running jobs are tracked, not resent."""
    run = _RunFlags(**flags)
    settings, state = _prepare_run(run, rollout_id)
    code = asyncio.run(
        journal_commands.resume(
            rollout_id=rollout_id,
            settings=settings,
            state_path=state,
            overrides=run.overrides(),
            report_path=run.report,
            show_progress=run.show_progress(),
        )
    )
    sys.exit(code)


@cli.command("rerun-failed")
@click.argument("rollout_id")
@click.option("--error-code", help="Only the phones that failed with this code.")
@click.option("--id", "new_id", help="Name the new rollout (default: generated).")
@run_options
@exit_on_errors
def rerun_failed(rollout_id: str, error_code: str | None, new_id: str | None, **flags: Any) -> None:
    """Start a new rollout of the phones that failed in ROLLOUT_ID."""
    run = _RunFlags(**flags)
    new_id = new_id or new_rollout_id()
    settings, state = _prepare_run(run, new_id)
    code = asyncio.run(
        journal_commands.rerun_failed(
            rollout_id=rollout_id,
            new_id=new_id,
            error_code=error_code,
            settings=settings,
            state_path=state,
            overrides=run.overrides(),
            report_path=run.report,
            show_progress=run.show_progress(),
        )
    )
    sys.exit(code)


def _state_path(config: Path | None, state: Path | None, settings: Settings | None = None) -> Path:
    """The journal to read; it must exist (reading never creates one)."""
    path = state or Path((settings or _load(config)).rollout.state_path)
    if not path.is_file():
        raise ConfigError(f"no journal at {path} (use --state to name it)")
    return path


@cli.command()
@click.argument("rollout_id", required=False)
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
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
        _print_daemon_answer(lambda: remote.fetch_status(daemon_url, rollout_id))
        return
    path = _state_path(config, state)
    sys.exit(
        asyncio.run(
            journal_commands.show_status(state_path=path, rollout_id=rollout_id, as_json=as_json)
        )
    )


@cli.command()
@click.argument("rollout_id")
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
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
    path = _state_path(config, state)
    sys.exit(
        asyncio.run(
            journal_commands.show_report(
                state_path=path, rollout_id=rollout_id, fmt=fmt, output=output
            )
        )
    )


@cli.command()
@click.argument("rollout_id", required=False)
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
@STATE_OPTION
@exit_on_errors
def compact(rollout_id: str | None, config: Path | None, state: Path | None) -> None:
    """Fold saved changes into the phones' rows: of one rollout, or of every ended one.

    Reads are exact without it; it makes reports of large rollouts faster and lets the journal
    reuse the space. The daemon does it itself when a rollout ends.
    """
    settings = _load(config)
    path = _state_path(config, state, settings)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    sys.exit(asyncio.run(journal_commands.compact(state_path=path, rollout_id=rollout_id)))


def _print_daemon_answer(ask: Callable[[], Any]) -> None:
    """Print the daemon's JSON answer; an error answer goes to stderr with exit 3 (4 if 5xx)."""
    try:
        answer = ask()
    except remote.DaemonRequestError as error:
        click.echo(f"error: {error}", err=True)
        if isinstance(error.body, dict) and error.body.get("problems"):
            for problem in error.body["problems"]:
                where = ": ".join(str(problem.get(k) or "") for k in ("where", "field", "message"))
                click.echo(f"  {where}", err=True)
        server_side = error.status >= 500 or error.status == 0
        sys.exit(ExitCode.API_FATAL if server_side else ExitCode.INVALID_INPUT)
    click.echo(json.dumps(answer, indent=1, ensure_ascii=False))


@cli.command()
@click.option("--config", type=click.Path(path_type=Path), help="Settings file (TOML).")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address of the control API (default: [daemon] listen, 127.0.0.1:8740).",
)
@STATE_OPTION
@exit_on_errors
def daemon(config: Path | None, listen: str | None, state: Path | None) -> None:
    """Serve the HTTP control API and run submitted rollouts; resume unfinished ones at start."""
    from orchestrator.daemon.server import Daemon, parse_listen, serve

    settings = _load(config)
    host, port = parse_listen(listen or settings.daemon.listen)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    server = Daemon(
        settings=settings,
        state_path=state or Path(settings.rollout.state_path),
        host=host,
        port=port,
    )
    sys.exit(asyncio.run(serve(server)))


@cli.command()
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("--daemon", "daemon_url", required=True, metavar="URL", help="The daemon's URL.")
@click.option("--id", "rollout_id", help="Name the rollout (default: generated by the daemon).")
@exit_on_errors
def submit(plan: Path, daemon_url: str, rollout_id: str | None) -> None:
    """Check PLAN here, then send it to a running daemon (token: CPH_DAEMON_TOKEN)."""
    _print_daemon_answer(lambda: remote.submit_plan(daemon_url, plan, rollout_id=rollout_id))


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
