"""Shared fixtures: a factory that starts simulators on loopback and stops them after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from orchestrator.clock import Clock, FakeClock
from orchestrator.simulator import SimulatorConfig, SimulatorServer


class SimulatorFactory(Protocol):
    """Start a simulator: ``await simulator(config)`` or ``await simulator(phones=10, profile="flaky")``."""

    async def __call__(
        self, config: SimulatorConfig | None = None, *, clock: Clock | None = None, **fields: Any
    ) -> SimulatorServer: ...


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorFactory]:
    """Simulators on ``127.0.0.1`` with a free port, on a :class:`FakeClock` unless told otherwise."""
    servers: list[SimulatorServer] = []

    async def start(
        config: SimulatorConfig | None = None, *, clock: Clock | None = None, **fields: Any
    ) -> SimulatorServer:
        server = SimulatorServer(
            config if config is not None else SimulatorConfig(**fields),
            clock=clock if clock is not None else FakeClock(),
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
