"""The benchmark harness behind ``make bench`` (``python -m orchestrator.benchmark``).

It measures the real command, ``cph-orchestrator rollout``, against the simulator running in a separate
process: wall time against the bound ``T_min = N/(R·B) + D_max`` of the simulator's limits, where that
wall time went (setup, engine, teardown, from the rollout's own log), the rollout process's own CPU
time and peak RSS (from ``wait4`` in a fresh launcher, :mod:`orchestrator.benchmark.launcher`), and the
calls the simulator saw. The same run measures a script written with Huawei's official SDK
(:mod:`orchestrator.benchmark.sdk_peer`) on a smaller fleet, and our tool on that fleet, so the
speed-up is measured at equal limits.

Nothing here is imported by the orchestrator itself; the package only drives processes.
"""

from __future__ import annotations

__all__: list[str] = []
