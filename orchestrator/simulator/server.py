"""Starting and stopping the simulator: an async context manager for tests, a blocking runner for the CLI.

Access logging is off: at hundreds of requests a second it would cost more than the simulation itself,
and the stats endpoint already says what happened.
"""

from __future__ import annotations

import asyncio
import signal
from types import TracebackType

from aiohttp import web

from orchestrator.clock import Clock, SystemClock
from orchestrator.simulator.app import SimulatorApp
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.state import SimState

__all__ = ["SimulatorServer", "run_forever"]

SHUTDOWN_TIMEOUT_S = 2.0
"""How long stopping waits for requests still in flight (a sleeping latency spike, say)."""


class SimulatorServer:
    """One simulator listening on ``host:port`` (``port=0`` picks a free one; see :attr:`url`)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.host = host
        self.port = port
        self.state = SimState(config, self.clock)
        self.app = SimulatorApp(self.state, config, self.clock)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The CPH base URL, also the IAM endpoint (``POST {url}/v3/auth/tokens``)."""
        if self._runner is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve on the running event loop."""
        runner = web.AppRunner(
            self.app.build(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def _serve_until_signalled(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SimulatorServer(config, host=host, port=port) as sim:
            print(
                f"simulator listening on {sim.url} "
                f"({config.phones} phones, profile {config.profile.name})",
                flush=True,
            )
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_forever(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8780) -> None:
    """Serve until SIGINT or SIGTERM (``cph-orchestrator simulator``); blocks the calling thread."""
    asyncio.run(_serve_until_signalled(config, host, port))
