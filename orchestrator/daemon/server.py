"""The daemon process: open the journal, resume its unfinished rollouts, serve, stop on SIGTERM.

On SIGTERM (or SIGINT) the listener closes first (no new requests), then every engine stops
submitting and tracks what is in flight until its grace period ends, each run records how it ended,
and the journal is closed: exit 0. The next start resumes whatever was left unfinished.

aiohttp's HTTP parser reads every request before the application sees it, and refuses on its own a
request line longer than :data:`MAX_REQUEST_LINE_BYTES`, a header name or value longer than
:data:`MAX_HEADER_FIELD_BYTES`, more than :data:`MAX_HEADERS` headers, and any bytes that are not
HTTP (a bad method, URL or chunk framing). Those answers are aiohttp's own
``400 text/plain`` (aiohttp offers no hook to shape them) and the connection is closed. What aiohttp
reports about them goes to :func:`protocol_logger`, which logs ``daemon.request_refused`` with the
error's class only: no traceback, and none of the request's bytes (a header may hold a token).
Requests within these limits reach the application, whose own lower limits answer in JSON.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError
from pydantic import SecretStr

from orchestrator.daemon.api import create_app
from orchestrator.daemon.manager import RolloutManager
from orchestrator.errors import ConfigError
from orchestrator.rollouts.journaled import open_store
from orchestrator.settings import Settings
from orchestrator.store.base import RolloutStore

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_FIELD_BYTES",
    "MAX_REQUEST_LINE_BYTES",
    "Daemon",
    "check_exposure",
    "parse_listen",
    "protocol_logger",
    "serve",
]

log = structlog.get_logger("orchestrator.daemon")

MAX_REQUEST_LINE_BYTES = 8190
"""Longest request line (method, target, version) the HTTP parser reads; 400 text beyond."""
MAX_HEADER_FIELD_BYTES = 8190
"""Longest header name or value the HTTP parser reads; 400 text beyond."""
MAX_HEADERS = 128
"""Most headers in one request the HTTP parser reads; 400 text beyond."""
_REFUSALS = (HttpProcessingError, web.RequestPayloadError)


class _ProtocolEvents(logging.Handler):
    """aiohttp's reports about requests it refused, as catalogued events without a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _REFUSALS):
            # aiohttp says debug for a first request that is not HTTP at all (TLS, a port scan)
            level = logging.DEBUG if record.levelno < logging.WARNING else logging.WARNING
            log.log(level, "daemon.request_refused", error_class=type(error).__name__)
        elif record.levelno >= logging.ERROR:
            error_class = type(error).__name__ if error is not None else "unknown"
            log.error("daemon.request_failed", method="-", route="-", error_class=error_class)


def protocol_logger() -> logging.Logger:
    """The logger given to aiohttp's protocol layer: it reaches the daemon's log as events only.

    It stands outside :mod:`logging`'s hierarchy, so no root handler prints aiohttp's tracebacks.
    """
    logger = logging.Logger("orchestrator.daemon.http")
    logger.propagate = False
    logger.addHandler(_ProtocolEvents())
    return logger


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8740`` for IPv6) → host and port; :class:`ConfigError` if malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen takes HOST:PORT, such as 127.0.0.1:8740 (got {text!r})")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: SecretStr | None) -> None:
    """Refuse to serve the control API beyond this machine without a bearer token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: set CPH_DAEMON_TOKEN or [daemon] token,"
            " or listen on 127.0.0.1"
        )


class Daemon:
    """One daemon: a journal, a :class:`RolloutManager` and the HTTP listener.

    ``start()`` returns once it listens and every unfinished rollout was resumed (or skipped);
    ``stop()`` is the SIGTERM path. Tests drive both directly.
    """

    def __init__(self, *, settings: Settings, state_path: Path, host: str, port: int) -> None:
        check_exposure(host, settings.daemon.token)
        self._settings = settings
        self._state_path = state_path
        self._host = host
        self._port = port
        self._store: RolloutStore | None = None
        self._runner: web.AppRunner | None = None
        self.manager: RolloutManager | None = None
        self.url = ""

    async def start(self) -> None:
        """Open the journal, listen, resume the journal's unfinished rollouts."""
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        self._store = await open_store(self._state_path)
        self.manager = RolloutManager(store=self._store, settings=self._settings)
        token = self._settings.daemon.token
        if token is None:
            log.warning("daemon.open_access", listen=f"{self._host}:{self._port}")
        self._runner = web.AppRunner(
            create_app(self.manager, token=token),
            access_log=None,
            logger=protocol_logger(),
            max_line_size=MAX_REQUEST_LINE_BYTES,
            max_field_size=MAX_HEADER_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            auto_decompress=False,  # the API refuses encoded bodies (415): nothing to inflate
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        resumed = await self.manager.recover()
        log.info(
            "daemon.started", listen=self.url, state_path=str(self._state_path), resumed=resumed
        )

    async def stop(self) -> None:
        """Stop taking requests, stop every rollout within its grace, close the journal."""
        running = len(self.manager.running_ids()) if self.manager else 0
        log.info("daemon.stopping", running=running)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.manager is not None:
            await self.manager.shutdown()
        if self._store is not None:
            await self._store.close()
        log.info("daemon.stopped")


async def serve(daemon: Daemon) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; returns the exit code (0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await daemon.start()
        print(f"daemon listening on {daemon.url}", flush=True)
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await daemon.stop()
    return 0
