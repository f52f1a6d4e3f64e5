"""The command line's answer to an error: a one-line message and the contract's exit code.

Every command is wrapped in :func:`exit_on_errors`, so no command decides exit codes for errors
on its own and no traceback reaches the operator for an expected failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click
from pydantic import ValidationError

from orchestrator.errors import OrchestratorError
from orchestrator.rollouts.outcome import ExitCode

__all__ = ["exit_on_errors"]

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
        except ValidationError as exc:
            click.echo(f"error: {_validation_message(exc)}", err=True)
            sys.exit(ExitCode.INVALID_INPUT)
        except OrchestratorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper
