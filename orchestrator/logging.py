"""structlog set-up: JSON lines with stable dotted event names, and secrets redacted on the way out.

Context such as ``rollout_id`` is bound with :func:`structlog.contextvars.bind_contextvars` and so
follows work into tasks. The redaction processor is the last line of defence: secrets are
:class:`~pydantic.SecretStr` everywhere, but a field whose *name* says secret is masked whatever it holds.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from pydantic import SecretStr

__all__ = ["REDACTED", "configure_logging", "redact_secrets"]

REDACTED = "**********"
_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|authorization|(^|_)sk$|access_key|private)", re.IGNORECASE
)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _redact(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact(str(k), v) for k, v in value.items()}
    if value and _SECRET_KEY.search(key) and not key.endswith(("_count", "_s", "_id")):
        return REDACTED
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask :class:`SecretStr` values and fields named like secrets."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact(key, value)
    return event_dict


def configure_logging(
    *, level: str = "info", fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines or a console rendering."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
