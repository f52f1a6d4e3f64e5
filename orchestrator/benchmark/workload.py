"""What a benchmark run rolls out: the simulator's limits, the bound they imply, and the input files.

The files are what a user writes: a CSV fleet with a ``phone_id`` column, a plan naming it with a
per-phone ``{index}`` template, and a settings TOML that points at the simulator with the account's
limits. Nothing else is tuned for the benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.benchmark.processes import PROJECT_ID

__all__ = ["Limits", "RolloutInputs", "write_rollout_inputs"]

TIMEOUT_FLOOR_S = 120.0
TIMEOUT_FACTOR = 5.0
"""A run is killed after ``max(TIMEOUT_FLOOR_S, TIMEOUT_FACTOR * T_min)``."""


@dataclass(frozen=True)
class Limits:
    """The simulated account: submit and query limits, largest batch, job durations (uniform)."""

    submit_rate_per_s: float
    query_rate_per_s: float
    max_batch: int
    job_min_s: float
    job_max_s: float
    timeout_floor_s: float = TIMEOUT_FLOOR_S

    def t_min_s(self, phones: int) -> float:
        """``T_min = N/(R·B) + D_max``: no tool can finish sooner under these limits."""
        return phones / (self.submit_rate_per_s * self.max_batch) + self.job_max_s

    def timeout_s(self, phones: int) -> float:
        """How long a run may take before it is killed as hung."""
        return max(self.timeout_floor_s, TIMEOUT_FACTOR * self.t_min_s(phones))

    def simulator_args(self, phones: int) -> list[str]:
        """``cph-orchestrator simulator`` options for a fleet of ``phones`` under these limits."""
        return [
            "--phones",
            str(phones),
            "--profile",
            "none",
            "--submit-rate",
            str(self.submit_rate_per_s),
            "--query-rate",
            str(self.query_rate_per_s),
            "--max-batch",
            str(self.max_batch),
            "--set",
            f"job_duration=uniform:{self.job_min_s}:{self.job_max_s}",
        ]

    def describe(self) -> str:
        """One line for tables: ``R=50/s Q=100/s B=100 jobs 1-3 s``."""
        return (
            f"R={self.submit_rate_per_s:g}/s Q={self.query_rate_per_s:g}/s B={self.max_batch}"
            f" jobs {self.job_min_s:g}-{self.job_max_s:g} s"
        )


@dataclass(frozen=True)
class RolloutInputs:
    """The files of one rollout."""

    plan: Path
    settings: Path
    journal: Path
    report: Path


def _plan_text(name: str, batch_size: int) -> str:
    return "\n".join(
        [
            f"name: {name}",
            "fleet:",
            "  file: fleet.csv",
            "properties:",
            '  sys.prop.writewifissid: "bench_{index:07d}"',
            "  persist.sys.locale: en-US",
            "policy:",
            f"  batch_size: {batch_size}",
            '  waves: ["100%"]',
            "",
        ]
    )


def _settings_text(endpoint: str, limits: Limits, runs_dir: Path) -> str:
    return "\n".join(
        [
            "[cph]",
            f"endpoint = {json.dumps(endpoint)}",
            f"project_id = {json.dumps(PROJECT_ID)}",
            'auth = "token"',
            "",
            "[rollout]",
            f"submit_rate_per_s = {limits.submit_rate_per_s}",
            f"query_rate_per_s = {limits.query_rate_per_s}",
            f"batch_size = {limits.max_batch}",
            f"runs_dir = {json.dumps(str(runs_dir))}",
            "",
        ]
    )


def write_rollout_inputs(
    directory: Path, endpoint: str, phone_ids: Sequence[str], limits: Limits
) -> RolloutInputs:
    """Write ``fleet.csv``, ``plan.yaml`` and ``settings.toml`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    fleet = directory / "fleet.csv"
    with fleet.open("w", encoding="utf-8") as handle:
        handle.write("phone_id\n")
        handle.writelines(f"{phone_id}\n" for phone_id in phone_ids)
    plan = directory / "plan.yaml"
    plan.write_text(_plan_text(f"bench-{len(phone_ids)}", limits.max_batch), encoding="utf-8")
    settings = directory / "settings.toml"
    settings.write_text(_settings_text(endpoint, limits, directory / "runs"), encoding="utf-8")
    return RolloutInputs(plan, settings, directory / "journal.sqlite", directory / "report.json")
