"""A faithful Huawei Cloud Phone (CPH) server for tests, demos and benchmarks.

It answers the CPH endpoints the orchestrator uses (and IAM's token endpoint) the way cph-api.md says the
real service does, on an injected clock, with seeded fault profiles. It deliberately imports nothing
from ``orchestrator.cph.client``/``models``: the simulator and the client must not share a bug.
"""

from orchestrator.simulator.config import IamUser, SimulatorConfig
from orchestrator.simulator.profiles import (
    PROFILES,
    DurationDist,
    FaultProfile,
    apply_overrides,
    parse_overrides,
)
from orchestrator.simulator.server import SimulatorServer, run_forever
from orchestrator.simulator.state import SimState

__all__ = [
    "PROFILES",
    "DurationDist",
    "FaultProfile",
    "IamUser",
    "SimState",
    "SimulatorConfig",
    "SimulatorServer",
    "apply_overrides",
    "parse_overrides",
    "run_forever",
]
