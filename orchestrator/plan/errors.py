"""The one error of the plan package, and the collector that lets it report many problems at once.

An operator fixing a plan wants every mistake in one go, each pointing at a place they can open:
``plans/x.yaml:12: policy.waves[1]: …`` or ``fleet.csv:row 17 (line 18): phone_id: …``. So the
parts of the loader add :class:`PlanProblem` items to a :class:`Problems` collector and raise a
single :class:`PlanError` at the end of a stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import OrchestratorError

__all__ = ["MAX_REPORTED_PROBLEMS", "PlanError", "PlanProblem", "Problems"]

MAX_REPORTED_PROBLEMS = 20
"""At most this many problems are spelled out in a :class:`PlanError`; the rest are counted."""


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One thing wrong with a plan: where it is (file and line or row), which field, and why."""

    where: str
    field: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.where, self.field, self.message) if part)


class PlanError(OrchestratorError):
    """The plan or its fleet file is invalid; nothing was sent.

    ``problems`` holds the first :data:`MAX_REPORTED_PROBLEMS` problems and ``total`` counts all of
    them; the message lists the problems one a line.
    """

    def __init__(self, problems: Iterable[PlanProblem] | str, *, total: int | None = None) -> None:
        if isinstance(problems, str):
            self.problems: tuple[PlanProblem, ...] = (PlanProblem(problems, "", ""),)
            message = problems
        else:
            self.problems = tuple(problems)
            message = _summarize(self.problems, total)
        self.total = len(self.problems) if total is None else max(total, len(self.problems))
        super().__init__(message)


def _summarize(problems: tuple[PlanProblem, ...], total: int | None) -> str:
    lines = [str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS]]
    hidden = (total if total is not None else len(problems)) - len(lines)
    if hidden > 0:
        lines.append(f"… and {hidden} more problem{'s' if hidden > 1 else ''}")
    return "\n".join(lines) if lines else "the plan is invalid"


class Problems:
    """Collects problems, keeping the first few and counting the rest, then raises them together."""

    __slots__ = ("_kept", "total")

    def __init__(self) -> None:
        self._kept: list[PlanProblem] = []
        self.total = 0

    def add(self, where: str, field: str, message: str) -> None:
        """Record one problem (only its count once :data:`MAX_REPORTED_PROBLEMS` are kept)."""
        self.total += 1
        if len(self._kept) < MAX_REPORTED_PROBLEMS:
            self._kept.append(PlanProblem(where, field, message))

    def extend(self, error: PlanError) -> None:
        """Take over the problems of an error raised by a lower stage."""
        for problem in error.problems:
            self.add(problem.where, problem.field, problem.message)
        self.total += error.total - len(error.problems)

    def __bool__(self) -> bool:
        return self.total > 0

    def raise_if_any(self) -> None:
        """Raise a :class:`PlanError` with everything collected so far, if anything was."""
        if self.total:
            raise PlanError(self._kept, total=self.total)
