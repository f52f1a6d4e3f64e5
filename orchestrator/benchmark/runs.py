"""One measured rollout of our tool, and one of the SDK peer, each against a fresh simulator.

The fleet is listed and the input files written before the clock starts; the simulator's counters are
reset then, so the calls it reports are the run's own. Calls are taken from the simulator (what the
cloud saw), not from the tool's account of itself; the report's ``api_calls`` are kept beside them.
The rollout's wall time is split into setup, engine and teardown from the events it logs
(:mod:`~orchestrator.benchmark.phases`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.benchmark.phases import Phases, rollout_phases
from orchestrator.benchmark.processes import (
    PROJECT_ID,
    SIM_TOKEN,
    MeasuredRun,
    SimulatorProcess,
    clean_env,
    run_measured,
)
from orchestrator.benchmark.workload import Limits, write_rollout_inputs

__all__ = ["BenchmarkError", "PeerFigures", "RolloutFigures", "measure_ours", "measure_sdk_peer"]

SUBMIT_OPERATIONS = ("UpdateCloudPhoneProperty", "RestartCloudPhone")
QUERY_OPERATIONS = ("ShowJob", "ListJobs", "ListCloudPhones", "ShowCloudPhoneDetail")
PEER_AK = "AKBENCHPEER"
PEER_SK = "SKBENCHPEER-secret"


class BenchmarkError(RuntimeError):
    """A measured run did not complete (crash, hang, wrong fleet)."""


@dataclass(frozen=True)
class CallCounts:
    """What the simulator saw during a run."""

    submit: int
    query: int
    throttled: int
    jobs_succeeded: int

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> CallCounts:
        """Read ``GET /_sim/stats``."""
        requests: dict[str, int] = stats["requests"]
        return cls(
            submit=sum(requests.get(name, 0) for name in SUBMIT_OPERATIONS),
            query=sum(requests.get(name, 0) for name in QUERY_OPERATIONS),
            throttled=int(stats["throttled"]["total"]),
            jobs_succeeded=int(stats["jobs"]["succeeded"]),
        )


@dataclass(frozen=True)
class RolloutFigures:
    """One run of ``cph-orchestrator rollout``."""

    phones: int
    run: MeasuredRun
    calls: CallCounts
    succeeded: int
    phases: Phases
    report_api_calls: dict[str, int] = field(default_factory=dict)
    command: str = ""


@dataclass(frozen=True)
class PeerFigures:
    """One run of the SDK peer script."""

    phones: int
    run: MeasuredRun
    calls: CallCounts
    succeeded: int
    script_wall_s: float
    throttled_retries: int


def rollout_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m orchestrator``."""
    script = Path(sys.executable).with_name("cph-orchestrator")
    if script.is_file():
        return [str(script)]
    found = shutil.which("cph-orchestrator")
    return [found] if found else [sys.executable, "-m", "orchestrator"]


def _listed_fleet(sim: SimulatorProcess, phones: int) -> list[str]:
    phone_ids = sim.phone_ids()
    if len(phone_ids) != phones:
        raise BenchmarkError(f"the simulator listed {len(phone_ids)} phones, not {phones}")
    return phone_ids


def _checked(run: MeasuredRun, what: str, stderr_path: Path) -> MeasuredRun:
    if run.exit_code not in (0, 1):
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise BenchmarkError(f"{what} exited with {run.exit_code}:\n{tail}")
    return run


def _phases(run: MeasuredRun, log_path: Path) -> Phases:
    """Setup, engine and teardown of the run, from the rollout's JSON log on its stderr."""
    with log_path.open(encoding="utf-8", errors="replace") as log:
        try:
            return rollout_phases(log, started_at_s=run.started_at_s, wall_s=run.wall_s)
        except ValueError as error:
            raise BenchmarkError(f"{log_path}: {error}") from error


def measure_ours(phones: int, limits: Limits, workdir: Path) -> RolloutFigures:
    """Roll a plan out to ``phones`` phones with the real command, journal on."""
    workdir.mkdir(parents=True, exist_ok=True)
    with SimulatorProcess(limits.simulator_args(phones), log_path=workdir / "sim.log") as sim:
        inputs = write_rollout_inputs(workdir, sim.url, _listed_fleet(sim, phones), limits)
        args = ["rollout", str(inputs.plan), "--config", str(inputs.settings)]
        args += ["--state", str(inputs.journal), "--no-progress", "--report", str(inputs.report)]
        command = rollout_command() + args
        sim.reset_stats()
        run = run_measured(
            command,
            cwd=workdir,
            env=clean_env({"CPH_AUTH_TOKEN": SIM_TOKEN}),
            stdout_path=workdir / "rollout.out",
            stderr_path=workdir / "rollout.log",
            timeout_s=limits.timeout_s(phones),
        )
        calls = CallCounts.from_stats(sim.stats())
    _checked(run, "cph-orchestrator rollout", workdir / "rollout.log")
    report = json.loads(inputs.report.read_text(encoding="utf-8"))
    return RolloutFigures(
        phones=phones,
        run=run,
        calls=calls,
        succeeded=int(report["counts"]["succeeded"]),
        phases=_phases(run, workdir / "rollout.log"),
        report_api_calls=dict(report["api_calls"]),
        command="cph-orchestrator " + " ".join(args),
    )


def measure_sdk_peer(phones: int, limits: Limits, workdir: Path) -> PeerFigures:
    """Run the official-SDK script on ``phones`` phones (AK/SK) against a fresh simulator."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    sim_args = [*limits.simulator_args(phones), "--ak", PEER_AK, "--sk", PEER_SK]
    with SimulatorProcess(sim_args, log_path=workdir / "sim.log") as sim:
        phones_file = workdir / "phones.txt"
        phones_file.write_text("\n".join(_listed_fleet(sim, phones)) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "orchestrator.benchmark.sdk_peer"]
        command += ["--endpoint", sim.url, "--project-id", PROJECT_ID, "--ak", PEER_AK]
        command += ["--sk", PEER_SK, "--phones-file", str(phones_file)]
        command += ["--batch", str(limits.max_batch)]
        sim.reset_stats()
        run = run_measured(
            command,
            cwd=workdir,
            env=clean_env({"HOME": str(home)}),
            stdout_path=workdir / "peer.out",
            stderr_path=workdir / "peer.log",
            timeout_s=limits.timeout_s(phones) * 20,
        )
        calls = CallCounts.from_stats(sim.stats())
    _checked(run, "the SDK peer script", workdir / "peer.log")
    own = json.loads((workdir / "peer.out").read_text(encoding="utf-8").strip().splitlines()[-1])
    return PeerFigures(
        phones=phones,
        run=run,
        calls=calls,
        succeeded=int(own["succeeded"]),
        script_wall_s=float(own["script_wall_s"]),
        throttled_retries=int(own["throttled_retries"]),
    )
